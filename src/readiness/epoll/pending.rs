//! The kernel epoll registrations of clients awaiting their offer, by fd
//! (one per epoll), and by (epfd, data) to tell their events apart in a
//! kernel epoll_wait's answer.

use crate::os::proc::{self, Setup};
use crate::signals::Critical;
use rustix::fd::RawFd;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

/// A registration in one of the program's kernel epolls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelReg {
    pub epfd: RawFd,
    pub events: u32,
    pub data: u64,
    /// A one-shot registration that fired: disarmed until EPOLL_CTL_MOD.
    pub spent: bool,
}

#[derive(Default)]
struct Regs {
    by_fd: HashMap<RawFd, Vec<KernelReg>>,
    /// How many registrations carry each (epfd, data), and the fd when
    /// there is one: an answer with a shared data word names no fd.
    by_key: HashMap<(RawFd, u64), (u32, RawFd)>,
}

/// Fds with registrations (`by_fd.len()`): one load says there are none.
static COUNT: AtomicUsize = AtomicUsize::new(0);
static REGS: Mutex<Option<Regs>> = Mutex::new(None);

/// Which fds below 65536 have registrations: close asks with one load.
static BITS: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];

fn bit(fd: RawFd) -> Option<(&'static AtomicU64, u64)> {
    let i = usize::try_from(fd).ok()?;
    Some((BITS.get(i / 64)?, 1 << (i % 64)))
}

/// Runs `f` on the registrations, in a signal section (close can run in a
/// handler). In a fork child whose parent had the lock held by another
/// thread at the fork, nothing: that lock is never released there.
fn with_regs<T: Default>(f: impl FnOnce(&mut Regs) -> T) -> T {
    if ORPHANED.load(Relaxed) {
        return T::default();
    }
    proc::note_setup(Setup::PendingEpoll);
    let _section = Critical::enter();
    let mut g = REGS.lock().unwrap_or_else(|p| p.into_inner());
    let regs = g.get_or_insert_with(Regs::default);
    let r = f(regs);
    COUNT.store(regs.by_fd.len(), Release);
    r
}

/// Set in a fork child that inherited the lock held (see [`after_fork`]).
static ORPHANED: AtomicBool = AtomicBool::new(false);

/// In a fork child (one thread): if another thread of the parent held the
/// lock at the fork, the child can never take it. It keeps no
/// registrations then: its clients awaiting an offer stay in the kernel's
/// epoll (a fork in that instant, and a child that goes on using them,
/// is all it takes to miss a move). Not held across fork instead: a
/// signal deferred meanwhile would be copied into the child, and an
/// allocator's own fork handlers could deadlock against it.
pub fn after_fork() {
    // A child of a process that never took the lock leaves its page
    // alone (no copy, not even a read fault).
    if !proc::was_set_up(Setup::PendingEpoll) {
        return;
    }
    match REGS.try_lock() {
        Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => {}
        Err(std::sync::TryLockError::WouldBlock) => {
            ORPHANED.store(true, Relaxed);
            COUNT.store(0, Release);
            for w in &BITS {
                w.store(0, Relaxed);
            }
        }
    }
}

/// Whether any client awaiting its offer is in a kernel epoll (one load).
pub fn any() -> bool {
    COUNT.load(Acquire) != 0
}

/// Whether `fd` may have registrations (one load below fd 65536).
pub fn maybe(fd: RawFd) -> bool {
    match bit(fd) {
        Some((w, b)) => w.load(Acquire) & b != 0,
        None => any(),
    }
}

/// `fd`, a client awaiting its offer, is registered in `reg.epfd` as
/// `reg` (replacing its earlier registration there).
pub fn note(fd: RawFd, reg: KernelReg) {
    with_regs(|p| {
        let regs = p.by_fd.entry(fd).or_default();
        let old = regs
            .iter()
            .position(|r| r.epfd == reg.epfd)
            .map(|i| regs.swap_remove(i));
        regs.push(reg);
        if let Some(old) = old {
            p.unkey(fd, old);
        }
        let e = p.by_key.entry((reg.epfd, reg.data)).or_insert((0, fd));
        e.0 += 1;
        e.1 = fd;
        if let Some((w, b)) = bit(fd) {
            w.fetch_or(b, Release);
        }
    });
}

