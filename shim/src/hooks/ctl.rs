//! shutdown, ioctl, getsockopt: the answers that come from ring state;
//! setsockopt: the options our reads must honour or keep from the kernel.

use super::accel;
use crate::abi::{self, fail};
use crate::real;
use libc::{c_int, c_ulong, c_void, socklen_t};
use rustix::io::Errno;
use tsss_core::conn::Outcome;

hook! {
    fn shutdown(fd: c_int, how: c_int) -> c_int {
        let Some(c) = accel(fd) else { return Real };
        // SAFETY: the caller's descriptor.
        match c.shutdown(unsafe { abi::fd(fd) }, how) {
            Outcome::Kernel => Real,
            Outcome::Done(r) => Done(abi::int(r)),
        }
    }
}

hook! {
    /// The variadic argument is read as one integer/pointer (see fcntl).
    fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
        let Some(c) = accel(fd) else { return Real };
        // SAFETY: the caller's descriptor.
        let bfd = unsafe { abi::fd(fd) };
        match req {
            libc::FIONREAD | libc::TIOCOUTQ => {
                let n = if req == libc::FIONREAD {
                    c.bytes_readable(bfd)
                } else {
                    c.bytes_unread_by_peer(bfd)
                };
                let Some(n) = n else { return Real };
                if arg.is_null() {
                    return Done(fail(Errno::FAULT));
                }
                // SAFETY: FIONREAD's and SIOCOUTQ's argument is an int*.
                unsafe { *(arg as *mut c_int) = n.min(c_int::MAX as usize) as c_int };
                Done(0)
            }
            libc::FIONBIO => {
                // SAFETY: the caller's arguments.
                let r = unsafe { real::ioctl(fd, req, arg) };
                if r == 0 && !arg.is_null() {
                    // SAFETY: FIONBIO's argument is an int*.
                    c.set_nonblocking(unsafe { *(arg as *const c_int) } != 0);
                }
                Done(r)
            }
            _ => Real,
        }
    }
}

hook! {
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int {
        if level != libc::SOL_SOCKET
            || (name != libc::SO_ERROR && name != libc::SO_PEEK_OFF)
            || val.is_null()
            || len.is_null()
            // SAFETY: len is valid per the contract.
            || (unsafe { *len } as usize) < size_of::<c_int>()
        {
            return Real;
        }
        let Some(c) = accel(fd) else { return Real };
        if name == libc::SO_PEEK_OFF {
            // SAFETY: val holds at least an int.
            unsafe {
                *(val as *mut c_int) = c.peek_off();
                *len = size_of::<c_int>() as socklen_t;
            }
            return Done(0);
        }
        // SAFETY: the caller's descriptor.
        let Some(e) = c.take_error(unsafe { abi::fd(fd) }) else {
            return Real;
        };
        // SAFETY: val holds at least an int.
        unsafe {
            *(val as *mut c_int) = e;
            *len = size_of::<c_int>() as socklen_t;
        }
        Done(0)
    }
}

hook! {
    /// SO_RCVLOWAT sets how much a blocking read waits for: the ring's
    /// reads ask the kernel again once it took a new value. SO_PEEK_OFF
    /// stays out of the kernel (see `Conn::set_peek_off`).
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
        if level != libc::SOL_SOCKET {
            return Real;
        }
        if name == libc::SO_PEEK_OFF {
            let Some(c) = accel(fd) else {
                tsss_core::conn::peek_off_set_elsewhere();
                return Real;
            };
            // The kernel's checks, then the value kept as Conn::set_peek_off says.
            if (len as usize) < size_of::<c_int>() {
                return Done(fail(Errno::INVAL));
            }
            if val.is_null() {
                return Done(fail(Errno::FAULT));
            }
            // SAFETY: val holds at least an int per the length checked.
            let v = unsafe { (val as *const c_int).read_unaligned() };
            c.set_peek_off(v);
            tsss_core::log!(
                tsss_core::log::INFO,
                "fd {fd}: SO_PEEK_OFF is not emulated over the ring: peeks start at the first unread byte"
            );
            return Done(0);
        }
        if name != libc::SO_RCVLOWAT {
            return Real;
        }
        // SAFETY: the caller's arguments.
        let r = unsafe { real::setsockopt(fd, level, name, val, len) };
        if r == 0
            && let Some(c) = accel(fd)
        {
            c.forget_rcvlowat();
        }
        Done(r)
    }
}
