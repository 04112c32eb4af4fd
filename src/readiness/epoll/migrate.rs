//! Sockets in the program's kernel epoll that become ours: a client
//! awaiting the server's offer stays there (docs/DESIGN.md, "Readiness":
//! until a HELLO arrives the socket's readiness is the kernel's own, and
//! a client whose server does not run tsss never costs an emulated wait),
//! and moves into the emulation once it attaches.

use super::pending::{self, KernelReg};
use super::{EPOLLERR, EPOLLHUP, EPOLLRDHUP, EpollSet, IN_BITS};
use crate::conn::{self, Conn};
use crate::os::poll::epoll_ctl;
use crate::os::proc::{VforkCheck, in_vfork_child};
use crate::readiness::Lookup;
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::ops::Deref;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};

impl<R: Deref<Target = Conn> + Clone> EpollSet<R> {
    /// Moves `fd`, registered in the application's kernel epoll `epfd`
    /// before it was accelerated, into this emulation (at the program's
    /// next EPOLL_CTL_MOD, or once it attached); `spent`: a one-shot
    /// registration that fired. Added here first: a failure leaves the
    /// kernel's registration as it was.
    pub fn migrate(
        &self,
        fd: RawFd,
        conn: R,
        events: u32,
        data: u64,
        spent: bool,
    ) -> Result<(), Errno> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, conn, events, data)?;
        if spent && let Some(w) = self.lock().by_fd.get_mut(&fd) {
            w.disabled = true;
        }
        if let Err(e) = epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, 0, 0) {
            self.remove(fd);
            return Err(e);
        }
        Ok(())
    }
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
    if let Some(i) = hint_slot(fd) {
        if op == libc::EPOLL_CTL_DEL {
            let _ = HINT_EPFD[i].compare_exchange(epfd + 1, 0, Relaxed, Relaxed);
        } else {
            HINT_EVENTS[i].store(events, Relaxed);
            HINT_DATA[i].store(data, Relaxed);
            HINT_EPFD[i].store(epfd + 1, Release);
        }
    }
    if op == libc::EPOLL_CTL_DEL && pending::maybe(fd) {
        pending::forget_in(fd, epfd);
    }
}

/// `fd` is closed or replaced: the kernel dropped its registrations.
/// Async-signal-safe. (A vfork child's close clears its parent's hint:
/// only a socket added to an epoll before it connects needs one, and
/// the window is that short.)
pub fn forget_hint(fd: RawFd, vfork: &VforkCheck) {
    if let Some(i) = hint_slot(fd) {
        HINT_EPFD[i].store(0, Relaxed);
    }
    if pending::maybe(fd) && !vfork.yes() {
        pending::forget(fd);
    }
}

/// [`forget_hint`] for `first..=last` (close_range, closefrom).
pub fn forget_hints(first: u32, last: u32) {
    if in_vfork_child() {
        return;
    }
    let end = (last as usize).saturating_add(1).min(HINTS);
    for h in HINT_EPFD.iter().take(end).skip(first as usize) {
        h.store(0, Relaxed);
    }
    if pending::any() {
        for fd in pending::fds() {
            if (first..=last).contains(&(fd as u32)) {
                pending::forget(fd);
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
        spent: false,
    })
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
        if let Some(fd) = pending::named_by(epfd, ev.u64) {
            match settle(lk, fd, Some(epfd), ev.events, migrate) {
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
    if SWEPT.load(Relaxed) == now || !pending::any() {
        return;
    }
    SWEPT.store(now, Relaxed);
    for fd in pending::fds() {
        settle(lk, fd, None, 0, migrate);
    }
}

/// One client awaiting its offer, and the kernel's `events` about it from
/// `epfd` (none: a sweep): what is left of them, or `None` if that
/// registration moved into the emulation.
fn settle<L: Lookup>(
    lk: &L,
    fd: RawFd,
    epfd: Option<RawFd>,
    events: u32,
    migrate: &mut Migrate<'_, L::Ref>,
) -> Option<u32> {
    let Some(c) = lk.conn(fd) else {
        pending::forget(fd);
        return Some(events);
    };
    if c.awaits_offer() && events & ASK != 0 {
        c.progress(lk.borrow(fd));
    }
    if c.awaits_offer() {
        if let Some(e) = epfd.filter(|_| events != 0) {
            pending::spent(fd, e);
        }
        return Some(events);
    }
    let regs = pending::forget(fd);
    if c.is_plain() {
        lk.forget(fd, &c);
        return Some(events);
    }
    let mut moved = false;
    for reg in regs {
        match migrate(fd, c.clone(), reg) {
            Ok(()) => moved |= Some(reg.epfd) == epfd,
            Err(e) => {
                crate::log!(
                    crate::log::INFO,
                    "fd {fd}: cannot move its epoll {} registration: {e}",
                    reg.epfd
                );
                // Tried again at its next event.
                pending::note(fd, reg);
            }
        }
    }
    (!moved).then_some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_keep_the_last_registration_until_del_or_close() {
        let reg = |epfd, events, data| KernelReg {
            epfd,
            events,
            data,
            spent: false,
        };
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 20, 0x19, 99);
        note_epoll_ctl(5, libc::EPOLL_CTL_MOD, 20, 0x1, 98);
        assert_eq!(registration_before_connect(20), Some(reg(5, 1, 98)));
        assert_eq!(registration_before_connect(20), None);
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 21, 1, 1);
        note_epoll_ctl(6, libc::EPOLL_CTL_DEL, 21, 0, 0);
        assert_eq!(registration_before_connect(21), Some(reg(5, 1, 1)));
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 21, 1, 1);
        note_epoll_ctl(5, libc::EPOLL_CTL_DEL, 21, 0, 0);
        assert_eq!(registration_before_connect(21), None);
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 22, 1, 1);
        forget_hint(22, &VforkCheck::new());
        assert_eq!(registration_before_connect(22), None);
        note_epoll_ctl(5, libc::EPOLL_CTL_ADD, 23, 1, 1);
        forget_hints(0, u32::MAX);
        assert_eq!(registration_before_connect(23), None);
    }
}
