//! Sockets in the program's kernel epoll that become ours: a client
//! awaiting the server's offer stays there (docs/DESIGN.md, "Readiness":
//! until a HELLO arrives the socket's readiness is the kernel's own, and
//! a client whose server does not run tsss never costs an emulated wait),
//! and moves into the emulation once it attaches.

use super::{EPOLLERR, EPOLLHUP, EPOLLRDHUP, EpollSet, IN_BITS};
use crate::conn::{self, Conn};
use crate::os::poll::epoll_ctl;
use crate::readiness::Lookup;
use crate::signals::Critical;
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

impl<R: Deref<Target = Conn> + Clone> EpollSet<R> {
    /// Moves `fd`, registered in the application's kernel epoll `epfd`
    /// before it was accelerated, into this emulation (at the program's
    /// next EPOLL_CTL_MOD, or once it attached).
    pub fn migrate(&self, fd: RawFd, conn: R, events: u32, data: u64) -> Result<(), Errno> {
        epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)?;
        self.ctl(libc::EPOLL_CTL_ADD, fd, conn, events, data)
    }
}

/// A registration in one of the program's kernel epolls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelReg {
    pub epfd: RawFd,
    pub events: u32,
    pub data: u64,
}

const HINTS: usize = 65536;

/// The last kernel registration of each fd, whatever it was then (epfd +1,
/// 0: none), kept through EPOLL_CTL_ADD/MOD/DEL and close: nginx adds
/// its upstream sockets before they connect. Only the last epoll an fd
/// was added to is known.
static HINT_EPFD: [AtomicI32; HINTS] = [const { AtomicI32::new(0) }; HINTS];
static HINT_EVENTS: [AtomicU32; HINTS] = [const { AtomicU32::new(0) }; HINTS];
static HINT_DATA: [AtomicU64; HINTS] = [const { AtomicU64::new(0) }; HINTS];

fn hint_slot(fd: RawFd) -> Option<usize> {
    usize::try_from(fd).ok().filter(|&i| i < HINTS)
}

/// A successful epoll_ctl of `fd` in the kernel's `epfd` (whatever `fd` is).
pub fn note_epoll_ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32, data: u64) {
    let Some(i) = hint_slot(fd) else { return };
    match op {
        libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD => {
            HINT_EVENTS[i].store(events, Relaxed);
            HINT_DATA[i].store(data, Relaxed);
            HINT_EPFD[i].store(epfd + 1, Release);
        }
        _ => {
            let _ = HINT_EPFD[i].compare_exchange(epfd + 1, 0, Relaxed, Relaxed);
        }
    }
    if op == libc::EPOLL_CTL_DEL && PENDING.load(Acquire) != 0 {
        forget_pending(fd);
    }
}

/// `fd` is closed or replaced: the kernel dropped its registrations.
/// Async-signal-safe.
pub fn forget_hint(fd: RawFd) {
    if let Some(i) = hint_slot(fd) {
        HINT_EPFD[i].store(0, Relaxed);
    }
    if PENDING.load(Acquire) != 0 {
        forget_pending(fd);
    }
}

/// [`forget_hint`] for `first..=last`.
pub fn forget_hints(first: u32, last: u32) {
    let end = (last as usize).saturating_add(1).min(HINTS);
    for h in HINT_EPFD.iter().take(end).skip(first as usize) {
        h.store(0, Relaxed);
    }
    if PENDING.load(Acquire) != 0 {
        for fd in pending_fds() {
            if (first..=last).contains(&(fd as u32)) {
                forget_pending(fd);
            }
        }
    }
}

/// The kernel registration `fd` had when it connected (the hint, taken).
pub fn registration_before_connect(fd: RawFd) -> Option<KernelReg> {
    let i = hint_slot(fd)?;
    let epfd = HINT_EPFD[i].swap(0, Acquire) - 1;
    (epfd >= 0).then(|| KernelReg {
        epfd,
        events: HINT_EVENTS[i].load(Relaxed),
        data: HINT_DATA[i].load(Relaxed),
    })
}

