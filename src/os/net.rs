//! recvmsg(2) and sendmsg(2) with raw control (and name) buffers, as the
//! kernel fills and reads them: rustix parses control messages, but the
//! program's buffer must get the kernel's own bytes, MSG_CTRUNC and all.
//! And SO_RCVLOWAT and SO_PEEK_OFF, which rustix does not name.

use super::errno::ret;
use rustix::fd::{AsRawFd, BorrowedFd};
use rustix::io::Errno;
use std::io::{IoSlice, IoSliceMut};

/// What the kernel reported besides the byte count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgOut {
    pub name_len: usize,
    pub control_len: usize,
    pub flags: i32,
}

/// recvmsg(2) into `bufs`, with `name` and `control` as the caller's
/// buffers (either may be empty).
pub fn recvmsg(
    fd: BorrowedFd<'_>,
    bufs: &mut [IoSliceMut<'_>],
    name: &mut [u8],
    control: &mut [u8],
    flags: i32,
) -> Result<(usize, MsgOut), Errno> {
    // SAFETY: msghdr is plain old data; every pointer below is a live,
    // exclusively borrowed buffer of the stated length (IoSliceMut is
    // ABI-compatible with iovec).
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    if !name.is_empty() {
        m.msg_name = name.as_mut_ptr().cast();
        m.msg_namelen = name.len() as libc::socklen_t;
    }
    m.msg_iov = bufs.as_mut_ptr().cast();
    m.msg_iovlen = bufs.len();
    if !control.is_empty() {
        m.msg_control = control.as_mut_ptr().cast();
        m.msg_controllen = control.len();
    }
    // SAFETY: as above, for the call's duration.
    let n = ret(|| unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
            fd.as_raw_fd(),
            &mut m as *mut libc::msghdr,
            flags,
        )
    })?;
    Ok((
        n,
        MsgOut {
            name_len: m.msg_namelen as usize,
            control_len: m.msg_controllen,
            flags: m.msg_flags,
        },
    ))
}

/// sendmsg(2) of `bufs` with the caller's control messages (no name: the
/// socket is connected).
pub fn sendmsg(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    control: &[u8],
    flags: i32,
) -> Result<usize, Errno> {
    // SAFETY: msghdr is plain old data; the kernel only reads through the
    // pointers (IoSlice is ABI-compatible with iovec).
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    m.msg_iovlen = bufs.len();
    if !control.is_empty() {
        m.msg_control = control.as_ptr() as *mut libc::c_void;
        m.msg_controllen = control.len();
    }
    // SAFETY: as above, for the call's duration.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd.as_raw_fd(),
            &m as *const libc::msghdr,
            flags,
        )
    })
}

/// An int-valued SOL_SOCKET option.
fn get_int(fd: BorrowedFd<'_>, name: libc::c_int) -> Result<libc::c_int, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are ours and live for the call; len states v's size.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            &mut v as *mut libc::c_int,
            &mut len as *mut libc::socklen_t,
        )
    })?;
    Ok(v)
}

/// The socket's SO_RCVLOWAT (the kernel keeps it at least 1); 1 if it
/// cannot be read.
pub fn rcvlowat(fd: BorrowedFd<'_>) -> u32 {
    get_int(fd, libc::SO_RCVLOWAT).map_or(1, |v| v.max(1) as u32)
}

/// The socket's SO_PEEK_OFF (-1: off), or -1 if it cannot be read.
pub fn peek_off(fd: BorrowedFd<'_>) -> i32 {
    get_int(fd, libc::SO_PEEK_OFF).unwrap_or(-1)
}

/// Turns the kernel's SO_PEEK_OFF off.
pub fn clear_peek_off(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let v: libc::c_int = -1;
    // SAFETY: v is ours and lives for the call; the length states its size.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            &v as *const libc::c_int,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}
