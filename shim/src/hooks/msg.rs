//! recvmsg/sendmsg and their batched forms. The ancillary-data protocol
//! is the core's (`conn::anc`); here only the msghdr is taken apart and
//! filled in.

use super::accel;
use super::addr::{hide_marker_in, peer_out};
use crate::abi::{self, errno, set_errno, ssize, with_iov, with_iov_mut};
use crate::real;
use libc::{c_int, ssize_t};
use tsss_core::conn::{NameFrom, Outcome};
use tsss_core::os::time::Deadline;

hook! {
    fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
        if msg.is_null() {
            return Real;
        }
        let Some(c) = accel(fd) else {
            // SAFETY: the caller's arguments.
            let r = unsafe { real::recvmsg(fd, msg, flags) };
            if r >= 0 {
                // SAFETY: a valid msghdr, as the kernel filled it.
                unsafe { hide_marker_in((*msg).msg_name.cast(), &mut (*msg).msg_namelen) };
            }
            return Done(r);
        };
        // SAFETY: msg is a valid msghdr per the caller.
        let m = unsafe { &mut *msg };
        // SAFETY: the caller's name and control buffers.
        let (name, control) = unsafe { (abi::name(m), abi::control(m)) };
        // SAFETY: the caller's iovecs and descriptor.
        let r = unsafe {
            with_iov_mut(m.msg_iov, m.msg_iovlen as c_int, |b| {
                c.recvmsg(abi::fd(fd), b, name, control, flags)
            })
        };
        let Some(Outcome::Done(r)) = r else { return Real };
        if let Ok((n, info)) = r {
            m.msg_controllen = info.control_len;
            m.msg_flags = info.flags;
            match info.name {
                NameFrom::Kernel(len) => {
                    m.msg_namelen = len as libc::socklen_t;
                    // SAFETY: as the kernel filled it.
                    unsafe { hide_marker_in(m.msg_name.cast(), &mut m.msg_namelen) };
                }
                NameFrom::Peer => {
                    // SAFETY: msg_name/msg_namelen as the caller gave them.
                    unsafe { peer_out(fd, m.msg_name.cast(), &mut m.msg_namelen) };
                }
                NameFrom::Nobody => {}
            }
            if m.msg_name.is_null() || info.name == NameFrom::Nobody {
                m.msg_namelen = 0;
            }
            return Done(n as ssize_t);
        }
        Done(ssize(r.map(|(n, _)| n)))
    }
}

hook! {
    fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
        if msg.is_null() {
            return Real;
        }
        // SAFETY: valid msghdr per the caller.
        let m = unsafe { &*msg };
        // With an address the kernel answers EISCONN without sending.
        if !m.msg_name.is_null() && m.msg_namelen != 0 {
            return Real;
        }
        let Some(c) = accel(fd) else { return Real };
        // SAFETY: the caller's control buffer, only read.
        let control: &[u8] = unsafe { abi::control(m) };
        // SAFETY: the caller's iovecs and descriptor.
        let r = unsafe {
            with_iov(m.msg_iov, m.msg_iovlen as c_int, |b| {
                c.sendmsg(abi::fd(fd), b, control, flags)
            })
        };
        r.map_or(Real, abi::ssize_or_real)
    }
}

hook! {
    /// One message at a time through sendmsg, as the kernel does. A
    /// failure after the first message is not reported: errno as it was.
    fn sendmmsg(fd: c_int, v: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int {
        if v.is_null() || accel(fd).is_none() {
            return Real;
        }
        let saved = errno();
        let n = n.min(1024);
        let mut done = 0;
        while done < n {
            // SAFETY: the caller's array of n messages.
            let m = unsafe { &mut *v.add(done as usize) };
            // SAFETY: a message of the caller's array.
            let r = unsafe { sendmsg(fd, &m.msg_hdr, flags) };
            if r < 0 {
                if done == 0 {
                    return Done(-1);
                }
                break;
            }
            m.msg_len = r as libc::c_uint;
            done += 1;
        }
        set_errno(saved);
        Done(done as c_int)
    }
}

hook! {
    /// One message at a time through recvmsg; after the first, only what
    /// is already there (MSG_WAITFORONE), or until the timeout's deadline.
    fn recvmmsg(
        fd: c_int,
        v: *mut libc::mmsghdr,
        n: libc::c_uint,
        flags: c_int,
        t: *mut libc::timespec,
    ) -> c_int {
        if v.is_null() || accel(fd).is_none() {
            return Real;
        }
        // SAFETY: null or a valid timespec per the contract.
        let Ok(deadline) = (unsafe { abi::timespec(t) }) else {
            return Real;
        };
        // A failure after the first message is not reported: errno as it was.
        let saved = errno();
        let n = n.min(1024);
        let mut done = 0;
        let mut fl = flags & !libc::MSG_WAITFORONE;
        while done < n {
            // SAFETY: the caller's array of n messages.
            let m = unsafe { &mut *v.add(done as usize) };
            // SAFETY: a message of the caller's array.
            let r = unsafe { recvmsg(fd, &mut m.msg_hdr, fl) };
            if r < 0 {
                if done == 0 {
                    return Done(-1);
                }
                break;
            }
            m.msg_len = r as libc::c_uint;
            done += 1;
            if r == 0 || deadline != Deadline::NEVER && deadline.expired() {
                break;
            }
            if flags & libc::MSG_WAITFORONE != 0 {
                fl |= libc::MSG_DONTWAIT;
            }
        }
        set_errno(saved);
        Done(done as c_int)
    }
}
