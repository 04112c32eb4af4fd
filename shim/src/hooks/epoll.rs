//! epoll: an application epoll that watches an accelerated fd gets an
//! emulated set in the fd table (`readiness::EpollSet`); its waits are
//! emulated, everything else is the kernel's.

use super::{Shim, accel};
use crate::abi::{self, Hooked, errno, fail, set_errno};
use crate::real;
use crate::table::{self, ConnRef, Entry};
use libc::c_int;
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::sync::Mutex;
use tsss_core::os;
use tsss_core::os::time::Deadline;
use tsss_core::readiness::{EpollSet, epoll};

hook! {
    fn epoll_create(size: c_int) -> c_int {
        // SAFETY: the caller's argument.
        let fd = unsafe { real::epoll_create(size) };
        if fd >= 0 {
            drop(table::remove(fd));
        }
        Done(fd)
    }
}

hook! {
    fn epoll_create1(flags: c_int) -> c_int {
        // SAFETY: the caller's argument.
        let fd = unsafe { real::epoll_create1(flags) };
        if fd >= 0 {
            drop(table::remove(fd));
        }
        Done(fd)
    }
}

fn epoll_set(epfd: RawFd) -> Option<table::Guard> {
    table::get(epfd).filter(|g| matches!(&**g, Entry::Epoll(_)))
}

static EPOLL_CREATE: Mutex<()> = Mutex::new(());

/// `epfd`'s emulated set, created if it has none. ENOMEM if it cannot be
/// recorded: the caller must not hand an accelerated fd to the kernel's
/// epoll instead. The lock is held in a signal section, as the table's
/// free list is: a handler's epoll_ctl would wait for its own thread.
fn epoll_set_or_create(epfd: RawFd) -> Result<table::Guard, Errno> {
    let _section = tsss_core::signals::Critical::enter();
    let _l = EPOLL_CREATE.lock().unwrap_or_else(|p| p.into_inner());
    match epoll_set(epfd) {
        Some(g) => Ok(g),
        None => table::insert(epfd, Entry::Epoll(EpollSet::new(epfd)?)).ok_or(Errno::NOMEM),
    }
}

/// Moves `fd`, registered in the kernel's `epfd` before it was
/// accelerated, into the emulation (`spent`: a one-shot registration that
/// fired).
fn migrate(
    epfd: c_int,
    fd: c_int,
    conn: ConnRef,
    events: u32,
    data: u64,
    spent: bool,
) -> Result<(), Errno> {
    let g = epoll_set_or_create(epfd)?;
    let Entry::Epoll(s) = &*g else {
        return Err(Errno::INVAL);
    };
    s.migrate(fd, conn, events, data, spent)
}

/// After `fd` connected as a client awaiting its offer: if the program had
/// added it to an epoll before (nginx does, for its upstreams), that
/// registration stays the kernel's until the client attaches.
pub(super) fn note_registration(fd: c_int) {
    if let Some(reg) = epoll::registration_before_connect(fd) {
        epoll::pending::note(fd, reg);
    }
}

/// `migrate` for the core: into `reg.epfd`'s emulated set.
fn migrate_reg(fd: RawFd, conn: ConnRef, reg: epoll::KernelReg) -> Result<(), Errno> {
    migrate(reg.epfd, fd, conn, reg.events, reg.data, reg.spent)
}

/// The kernel's epoll_ctl, noted in the hints when it succeeds.
///
/// # Safety
/// As epoll_ctl.
unsafe fn kernel_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
    (events, data): (u32, u64),
) -> Result<(), Errno> {
    // SAFETY: the caller's arguments.
    if unsafe { real::epoll_ctl(epfd, op, fd, ev) } != 0 {
        return Err(Errno::from_raw_os_error(errno()));
    }
    epoll::note_epoll_ctl(epfd, op, fd, events, data);
    Ok(())
}

hook! {
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
        // SAFETY: the caller's arguments.
        match unsafe { epoll_ctl_inner(epfd, op, fd, ev) } {
            Some(r) => Done(abi::int(r)),
            None => Real,
        }
    }
}

