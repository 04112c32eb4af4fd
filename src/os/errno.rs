//! errno, kept as the program left it.

use rustix::io::Errno;

/// Runs `f`, a libc call, and returns its result with the errno it left;
/// errno itself is as before.
pub(crate) fn errno_kept<T>(f: impl FnOnce() -> T) -> (T, i32) {
    // SAFETY: this thread's errno slot, valid for the thread's life.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *slot };
    let r = f();
    // SAFETY: as above.
    let e = unsafe { std::mem::replace(&mut *slot, saved) };
    (r, e)
}

/// Maps a -1 return to the errno, like mio's `syscall!`, leaving errno as
/// it was.
macro_rules! syscall {
    ($e:expr) => {{
        let (r, e) = $crate::os::errno::errno_kept(|| {
            // SAFETY: stated at each call site.
            unsafe { $e }
        });
        if r == -1 {
            Err(rustix::io::Errno::from_raw_os_error(e))
        } else {
            Ok(r)
        }
    }};
}
pub(crate) use syscall;

/// Runs `f`, a `libc::syscall`, mapping a negative return to its errno and
/// leaving errno as it was.
pub(crate) fn ret(f: impl FnOnce() -> libc::c_long) -> Result<usize, Errno> {
    match errno_kept(f) {
        (r, e) if r < 0 => Err(Errno::from_raw_os_error(e)),
        (r, _) => Ok(r as usize),
    }
}
