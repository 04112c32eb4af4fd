//! The C side of the boundary: errno, return values, and safe views of the
//! caller's iovecs, control buffers, fd_sets and timeouts. Every hook
//! translates through here; the logic lives in `tsss-core`.
#![allow(unsafe_code)]

use libc::{c_int, ssize_t};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use std::io::{IoSlice, IoSliceMut};
use tsss_core::conn::Outcome;
use tsss_core::os::time::Deadline;

/// What a hook made of a call: its return value, or "call the real
/// function with the caller's arguments".
pub enum Hooked<T> {
    Done(T),
    Real,
}

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

/// -1 with errno set, as C returns an error.
pub fn fail<T: From<i8>>(e: Errno) -> T {
    set_errno(e.raw_os_error());
    T::from(-1)
}

pub fn ssize(r: Result<usize, Errno>) -> ssize_t {
    match r {
        Ok(n) => n as ssize_t,
        Err(e) => fail(e),
    }
}

pub fn int(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// A core answer as a hook's: its count (or -1 and errno), or the real call.
pub fn ssize_or_real(o: Outcome<usize>) -> Hooked<ssize_t> {
    match o {
        Outcome::Kernel => Hooked::Real,
        Outcome::Done(r) => Hooked::Done(ssize(r)),
    }
}

/// The application's descriptor, borrowed for the call it made.
///
/// # Safety
/// `fd` is an argument of the call being served (closing it concurrently
/// is the application's bug, as with the kernel; our syscalls then fail
/// with EBADF), and the borrow does not outlive that call.
pub unsafe fn fd<'a>(fd: c_int) -> BorrowedFd<'a> {
    // SAFETY: per the caller.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Runs `f` on the caller's iovecs as readable slices; `None` if one is
/// unusable (the kernel then reports EFAULT/EINVAL itself).
///
/// # Safety
/// `iov` points to `cnt` iovecs describing memory valid as for writev.
pub unsafe fn with_iov<T>(
    iov: *const libc::iovec,
    cnt: c_int,
    f: impl FnOnce(&[IoSlice<'_>]) -> T,
) -> Option<T> {
    // SAFETY: per the caller.
    let raw = unsafe { iovecs(iov, cnt) }?;
    let mk = |v: &libc::iovec| {
        if v.iov_len == 0 {
            IoSlice::new(&[])
        } else {
            // SAFETY: per the caller: non-null, iov_len readable bytes.
            IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) })
        }
    };
    if raw.len() <= 8 {
        let a: [IoSlice<'_>; 8] = std::array::from_fn(|i| raw.get(i).map_or(IoSlice::new(&[]), mk));
        Some(f(&a[..raw.len()]))
    } else {
        let v: Vec<IoSlice<'_>> = raw.iter().map(mk).collect();
        Some(f(&v))
    }
}

/// [`with_iov`] for writable memory (readv, recvmsg).
///
/// # Safety
/// `iov` points to `cnt` iovecs describing memory valid as for readv.
pub unsafe fn with_iov_mut<T>(
    iov: *const libc::iovec,
    cnt: c_int,
    f: impl FnOnce(&mut [IoSliceMut<'_>]) -> T,
) -> Option<T> {
    // SAFETY: per the caller.
    let raw = unsafe { iovecs(iov, cnt) }?;
    let mk = |v: &libc::iovec| {
        if v.iov_len == 0 {
            IoSliceMut::new(&mut [])
        } else {
            // SAFETY: per the caller: non-null, iov_len writable bytes, not
            // aliased by the other iovecs (as readv requires).
            IoSliceMut::new(unsafe {
                std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len)
            })
        }
    };
    if raw.len() <= 8 {
        let mut a: [IoSliceMut<'_>; 8] =
            std::array::from_fn(|i| raw.get(i).map_or(IoSliceMut::new(&mut []), mk));
        Some(f(&mut a[..raw.len()]))
    } else {
        let mut v: Vec<IoSliceMut<'_>> = raw.iter().map(mk).collect();
        Some(f(&mut v))
    }
}

/// The caller's iovec array, if usable (at most 1024 entries, no null
/// buffer with a length).
///
/// # Safety
/// As for [`with_iov`].
unsafe fn iovecs<'a>(iov: *const libc::iovec, cnt: c_int) -> Option<&'a [libc::iovec]> {
    let cnt = usize::try_from(cnt).ok().filter(|&n| n <= 1024)?;
    if cnt > 0 && iov.is_null() {
        return None;
    }
    let raw = if cnt == 0 {
        &[][..]
    } else {
        // SAFETY: per the caller; cnt > 0 implies non-null.
        unsafe { std::slice::from_raw_parts(iov, cnt) }
    };
    if raw.iter().any(|v| v.iov_base.is_null() && v.iov_len > 0) {
        return None;
    }
    Some(raw)
}

/// One caller buffer as a list of one, without building an iovec array
/// (the per-message path of read/write). `None` for a null buffer with a
/// length: the kernel's EFAULT.
///
/// # Safety
/// `buf` is readable for `n` bytes unless it is null.
pub unsafe fn one_slice<'a>(buf: *const libc::c_void, n: usize) -> Option<[IoSlice<'a>; 1]> {
    if n == 0 {
        return Some([IoSlice::new(&[])]);
    }
    if buf.is_null() {
        return None;
    }
    // SAFETY: per the caller: non-null, n readable bytes.
    Some([IoSlice::new(unsafe {
        std::slice::from_raw_parts(buf.cast::<u8>(), n)
    })])
}

/// [`one_slice`] for writable memory.
///
/// # Safety
/// `buf` is writable for `n` bytes unless it is null.
pub unsafe fn one_slice_mut<'a>(buf: *mut libc::c_void, n: usize) -> Option<[IoSliceMut<'a>; 1]> {
    if n == 0 {
        return Some([IoSliceMut::new(&mut [])]);
    }
    if buf.is_null() {
        return None;
    }
    // SAFETY: per the caller: non-null, n writable bytes.
    Some([IoSliceMut::new(unsafe {
        std::slice::from_raw_parts_mut(buf.cast::<u8>(), n)
    })])
}

/// A valid iovec array (0..=IOV_MAX entries) whose lengths are all zero.
///
/// # Safety
/// `iov` points to `cnt` iovecs when `cnt` is in range.
pub unsafe fn iov_total_is_zero(iov: *const libc::iovec, cnt: c_int) -> bool {
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) || (cnt > 0 && iov.is_null()) {
        return false;
    }
    if cnt == 0 {
        return true;
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts(iov, cnt as usize) }
        .iter()
        .all(|v| v.iov_len == 0)
}

/// A message's control buffer (empty if none).
///
/// # Safety
/// `m` is a valid msghdr whose control buffer, if any, is writable for
/// `msg_controllen` bytes (recvmsg) or readable (sendmsg: the caller only
/// reads from the slice).
pub unsafe fn control<'a>(m: &libc::msghdr) -> &'a mut [u8] {
    if m.msg_control.is_null() || m.msg_controllen == 0 {
        return &mut [];
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts_mut(m.msg_control.cast::<u8>(), m.msg_controllen) }
}

/// A message's name buffer (empty if none).
///
/// # Safety
/// `m` is a valid msghdr whose name buffer, if any, is writable for
/// `msg_namelen` bytes.
pub unsafe fn name<'a>(m: &libc::msghdr) -> &'a mut [u8] {
    if m.msg_name.is_null() || m.msg_namelen == 0 {
        return &mut [];
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts_mut(m.msg_name.cast::<u8>(), m.msg_namelen as usize) }
}

/// A timespec timeout (null: none); EINVAL if malformed.
///
/// # Safety
/// `t` is null or valid for reads.
pub unsafe fn timespec(t: *const libc::timespec) -> Result<Deadline, Errno> {
    // SAFETY: per the caller.
    Deadline::from_timespec(unsafe { t.as_ref() })
}

/// An `fd_set`'s words.
///
/// # Safety
/// `s` is null or a valid, exclusively borrowed fd_set.
pub unsafe fn fd_set<'a>(s: *mut libc::fd_set) -> Option<&'a mut [u64]> {
    const WORDS: usize = size_of::<libc::fd_set>() / 8;
    // SAFETY: per the caller; an fd_set is an array of longs (u64 here).
    (!s.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(s.cast::<u64>(), WORDS) })
}
