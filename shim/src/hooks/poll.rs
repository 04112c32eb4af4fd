//! poll, ppoll, select, pselect: emulated when the set holds an
//! accelerated fd (readiness comes from ring state), else the kernel's.

use super::Shim;
use crate::abi::{self, Hooked, errno, fail, set_errno};
use crate::table::{self, Entry};
use libc::{c_int, size_t};
use rustix::fd::RawFd;
use tsss_core::os::time::Deadline;
use tsss_core::readiness::{self, FdSet};

fn is_conn(fd: RawFd) -> bool {
    fd >= 0 && table::get(fd).is_some_and(|g| matches!(&*g, Entry::Conn(_)))
}

/// Emulated poll if `fds` holds an accelerated fd.
///
/// # Safety
/// `fds` is null or valid for `n` entries; `mask` null or valid.
unsafe fn poll_emulated(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    deadline: Deadline,
    mask: *const libc::sigset_t,
) -> Hooked<c_int> {
    if fds.is_null() || n == 0 {
        return Hooked::Real;
    }
    // SAFETY: the caller's array of n pollfds.
    let s = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    if !s.iter().any(|p| is_conn(p.fd)) {
        return Hooked::Real;
    }
    let saved = errno();
    // SAFETY: null or a valid sigset per the caller.
    let mask = unsafe { mask.as_ref() };
    Hooked::Done(match readiness::poll(&Shim, s, deadline, mask) {
        Ok(k) => {
            set_errno(saved);
            k as c_int
        }
        Err(e) => fail(e),
    })
}

hook! {
    fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
        // SAFETY: the caller's arguments.
        unsafe { poll_emulated(fds, n, Deadline::after_ms(timeout), std::ptr::null()) }
    }
}

hook! {
    /// Fortified poll: glibc aborts when the array overruns `fdslen`.
    fn __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
        if (n as usize).saturating_mul(size_of::<libc::pollfd>()) > fdslen {
            return Real;
        }
        // SAFETY: the caller's arguments, array size checked.
        unsafe { poll_emulated(fds, n, Deadline::after_ms(timeout), std::ptr::null()) }
    }
}

hook! {
    fn ppoll(
        fds: *mut libc::pollfd,
        n: libc::nfds_t,
        t: *const libc::timespec,
        mask: *const libc::sigset_t,
    ) -> c_int {
        // An invalid timeout: the kernel says EINVAL.
        // SAFETY: t null or valid.
        let Ok(deadline) = (unsafe { abi::timespec(t) }) else {
            return Real;
        };
        // SAFETY: the caller's arguments.
        unsafe { poll_emulated(fds, n, deadline, mask) }
    }
}

hook! {
    fn __ppoll_chk(
        fds: *mut libc::pollfd,
        n: libc::nfds_t,
        t: *const libc::timespec,
        mask: *const libc::sigset_t,
        fdslen: size_t,
    ) -> c_int {
        if (n as usize).saturating_mul(size_of::<libc::pollfd>()) > fdslen {
            return Real;
        }
        // SAFETY: the caller's arguments, array size checked.
        Done(unsafe { ppoll(fds, n, t, mask) })
    }
}

/// Emulated select if the sets hold an accelerated fd.
///
/// # Safety
/// Sets null or valid fd_sets; `mask` null or valid.
unsafe fn select_emulated(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    deadline: Deadline,
    mask: *const libc::sigset_t,
) -> Hooked<c_int> {
    if nfds <= 0 || nfds > libc::FD_SETSIZE as c_int {
        return Hooked::Real;
    }
    // SAFETY: each non-null pointer is a valid, exclusively borrowed fd_set.
    let [r, w, e] = sets.map(|s| unsafe { abi::fd_set(s) });
    let any = (0..nfds).any(|fd| {
        let bit = |s: &Option<&mut [u64]>| {
            s.as_ref()
                .is_some_and(|s| s[fd as usize / 64] & (1 << (fd % 64)) != 0)
        };
        (bit(&r) || bit(&w) || bit(&e)) && is_conn(fd)
    });
    if !any {
        return Hooked::Real;
    }
    let saved = errno();
    let sets = [r.map(FdSet), w.map(FdSet), e.map(FdSet)];
    // SAFETY: null or a valid sigset.
    let res = readiness::select(&Shim, nfds, sets, deadline, unsafe { mask.as_ref() });
    Hooked::Done(match res {
        Ok(k) => {
            set_errno(saved);
            k as c_int
        }
        Err(e) => fail(e),
    })
}

hook! {
    fn select(
        nfds: c_int,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
        tv: *mut libc::timeval,
    ) -> c_int {
        // SAFETY: tv null or valid.
        let Ok(deadline) = Deadline::from_timeval(unsafe { tv.as_ref() }) else {
            return Real;
        };
        // SAFETY: the caller's sets and mask.
        let res = unsafe { select_emulated(nfds, [r, w, e], deadline, std::ptr::null()) };
        if let Done(_) = res
            && !tv.is_null()
        {
            // Linux writes back the time not slept.
            let left_us = deadline.remaining_ns().unwrap_or(0) / 1000;
            // SAFETY: non-null timeval.
            unsafe {
                (*tv).tv_sec = (left_us / 1_000_000) as libc::time_t;
                (*tv).tv_usec = (left_us % 1_000_000) as libc::suseconds_t;
            }
        }
        res
    }
}

hook! {
    fn pselect(
        nfds: c_int,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
        t: *const libc::timespec,
        mask: *const libc::sigset_t,
    ) -> c_int {
        // SAFETY: t null or valid.
        let Ok(deadline) = (unsafe { abi::timespec(t) }) else {
            return Real;
        };
        // SAFETY: the caller's sets and mask.
        unsafe { select_emulated(nfds, [r, w, e], deadline, mask) }
    }
}