/// Kernel registrations of clients awaiting their offer, by fd, and by
/// (epfd, data) to tell their events in a kernel epoll_wait's answer.
#[derive(Default)]
struct Pending {
    by_fd: HashMap<RawFd, KernelReg>,
    /// How many registrations carry each (epfd, data), and the fd when
    /// there is one: an answer with a shared data word names no fd.
    by_key: HashMap<(RawFd, u64), (u32, RawFd)>,
}

static PENDING: AtomicUsize = AtomicUsize::new(0);
static REGS: Mutex<Option<Pending>> = Mutex::new(None);

/// Runs `f` on the registrations, in a signal section: close can run in
/// a handler.
fn with_regs<T>(f: impl FnOnce(&mut Pending) -> T) -> T {
    let _section = Critical::enter();
    let mut g = REGS.lock().unwrap_or_else(|p| p.into_inner());
    let regs = g.get_or_insert_with(Pending::default);
    let r = f(regs);
    PENDING.store(regs.by_fd.len(), Release);
    r
}

/// Whether any client awaiting its offer is in a kernel epoll (one load).
pub fn any_pending() -> bool {
    PENDING.load(Acquire) != 0
}

/// `fd`, a client awaiting its offer, is registered in a kernel epoll as
/// `reg` (it replaces an earlier registration of `fd`).
pub fn note_pending(fd: RawFd, reg: KernelReg) {
    with_regs(|p| {
        if let Some(old) = p.by_fd.insert(fd, reg) {
            p.unkey(fd, old);
        }
        let e = p.by_key.entry((reg.epfd, reg.data)).or_insert((0, fd));
        e.0 += 1;
        e.1 = fd;
    });
}

/// `fd` is no longer a client awaiting its offer in a kernel epoll: its
/// registration, if it had one.
pub fn forget_pending(fd: RawFd) -> Option<KernelReg> {
    with_regs(|p| {
        let reg = p.by_fd.remove(&fd)?;
        p.unkey(fd, reg);
        Some(reg)
    })
}

/// The client awaiting its offer that an event of `epfd` with `data` is
/// about, if exactly one is registered so.
pub fn pending_for(epfd: RawFd, data: u64) -> Option<RawFd> {
    with_regs(|p| match p.by_key.get(&(epfd, data)) {
        Some(&(1, fd)) => Some(fd),
        _ => None,
    })
}

/// Every registered client awaiting its offer.
pub fn pending_fds() -> Vec<RawFd> {
    with_regs(|p| p.by_fd.keys().copied().collect())
}

impl Pending {
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
            let left = self
                .by_fd
                .iter()
                .find(|(f, r)| **f != fd && (r.epfd, r.data) == key)
                .map(|(f, _)| *f);
            if let Some(f) = left {
                e.1 = f;
            }
        }
    }
}

/// Moves `fd` (a client that attached) from the kernel epoll `reg.epfd`
/// into that epoll's emulated set, made if need be (the shim's table).
pub type Migrate<'a, R> = dyn FnMut(RawFd, R, KernelReg) -> Result<(), Errno> + 'a;

/// Events that make a client awaiting its offer look at its socket.
const ASK: u32 = IN_BITS | EPOLLRDHUP | EPOLLHUP | EPOLLERR;