/// epoll_ctl for an fd we accelerate or still watch; `None`: the kernel's.
///
/// # Safety
/// As epoll_ctl.
unsafe fn epoll_ctl_inner(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> Option<Result<(), Errno>> {
    let (events, data) = if ev.is_null() {
        (0, 0)
    } else {
        // SAFETY: epoll_event is packed; read it unaligned.
        let e = unsafe { std::ptr::read_unaligned(ev) };
        (e.events, e.u64)
    };
    let set = epoll_set(epfd);
    let Some(conn) = accel(fd) else {
        // Not (or no longer) accelerated, but maybe still watched by us.
        let watched = match set.as_deref() {
            Some(Entry::Epoll(s)) if s.watches(&Shim, fd) => Some(s),
            Some(Entry::Epoll(s)) => {
                s.drop_retired(fd);
                None
            }
            _ => None,
        };
        let Some(s) = watched else {
            // SAFETY: the caller's arguments.
            return Some(unsafe { kernel_ctl(epfd, op, fd, ev, (events, data)) });
        };
        return Some(match op {
            libc::EPOLL_CTL_ADD => Err(Errno::EXIST),
            libc::EPOLL_CTL_DEL => {
                s.remove(fd);
                Ok(())
            }
            _ => {
                s.remove(fd);
                os::poll::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events, data)
            }
        });
    };
    if conn.awaits_offer() && !set_contains(&set, fd) {
        // The kernel's until the client attaches (see `note_registration`).
        // SAFETY: the caller's arguments.
        if let Err(e) = unsafe { kernel_ctl(epfd, op, fd, ev, (events, data)) } {
            return Some(Err(e));
        }
        if op != libc::EPOLL_CTL_DEL {
            let spent = false;
            epoll::pending::note(
                fd,
                epoll::KernelReg {
                    epfd,
                    events,
                    data,
                    spent,
                },
            );
            if !conn.awaits_offer() {
                // It attached meanwhile (in another thread): move it now.
                epoll::sweep_attached(&Shim, &mut migrate_reg);
            }
        }
        return Some(Ok(()));
    }
    if op != libc::EPOLL_CTL_DEL && ev.is_null() {
        return Some(Err(Errno::FAULT));
    }
    if epfd == fd {
        return Some(Err(Errno::INVAL));
    }
    let g = match set {
        Some(g) => g,
        // Registered with the kernel before it was accelerated.
        None if op == libc::EPOLL_CTL_MOD => {
            return Some(migrate(epfd, fd, conn, events, data, false));
        }
        None if op != libc::EPOLL_CTL_ADD => return None,
        None => match epoll_set_or_create(epfd) {
            Ok(g) => g,
            Err(e) => return Some(Err(e)),
        },
    };
    let Entry::Epoll(s) = &*g else { return None };
    if op != libc::EPOLL_CTL_ADD && !s.contains(fd) {
        if op == libc::EPOLL_CTL_DEL {
            return None;
        }
        drop(g);
        return Some(migrate(epfd, fd, conn, events, data, false));
    }
    Some(s.ctl(op, fd, conn, events, data))
}

fn set_contains(set: &Option<table::Guard>, fd: RawFd) -> bool {
    matches!(set.as_deref(), Some(Entry::Epoll(s)) if s.watches(&Shim, fd))
}

/// One epoll_wait call: the caller's epoll, array of `max` events and
/// signal mask (null: none; installed only while the kernel waits).
#[derive(Clone, Copy)]
struct Wait {
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    deadline: Deadline,
    mask: *const libc::sigset_t,
}

