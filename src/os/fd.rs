//! Descriptors: reading a file into raw memory, what a number names, and
//! descriptors tsss keeps as numbers (the registry's file).

use super::errno::ret;
use rustix::fd::{AsRawFd, BorrowedFd, RawFd};
use rustix::io::Errno;

/// read(2) or pread(2) (when `off` is given, which it then advances) into
/// raw memory: the file-to-ring copy of sendfile/splice.
///
/// # Safety
/// `p` is valid for writes of `len` bytes.
pub unsafe fn read_into(
    fd: BorrowedFd<'_>,
    p: *mut u8,
    len: usize,
    off: Option<&mut i64>,
) -> Result<usize, Errno> {
    let fd = fd.as_raw_fd();
    match off {
        Some(o) => {
            // SAFETY: per the caller.
            let r = ret(|| unsafe { libc::syscall(libc::SYS_pread64, fd, p, len, *o) });
            if let Ok(n) = r {
                *o += n as i64;
            }
            r
        }
        // SAFETY: per the caller.
        None => ret(|| unsafe { libc::syscall(libc::SYS_read, fd, p, len) }),
    }
}

/// The inode of the socket `fd` names, if it names a socket.
pub fn socket_inode(fd: BorrowedFd<'_>) -> Option<u64> {
    let st = rustix::fs::fstat(fd).ok()?;
    (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .then_some(st.st_ino)
}

/// A descriptor tsss keeps as a number in an atomic, for calls that may
/// come from a signal handler or a fork child (the registry's file):
/// borrowed for one call.
///
/// Safe to call with any number: the kernel answers a closed one with
/// EBADF. One the program closed behind our back and reused names the
/// program's file: callers check [`identity`] first.
fn with_raw<T>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
    // SAFETY: borrowed only for the duration of `f`, which makes syscalls
    // on it; a number that is not (or no longer) open fails with EBADF,
    // and nothing here owns or closes it.
    f(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Gives `off..off + len` of the file `fd` its blocks, never changing its
/// size (`FALLOC_FL_KEEP_SIZE`): a store into a mapped page of a sparse
/// file on a full file system would raise SIGBUS; this fails with ENOSPC
/// instead. On a number reused by the program it changes no byte of its
/// file.
pub fn allocate_raw(fd: RawFd, off: u64, len: u64) -> Result<(), Errno> {
    with_raw(fd, |b| {
        rustix::fs::fallocate(b, rustix::fs::FallocateFlags::KEEP_SIZE, off, len)
    })
}

/// Device and inode of the file `fd` names, if it is open.
pub fn identity(fd: RawFd) -> Option<(u64, u64)> {
    with_raw(fd, |b| rustix::fs::fstat(b).ok()).map(|st| (st.st_dev, st.st_ino))
}

/// pwrite(2) to a descriptor kept as a number.
pub fn pwrite_raw(fd: RawFd, buf: &[u8], off: u64) -> Result<usize, Errno> {
    with_raw(fd, |b| rustix::io::pwrite(b, buf, off))
}

/// close(2) of a descriptor kept as a number, which the caller owns (a
/// fork child's copy of its parent's registry file). A raw syscall, never
/// the shim's `close` override.
pub fn close_raw(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: per the caller, `fd` is ours and nothing uses it after.
        unsafe { rustix::io::close(fd) };
    }
}