/// The kernel's answer `evs` to an epoll_wait on `epfd`: events about a
/// client awaiting its offer make it look at its socket; one that attaches
/// moves into the emulation, and its event leaves the answer: the
/// emulation's first look reports it afresh (the HELLO made it readable;
/// bytes after it may still). Returns how many events are left, moved to
/// the front, and whether any client moved.
pub fn settle_pending<L: Lookup>(
    lk: &L,
    epfd: RawFd,
    evs: &mut [libc::epoll_event],
    migrate: &mut Migrate<'_, L::Ref>,
) -> (usize, bool) {
    let (mut kept, mut moved) = (0, false);
    for i in 0..evs.len() {
        let mut ev = evs[i];
        if let Some(fd) = pending_for(epfd, ev.u64) {
            match settle(lk, fd, ev.events, migrate) {
                Some(left) => ev.events = left,
                None => {
                    moved = true;
                    continue;
                }
            }
        }
        if ev.events != 0 {
            evs[kept] = ev;
            kept += 1;
        }
    }
    (kept, moved)
}

/// The attaches [`sweep_attached`] has seen.
static SWEPT: AtomicU64 = AtomicU64::new(0);

/// Before an epoll wait: clients that attached in a call of their own (a
/// read or write found the HELLO) leave the kernel epoll, whose sleep
/// their ring data would never end.
pub fn sweep_attached<L: Lookup>(lk: &L, migrate: &mut Migrate<'_, L::Ref>) {
    let now = conn::attaches();
    if SWEPT.load(Relaxed) == now || !any_pending() {
        return;
    }
    SWEPT.store(now, Relaxed);
    for fd in pending_fds() {
        settle(lk, fd, 0, migrate);
    }
}

/// One client awaiting its offer, and the kernel's `events` about it (0:
/// none): what is left of them, or `None` if it moved into the emulation.
fn settle<L: Lookup>(
    lk: &L,
    fd: RawFd,
    events: u32,
    migrate: &mut Migrate<'_, L::Ref>,
) -> Option<u32> {
    let Some(c) = lk.conn(fd) else {
        forget_pending(fd);
        return Some(events);
    };
    if c.awaits_offer() && events & ASK != 0 {
        c.progress(lk.borrow(fd));
    }
    if c.awaits_offer() {
        return Some(events);
    }
    let Some(reg) = forget_pending(fd) else {
        return Some(events);
    };
    if c.is_plain() {
        lk.forget(fd, &c);
        return Some(events);
    }
    match migrate(fd, c, reg) {
        Ok(()) => None,
        Err(e) => {
            crate::log!(
                crate::log::INFO,
                "fd {fd}: cannot move its epoll {} registration: {e}",
                reg.epfd
            );
            Some(events)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the registrations are process-wide.
    #[test]
    fn pending_registrations_name_one_fd_or_none() {
        let reg = |epfd, data| KernelReg {
            epfd,
            events: 1,
            data,
        };
        note_pending(10, reg(3, 7));
        assert!(any_pending());
        assert_eq!(pending_for(3, 7), Some(10));
        assert_eq!(pending_for(4, 7), None);
        // A second fd with the same data word: neither is named.
        note_pending(11, reg(3, 7));
        assert_eq!(pending_for(3, 7), None);
        assert_eq!(forget_pending(10), Some(reg(3, 7)));
        assert_eq!(pending_for(3, 7), Some(11));
        // A new registration of the same fd replaces the old one.
        note_pending(11, reg(3, 8));
        assert_eq!(pending_for(3, 7), None);
        assert_eq!(pending_for(3, 8), Some(11));
        forget_hint(11);
        assert_eq!(pending_for(3, 8), None);
        assert!(!any_pending());
        assert_eq!(forget_pending(11), None);

        // Hints: the last registration, taken once; DEL and close drop it.
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 20, 0x19, 99);
        note_epoll_ctl(5, libc::EPOLL_CTL_MOD, 20, 0x1, 98);
        assert_eq!(registration_before_connect(20), Some(reg(5, 98)));
        assert_eq!(registration_before_connect(20), None);
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 21, 1, 1);
        note_epoll_ctl(5, libc::EPOLL_CTL_DEL, 21, 0, 0);
        assert_eq!(registration_before_connect(21), None);
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 22, 1, 1);
        forget_hints(0, 100);
        assert_eq!(registration_before_connect(22), None);
    }
}
