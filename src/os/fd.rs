//! Descriptors: reading a file into raw memory, and what a number names.

use super::errno::ret;
use rustix::fd::{AsRawFd, BorrowedFd};
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