/// `fd`'s registration in `epfd` is gone (EPOLL_CTL_DEL).
pub fn forget_in(fd: RawFd, epfd: RawFd) {
    with_regs(|p| {
        let Some(regs) = p.by_fd.get_mut(&fd) else {
            return;
        };
        let Some(i) = regs.iter().position(|r| r.epfd == epfd) else {
            return;
        };
        let reg = regs.swap_remove(i);
        if regs.is_empty() {
            p.drop_fd(fd);
        }
        p.unkey(fd, reg);
    });
}

/// `fd` no longer awaits its offer in any kernel epoll: its registrations.
pub fn forget(fd: RawFd) -> Vec<KernelReg> {
    with_regs(|p| {
        let regs = p.drop_fd(fd);
        for r in &regs {
            p.unkey(fd, *r);
        }
        regs
    })
}

/// A one-shot registration of `fd` in `epfd` fired (its event went to
/// the program).
pub fn spent(fd: RawFd, epfd: RawFd) {
    with_regs(|p| {
        if let Some(r) = p
            .by_fd
            .get_mut(&fd)
            .and_then(|regs| regs.iter_mut().find(|r| r.epfd == epfd))
            && r.events & libc::EPOLLONESHOT as u32 != 0
        {
            r.spent = true;
        }
    });
}

/// The client awaiting its offer that an event of `epfd` with `data` is
/// about, if exactly one is registered so.
pub fn named_by(epfd: RawFd, data: u64) -> Option<RawFd> {
    with_regs(|p| match p.by_key.get(&(epfd, data)) {
        Some(&(1, fd)) => Some(fd),
        _ => None,
    })
}

/// Every client awaiting its offer in a kernel epoll.
pub fn fds() -> Vec<RawFd> {
    with_regs(|p| p.by_fd.keys().copied().collect())
}

impl Regs {
    fn drop_fd(&mut self, fd: RawFd) -> Vec<KernelReg> {
        if let Some((w, b)) = bit(fd) {
            w.fetch_and(!b, Release);
        }
        self.by_fd.remove(&fd).unwrap_or_default()
    }

    fn unkey(&mut self, fd: RawFd, reg: KernelReg) {
        let key = (reg.epfd, reg.data);
        let Some(e) = self.by_key.get_mut(&key) else {
            return;
        };
        e.0 -= 1;
        if e.0 == 0 {
            self.by_key.remove(&key);
        } else if e.0 == 1 {
            // The one left, whichever it is.
            let left = self.by_fd.iter().find_map(|(f, regs)| {
                (*f != fd && regs.iter().any(|r| (r.epfd, r.data) == key)).then_some(*f)
            });
            if let Some(f) = left {
                e.1 = f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the registrations are process-wide.
    #[test]
    fn registrations_name_one_fd_or_none() {
        let reg = |epfd, data| KernelReg {
            epfd,
            events: 1,
            data,
            spent: false,
        };
        note(10, reg(3, 7));
        assert!(any() && maybe(10) && !maybe(11));
        assert_eq!(named_by(3, 7), Some(10));
        assert_eq!(named_by(4, 7), None);
        // A second fd with the same data word: neither is named.
        note(11, reg(3, 7));
        assert_eq!(named_by(3, 7), None);
        assert_eq!(forget(10), vec![reg(3, 7)]);
        assert_eq!(named_by(3, 7), Some(11));
        // A new registration in the same epoll replaces the old one; one
        // in another epoll is kept beside it.
        note(11, reg(3, 8));
        note(11, reg(5, 8));
        assert_eq!(named_by(3, 7), None);
        assert_eq!(named_by(3, 8), Some(11));
        assert_eq!(named_by(5, 8), Some(11));
        forget_in(11, 3);
        assert_eq!(named_by(3, 8), None);
        assert_eq!(named_by(5, 8), Some(11));
        // One-shot registrations that fired are marked.
        note(
            12,
            KernelReg {
                events: libc::EPOLLONESHOT as u32,
                ..reg(5, 9)
            },
        );
        spent(12, 5);
        spent(11, 5);
        assert!(forget(12)[0].spent);
        assert!(!forget(11)[0].spent);
        assert!(!any() && !maybe(11));
        assert_eq!(forget(11), vec![]);
    }
}