/// The kernel's epoll_wait, for an epoll without an emulated set but with
/// clients awaiting their offer. One that attaches moves into the
/// emulation, which reports it.
///
/// # Safety
/// As [`epoll_emulated`].
unsafe fn epoll_settling(w: Wait) -> Hooked<c_int> {
    let (epfd, evs) = (w.epfd, w.evs);
    loop {
        // SAFETY: the caller's arguments.
        let r = unsafe { real::epoll_pwait(epfd, evs, w.max, w.deadline.remaining_ms(), w.mask) };
        if r <= 0 {
            return Hooked::Done(r);
        }
        let saved = errno();
        // SAFETY: the kernel filled r <= max events.
        let out = unsafe { std::slice::from_raw_parts_mut(evs, r as usize) };
        let (n, moved) = epoll::settle_pending(&Shim, epfd, out, &mut migrate_reg);
        set_errno(saved);
        // (A moved client is reported by the emulation's first look: at
        // the next call if this one has events, not by a second kernel
        // wait here, which could report a level-triggered fd twice.)
        if n > 0 {
            return Hooked::Done(n as c_int);
        }
        if moved && epoll_set(epfd).is_some() {
            // (Even past the deadline: it looks once.)
            // SAFETY: the caller's arguments.
            return unsafe { epoll_emulated(w) };
        }
        if w.deadline.expired() {
            return Hooked::Done(0);
        }
    }
}

/// Emulated epoll_wait if `epfd` watches accelerated fds.
///
/// # Safety
/// `evs` valid for `max` events; `mask` null or valid.
unsafe fn epoll_emulated(w: Wait) -> Hooked<c_int> {
    let Wait {
        epfd,
        evs,
        max,
        deadline,
        mask,
    } = w;
    if max <= 0 || evs.is_null() {
        return Hooked::Real;
    }
    if epoll::pending::any() {
        epoll::sweep_attached(&Shim, &mut migrate_reg);
    }
    let Some(g) = epoll_set(epfd) else {
        if epoll::pending::any() {
            // SAFETY: the caller's arguments.
            return unsafe { epoll_settling(w) };
        }
        return Hooked::Real;
    };
    let Entry::Epoll(s) = &*g else {
        return Hooked::Real;
    };
    // SAFETY: the caller's array of max events.
    let out = unsafe { std::slice::from_raw_parts_mut(evs, max as usize) };
    let saved = errno();
    let mut real_wait = |buf: &mut [libc::epoll_event], t: c_int| {
        // SAFETY: a sub-slice of the caller's array; mask null or valid.
        let r = unsafe { real::epoll_pwait(epfd, buf.as_mut_ptr(), buf.len() as c_int, t, mask) };
        if r < 0 {
            Err(Errno::from_raw_os_error(errno()))
        } else if epoll::pending::any() {
            Ok(epoll::settle_pending(&Shim, epfd, &mut buf[..r as usize], &mut migrate_reg).0)
        } else {
            Ok(r as usize)
        }
    };
    Hooked::Done(match s.wait(&Shim, out, deadline, &mut real_wait) {
        Ok(n) => {
            set_errno(saved);
            n as c_int
        }
        Err(e) => fail(e),
    })
}

hook! {
    fn epoll_wait(epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
        let (deadline, mask) = (Deadline::after_ms(timeout), std::ptr::null());
        // SAFETY: the caller's arguments.
        unsafe { epoll_emulated(Wait { epfd, evs, max, deadline, mask }) }
    }
}

hook! {
    fn epoll_pwait(
        epfd: c_int,
        evs: *mut libc::epoll_event,
        max: c_int,
        timeout: c_int,
        mask: *const libc::sigset_t,
    ) -> c_int {
        let deadline = Deadline::after_ms(timeout);
        // SAFETY: the caller's arguments.
        unsafe { epoll_emulated(Wait { epfd, evs, max, deadline, mask }) }
    }
}

hook! {
    fn epoll_pwait2(
        epfd: c_int,
        evs: *mut libc::epoll_event,
        max: c_int,
        t: *const libc::timespec,
        mask: *const libc::sigset_t,
    ) -> c_int {
        // SAFETY: t null or valid.
        let Ok(deadline) = (unsafe { abi::timespec(t) }) else {
            return Real;
        };
        // SAFETY: the caller's arguments.
        unsafe { epoll_emulated(Wait { epfd, evs, max, deadline, mask }) }
    }
}
