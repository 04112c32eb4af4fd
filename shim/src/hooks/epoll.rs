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
use tsss_core::log::{DEBUG, INFO};
use tsss_core::os::time::Deadline;
use tsss_core::readiness::{EpollSet, epoll};
use tsss_core::{log, os};

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
/// accelerated, into the emulation.
fn migrate(epfd: c_int, fd: c_int, conn: ConnRef, events: u32, data: u64) -> Result<(), Errno> {
    let g = epoll_set_or_create(epfd)?;
    let Entry::Epoll(s) = &*g else {
        return Err(Errno::INVAL);
    };
    s.migrate(fd, conn, events, data)
}

/// After `fd` became a connection: if the program had added it to an epoll
/// before (nginx does, for its upstreams), move that registration into the
/// emulation.
pub(super) fn adopt_registration(fd: c_int) {
    let Some((epfd, events, data)) = epoll::registration_before_connect(fd) else {
        return;
    };
    let Some(c) = table::get(fd).and_then(ConnRef::new) else {
        return;
    };
    match migrate(epfd, fd, c, events, data) {
        Ok(()) => log!(
            DEBUG,
            "fd {fd}: its epoll {epfd} registration moved to the emulation"
        ),
        Err(e) => log!(
            INFO,
            "fd {fd}: cannot move its epoll {epfd} registration: {e}"
        ),
    }
}

hook! {
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
        if op == libc::EPOLL_CTL_ADD {
            epoll::note_epoll_add(epfd, fd);
        }
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
        let g = set?;
        let Entry::Epoll(s) = &*g else { return None };
        if !s.contains(fd) {
            s.drop_retired(fd);
            return None;
        }
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
    if op != libc::EPOLL_CTL_DEL && ev.is_null() {
        return Some(Err(Errno::FAULT));
    }
    if epfd == fd {
        return Some(Err(Errno::INVAL));
    }
    let g = match set {
        Some(g) => g,
        // Registered with the kernel before it was accelerated.
        None if op == libc::EPOLL_CTL_MOD => return Some(migrate(epfd, fd, conn, events, data)),
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
        return Some(migrate(epfd, fd, conn, events, data));
    }
    Some(s.ctl(op, fd, conn, events, data))
}

/// Emulated epoll_wait if `epfd` watches accelerated fds. `mask` is
/// installed only while the kernel waits (epoll_pwait).
///
/// # Safety
/// `evs` valid for `max` events; `mask` null or valid.
unsafe fn epoll_emulated(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    deadline: Deadline,
    mask: *const libc::sigset_t,
) -> Hooked<c_int> {
    if max <= 0 || evs.is_null() {
        return Hooked::Real;
    }
    let Some(g) = epoll_set(epfd) else {
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
        // SAFETY: the caller's arguments.
        unsafe { epoll_emulated(epfd, evs, max, Deadline::after_ms(timeout), std::ptr::null()) }
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
        // SAFETY: the caller's arguments.
        unsafe { epoll_emulated(epfd, evs, max, Deadline::after_ms(timeout), mask) }
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
        unsafe { epoll_emulated(epfd, evs, max, deadline, mask) }
    }
}
