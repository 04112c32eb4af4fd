//! The byte stream: read/write and the recv/send family on one buffer or
//! an iovec list.

use super::accel;
use super::addr::{hide_marker_in, peer_out};
use crate::abi::{
    self, Hooked, iov_total_is_zero, one_slice, one_slice_mut, ssize_or_real, with_iov,
    with_iov_mut,
};
use crate::real;
use libc::{c_int, c_void, size_t, sockaddr, socklen_t, ssize_t};
use rustix::fd::RawFd;
use tsss_core::conn::{RecvOpts, SendOpts};

/// recv on one buffer.
///
/// # Safety
/// `buf` is writable for `n` bytes (or null, which we leave to the kernel).
unsafe fn recv_one(fd: RawFd, buf: *mut c_void, n: size_t, flags: c_int) -> Hooked<ssize_t> {
    let Some(c) = accel(fd) else {
        return Hooked::Real;
    };
    // SAFETY: the caller's buffer.
    let Some(mut b) = (unsafe { one_slice_mut(buf, n) }) else {
        return Hooked::Real;
    };
    // SAFETY: the caller's fd.
    ssize_or_real(c.recv(unsafe { abi::fd(fd) }, &mut b, RecvOpts::from_flags(flags)))
}

/// send on one buffer.
///
/// # Safety
/// `buf` is readable for `n` bytes (or null, left to the kernel).
unsafe fn send_one(fd: RawFd, buf: *const c_void, n: size_t, flags: c_int) -> Hooked<ssize_t> {
    let Some(c) = accel(fd) else {
        return Hooked::Real;
    };
    // SAFETY: the caller's buffer.
    let Some(b) = (unsafe { one_slice(buf, n) }) else {
        return Hooked::Real;
    };
    // SAFETY: the caller's fd.
    ssize_or_real(c.send(unsafe { abi::fd(fd) }, &b, SendOpts::from_flags(flags)))
}

hook! {
    on_table_fd(fd)
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
        // read(2) of 0 bytes returns 0 at once on a socket (recv(2) waits):
        // the kernel answers that one.
        if n == 0 {
            return Real;
        }
        // SAFETY: the caller's buffer.
        unsafe { recv_one(fd, buf, n, 0) }
    }
}

hook! {
    on_table_fd(fd)
    /// Fortified read: glibc aborts when `n > buflen`; so does the real one.
    fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
        if n > buflen || n == 0 {
            return Real;
        }
        // SAFETY: the caller's buffer, n <= its size.
        unsafe { recv_one(fd, buf, n, 0) }
    }
}

hook! {
    on_table_fd(fd)
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
        // SAFETY: the caller's buffer.
        unsafe { recv_one(fd, buf, n, flags) }
    }
}

hook! {
    on_table_fd(fd)
    fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t {
        if n > buflen {
            return Real;
        }
        // SAFETY: the caller's buffer, n <= its size.
        unsafe { recv_one(fd, buf, n, flags) }
    }
}

hook! {
    fn recvfrom(
        fd: c_int,
        buf: *mut c_void,
        n: size_t,
        flags: c_int,
        addr: *mut sockaddr,
        alen: *mut socklen_t,
    ) -> ssize_t {
        // SAFETY: the caller's buffer.
        match unsafe { recv_one(fd, buf, n, flags) } {
            Done(r) => {
                if r > 0 {
                    // SAFETY: the caller's address buffer.
                    unsafe { peer_out(fd, addr, alen) };
                } else if r == 0 && !addr.is_null() && !alen.is_null() {
                    // The kernel names the sender of the bytes read: none at EOF.
                    // SAFETY: checked non-null.
                    unsafe { *alen = 0 };
                }
                Done(r)
            }
            Real => {
                // SAFETY: the caller's arguments.
                let r = unsafe { real::recvfrom(fd, buf, n, flags, addr, alen) };
                if r >= 0 {
                    // SAFETY: as the kernel filled them.
                    unsafe { hide_marker_in(addr, alen) };
                }
                Done(r)
            }
        }
    }
}

hook! {
    fn __recvfrom_chk(
        fd: c_int,
        buf: *mut c_void,
        n: size_t,
        buflen: size_t,
        flags: c_int,
        addr: *mut sockaddr,
        alen: *mut socklen_t,
    ) -> ssize_t {
        if n > buflen {
            // glibc aborts.
            return Real;
        }
        // SAFETY: the caller's arguments, n <= buflen.
        Done(unsafe { recvfrom(fd, buf, n, flags, addr, alen) })
    }
}

hook! {
    on_table_fd(fd)
    fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
        let Some(c) = accel(fd) else { return Real };
        // readv of 0 bytes returns 0 at once on a socket: the kernel answers it.
        // SAFETY: the caller's iovecs and descriptor.
        let r = unsafe {
            with_iov_mut(iov, cnt, |b| {
                if b.iter().all(|s| s.is_empty()) {
                    None
                } else {
                    Some(c.recv(abi::fd(fd), b, RecvOpts::default()))
                }
            })
        };
        r.flatten().map_or(Real, ssize_or_real)
    }
}

hook! {
    on_table_fd(fd)
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
        // SAFETY: the caller's buffer.
        unsafe { send_one(fd, buf, n, 0) }
    }
}

hook! {
    on_table_fd(fd)
    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
        // SAFETY: the caller's buffer.
        unsafe { send_one(fd, buf, n, flags) }
    }
}

hook! {
    fn sendto(
        fd: c_int,
        buf: *const c_void,
        n: size_t,
        flags: c_int,
        addr: *const sockaddr,
        alen: socklen_t,
    ) -> ssize_t {
        // With an address the kernel answers EISCONN without sending.
        if !addr.is_null() {
            return Real;
        }
        let _ = alen;
        // SAFETY: the caller's buffer.
        unsafe { send_one(fd, buf, n, flags) }
    }
}

hook! {
    on_table_fd(fd)
    fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
        let Some(c) = accel(fd) else { return Real };
        // SAFETY: the caller's iovecs.
        if unsafe { iov_total_is_zero(iov, cnt) } {
            // The kernel's writev returns 0 before the socket sees it.
            return Done(0);
        }
        // SAFETY: the caller's iovecs and descriptor.
        let r = unsafe { with_iov(iov, cnt, |b| c.send(abi::fd(fd), b, SendOpts::default())) };
        r.map_or(Real, ssize_or_real)
    }
}
