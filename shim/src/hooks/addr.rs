//! Socket addresses: the marker is hidden wherever the program could see
//! it, as the kernel would report an unnamed peer.

use crate::real;
use libc::{c_int, sockaddr, socklen_t};
use tsss_core::wire;

pub const SUN_OFF: usize = core::mem::offset_of!(libc::sockaddr_un, sun_path);

/// Whether the first `len` bytes of `ss` are a tsss marker address; its
/// protocol version if so.
pub fn is_marker(ss: &libc::sockaddr_storage, len: socklen_t) -> Option<u16> {
    if ss.ss_family != libc::AF_UNIX as libc::sa_family_t || (len as usize) <= SUN_OFF {
        return None;
    }
    // SAFETY: sockaddr_storage is large enough for a sockaddr_un.
    let un = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_un) };
    let n = (len as usize - SUN_OFF).min(un.sun_path.len());
    // SAFETY: c_char and u8 have the same layout.
    let path = unsafe { std::slice::from_raw_parts(un.sun_path.as_ptr().cast::<u8>(), n) };
    wire::parse_marker(path)
}

/// An empty sockaddr_storage and its size, for the kernel to fill.
pub fn storage() -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain old data.
    let ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    (ss, size_of::<libc::sockaddr_storage>() as socklen_t)
}

/// Copies an address out the way the kernel does: truncated to the
/// caller's buffer, full length reported.
///
/// # Safety
/// `addr`/`alen` are null or valid as for accept/getsockname.
pub unsafe fn copy_out(
    addr: *mut sockaddr,
    alen: *mut socklen_t,
    ss: &libc::sockaddr_storage,
    len: socklen_t,
) {
    if addr.is_null() || alen.is_null() {
        return;
    }
    // SAFETY: per the caller.
    let cap = unsafe { *alen } as usize;
    let n = cap
        .min(len as usize)
        .min(size_of::<libc::sockaddr_storage>());
    // SAFETY: addr has cap >= n writable bytes; ss has n readable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (ss as *const libc::sockaddr_storage).cast::<u8>(),
            addr.cast::<u8>(),
            n,
        );
        *alen = len;
    }
}

pub type NameFn = unsafe fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// getsockname/getpeername with the marker hidden: a marked socket looks
/// unnamed, as it would without tsss. `None`: pass the call through.
///
/// # Safety
/// As for getsockname.
pub unsafe fn name_hidden(
    f: NameFn,
    fd: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> Option<c_int> {
    if alen.is_null() || addr.is_null() {
        return None;
    }
    let (mut ss, mut len) = storage();
    // SAFETY: our own buffer and length.
    let r = unsafe {
        f(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Some(r);
    }
    if is_marker(&ss, len).is_some() {
        len = size_of::<libc::sa_family_t>() as socklen_t;
    }
    // SAFETY: the caller's buffer, checked non-null.
    unsafe { copy_out(addr, alen, &ss, len) };
    Some(0)
}

/// For recvfrom/recvmsg on an accelerated stream: the kernel reports the
/// peer's bound address, or nothing (length 0) for an unnamed peer.
///
/// # Safety
/// `addr`/`alen` null or valid as for recvfrom.
pub unsafe fn peer_out(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) {
    if addr.is_null() || alen.is_null() {
        return;
    }
    let (mut ss, mut len) = storage();
    // SAFETY: our own buffer.
    let r = unsafe {
        real::getpeername(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 || is_marker(&ss, len).is_some() || len as usize <= SUN_OFF {
        // SAFETY: checked non-null.
        unsafe { *alen = 0 };
        return;
    }
    // SAFETY: the caller's buffer, checked non-null.
    unsafe { copy_out(addr, alen, &ss, len) };
}

/// A plain connection's peer may still be a marked tsss client whose
/// server went plain: hide the marker in what the kernel reported.
///
/// # Safety
/// `addr`/`alen` null or as the kernel filled them for recvfrom.
pub unsafe fn hide_marker_in(addr: *mut sockaddr, alen: *mut socklen_t) {
    if addr.is_null() || alen.is_null() {
        return;
    }
    // SAFETY: the kernel filled min(*alen, cap) bytes; sockaddr_storage
    // copies at most its size, and we read no more than the kernel reported.
    unsafe {
        let len = *alen;
        if len as usize <= SUN_OFF || (*addr).sa_family != libc::AF_UNIX as libc::sa_family_t {
            return;
        }
        let (mut ss, _) = storage();
        let n = (len as usize).min(size_of::<libc::sockaddr_storage>());
        std::ptr::copy_nonoverlapping(
            addr.cast::<u8>(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        );
        if is_marker(&ss, n as socklen_t).is_some() {
            *alen = 0;
        }
    }
}
