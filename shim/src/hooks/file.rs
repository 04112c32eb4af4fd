//! sendfile and splice: file to connection in one copy (into the ring),
//! connection to pipe by peek, write, consume.

use super::accel;
use crate::abi::{self, Hooked, errno, ssize, ssize_or_real};
use crate::real;
use libc::{c_int, size_t, ssize_t};
use rustix::io::Errno;

/// sendfile/splice into `out`: the real call while our direction is still
/// a plain socket (its bytes counted), else file to ring in one copy.
///
/// # Safety
/// `real_call` performs the caller's call with the caller's arguments;
/// `off` is null or the caller's valid offset.
unsafe fn send_from_fd(
    out: c_int,
    inp: c_int,
    off: *mut i64,
    n: size_t,
    nonblock: bool,
    real_call: impl FnOnce() -> ssize_t,
) -> Hooked<ssize_t> {
    let Some(c) = accel(out) else {
        return Hooked::Real;
    };
    let plain = c.send_plain_with(|| match real_call() {
        r if r >= 0 => Ok(r as usize),
        _ => Err(Errno::from_raw_os_error(errno())),
    });
    if let Some(r) = plain {
        return Hooked::Done(ssize(r));
    }
    // SAFETY: both descriptors are the caller's, for this call; off is
    // null or the caller's valid offset.
    let r = unsafe { c.send_from_fd(abi::fd(out), abi::fd(inp), off.as_mut(), n, nonblock) };
    ssize_or_real(r)
}

hook! {
    fn sendfile(out: c_int, inp: c_int, off: *mut libc::off_t, n: size_t) -> ssize_t {
        // SAFETY: the caller's arguments, passed on.
        unsafe { send_from_fd(out, inp, off, n, false, || real::sendfile(out, inp, off, n)) }
    }
}

hook! {
    fn sendfile64(out: c_int, inp: c_int, off: *mut libc::off64_t, n: size_t) -> ssize_t {
        // SAFETY: the caller's arguments, passed on.
        unsafe { send_from_fd(out, inp, off, n, false, || real::sendfile64(out, inp, off, n)) }
    }
}

hook! {
    fn splice(
        fin: c_int,
        offin: *mut libc::loff_t,
        fout: c_int,
        offout: *mut libc::loff_t,
        n: size_t,
        flags: libc::c_uint,
    ) -> ssize_t {
        let nonblock = flags & libc::SPLICE_F_NONBLOCK != 0;
        // Into an accelerated socket (from a pipe).
        if offout.is_null() {
            // SAFETY: the caller's arguments, passed on.
            let r = unsafe {
                send_from_fd(fout, fin, offin, n, nonblock, || {
                    real::splice(fin, offin, fout, offout, n, flags)
                })
            };
            if let Done(r) = r {
                return Done(r);
            }
        }
        // Out of an accelerated socket (into a pipe).
        if offin.is_null()
            && n > 0
            && let Some(c) = accel(fin)
        {
            // SAFETY: both descriptors are the caller's, for this call.
            let r = unsafe { c.splice_to(abi::fd(fin), abi::fd(fout), n, nonblock) };
            return ssize_or_real(r);
        }
        Real
    }
}
