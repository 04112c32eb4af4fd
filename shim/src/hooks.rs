//! The exported overrides. Each one translates C arguments to the core's
//! safe API, and results back to a return value plus errno; anything that is
//! not an accelerated connection goes to the real function untouched.
//!
//! errno: set only when returning -1, restored on success paths that made
//! internal calls (the kernel never touches errno on success).

use crate::real;
use crate::table::{self, ConnRef, Entry};
use libc::{c_int, c_ulong, c_void, size_t, sockaddr, socklen_t, ssize_t};
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::io::{IoSlice, IoSliceMut};
use std::sync::Mutex;
use tsss_core::conn::{Conn, RecvOpts, SendOpts};
use tsss_core::layout::CARRIER;
use tsss_core::log::{DEBUG, INFO};
use tsss_core::readiness::{self, EpollSet, Lookup};
use tsss_core::{config, log, wire};

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

fn fail<T: From<i8>>(e: Errno) -> T {
    set_errno(e.raw_os_error());
    T::from(-1)
}

fn ssize(r: Result<usize, Errno>) -> ssize_t {
    match r {
        Ok(n) => n as ssize_t,
        Err(e) => fail(e),
    }
}

/// The accelerated connection behind `fd`. Connections that went plain are
/// dropped from the table here, so later calls take the fast path.
#[inline]
fn accel(fd: RawFd) -> Option<ConnRef> {
    if config::disabled() {
        return None;
    }
    let c = ConnRef::new(table::get(fd)?)?;
    if c.is_plain() {
        table::remove_conn(fd, &c);
        return None;
    }
    Some(c)
}

struct Shim;

impl Lookup for Shim {
    type Ref = ConnRef;
    fn conn(&self, fd: RawFd) -> Option<ConnRef> {
        ConnRef::new(table::get(fd)?)
    }
    fn forget(&self, fd: RawFd, conn: &Conn) {
        table::remove_conn(fd, conn);
    }
}

fn recv_opts(flags: c_int) -> RecvOpts {
    RecvOpts {
        peek: flags & libc::MSG_PEEK != 0,
        waitall: flags & libc::MSG_WAITALL != 0,
        dontwait: flags & libc::MSG_DONTWAIT != 0,
    }
}

fn send_opts(flags: c_int) -> SendOpts {
    SendOpts {
        dontwait: flags & libc::MSG_DONTWAIT != 0,
        nosignal: flags & libc::MSG_NOSIGNAL != 0,
        creds_only: false,
        raw: flags as u32,
    }
}

/// Defines a function that runs `f` on the caller's iovecs as std slices;
/// `None` if one is unusable (the kernel then reports EFAULT/EINVAL
/// itself). Two instances: readable and writable memory.
macro_rules! with_iov_fn {
    ($name:ident, $slice:ident, $from_raw:path, $empty:expr, $($mut_:tt)?) => {
        /// # Safety
        /// `iov` points to `cnt` iovecs describing memory valid as for
        /// readv/writev.
        unsafe fn $name<T>(iov: *const libc::iovec, cnt: c_int, f: impl FnOnce(&$($mut_)? [$slice<'_>]) -> T) -> Option<T> {
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
            let mk = |v: &libc::iovec| {
                if v.iov_len == 0 {
                    $slice::new($empty)
                } else {
                    // SAFETY: per the caller: non-null, iov_len valid bytes.
                    $slice::new(unsafe { $from_raw(v.iov_base.cast::<u8>(), v.iov_len) })
                }
            };
            if cnt <= 8 {
                #[allow(unused_mut)]
                let mut a: [$slice<'_>; 8] = std::array::from_fn(|i| if i < cnt { mk(&raw[i]) } else { $slice::new($empty) });
                Some(f(&$($mut_)? a[..cnt]))
            } else {
                #[allow(unused_mut)]
                let mut v: Vec<$slice<'_>> = raw.iter().map(mk).collect();
                Some(f(&$($mut_)? v))
            }
        }
    };
}

with_iov_fn!(
    with_iov_mut,
    IoSliceMut,
    std::slice::from_raw_parts_mut,
    &mut [],
    mut
);
with_iov_fn!(with_iov, IoSlice, std::slice::from_raw_parts, &[],);

/// recv on one buffer; `None`: not ours, call the real function.
///
/// # Safety
/// `buf` is writable for `n` bytes (or null, which we leave to the kernel).
unsafe fn recv_one(fd: RawFd, buf: *mut c_void, n: size_t, flags: c_int) -> Option<ssize_t> {
    let c = accel(fd)?;
    let iov = libc::iovec {
        iov_base: buf,
        iov_len: n,
    };
    // SAFETY: one iovec built from the caller's buffer.
    let r = unsafe { with_iov_mut(&iov, 1, |b| c.recv(fd, b, recv_opts(flags))) }??;
    Some(ssize(r))
}

/// # Safety
/// `buf` is readable for `n` bytes (or null, left to the kernel).
unsafe fn send_one(fd: RawFd, buf: *const c_void, n: size_t, flags: c_int) -> Option<ssize_t> {
    let c = accel(fd)?;
    let iov = libc::iovec {
        iov_base: buf as *mut c_void,
        iov_len: n,
    };
    // SAFETY: one iovec built from the caller's buffer.
    let r = unsafe { with_iov(&iov, 1, |b| c.send(fd, b, send_opts(flags))) }??;
    Some(ssize(r))
}

// ------------------------------------------------------------------ addresses

const SUN_OFF: usize = core::mem::offset_of!(libc::sockaddr_un, sun_path);

/// Whether the first `len` bytes of `ss` are a tsss marker address.
fn is_marker(ss: &libc::sockaddr_storage, len: socklen_t) -> Option<u16> {
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

/// Copies an address out the way the kernel does: truncated to the
/// caller's buffer, full length reported.
///
/// # Safety
/// `addr`/`alen` are null or valid as for accept/getsockname.
unsafe fn copy_addr_out(
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
        .min(core::mem::size_of::<libc::sockaddr_storage>());
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

type NameFn = unsafe fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// getsockname/getpeername with the marker hidden: a marked socket looks
/// unnamed, as it would without tsss.
///
/// # Safety
/// As for getsockname.
unsafe fn name_hidden(f: NameFn, fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> c_int {
    if config::disabled() || alen.is_null() || addr.is_null() {
        // SAFETY: passthrough with the caller's arguments.
        return unsafe { f(fd, addr, alen) };
    }
    // SAFETY: sockaddr_storage is plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: our own buffer and length.
    let r = unsafe {
        f(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return r;
    }
    if is_marker(&ss, len).is_some() {
        len = core::mem::size_of::<libc::sa_family_t>() as socklen_t;
    }
    // SAFETY: the caller's buffer, checked non-null.
    unsafe { copy_addr_out(addr, alen, &ss, len) };
    0
}

/// For recvfrom/recvmsg on an accelerated stream: the kernel reports the
/// peer's bound address, or nothing (length 0) for an unnamed peer.
///
/// # Safety
/// `addr`/`alen` null or valid as for recvfrom.
unsafe fn peer_addr_out(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) {
    if addr.is_null() || alen.is_null() {
        return;
    }
    // SAFETY: plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
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
    unsafe { copy_addr_out(addr, alen, &ss, len) };
}

// ------------------------------------------------------------------ sockets

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    // SAFETY: passthrough.
    let fd = unsafe { real::socket(domain, ty, proto) };
    if fd >= 0 {
        // A stale entry means the fd was closed behind our back.
        drop(table::remove(fd));
    }
    fd
}

/// Whether `fd` can carry the marker, by cheap checks made before any
/// state is built: a stream socket, unbound (`Some(false)`) or bound to a
/// marker by an earlier connect that failed (`Some(true)`).
fn markable(fd: c_int) -> Option<bool> {
    // SAFETY: fd is only borrowed for this call.
    let bfd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
    if !matches!(
        rustix::net::sockopt::socket_type(bfd),
        Ok(rustix::net::SocketType::STREAM)
    ) {
        return None;
    }
    // SAFETY: plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: our own buffer.
    if unsafe {
        real::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    if is_marker(&ss, len).is_some() {
        return Some(true);
    }
    if len as usize > SUN_OFF {
        log!(
            INFO,
            "fd {fd}: plain: the application bound this socket itself"
        );
        return None;
    }
    Some(false)
}

/// Binds a [`markable`] unbound socket to a fresh marker address. True if
/// it now carries the marker.
fn bind_marker(fd: c_int) -> bool {
    // SAFETY: fd is only borrowed for this call.
    let bfd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
    let mut r = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let (name, n) = wire::marker_name(pid, u64::from_ne_bytes(r));
    let Ok(addr) = rustix::net::SocketAddrUnix::new_abstract_name(&name[1..n]) else {
        return false;
    };
    match rustix::net::bind(bfd, &addr) {
        Ok(()) => true,
        Err(e) => {
            log!(INFO, "fd {fd}: plain: cannot bind the marker address: {e}");
            false
        }
    }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: addr is readable for len >= 2 bytes when non-null.
    let unix = !addr.is_null()
        && len as usize >= 2
        && unsafe { (*addr).sa_family } == libc::AF_UNIX as libc::sa_family_t;
    if config::disabled() || !unix || table::get(fd).is_some() {
        // SAFETY: passthrough.
        return unsafe { real::connect(fd, addr, len) };
    }
    let saved = errno();
    // The cheap checks first: every AF_UNIX connect comes here, datagram
    // ones (syslog) too. Then our state: once the marker is bound the
    // server will offer, and a client that cannot track the connection
    // would hand HELLO to the program (out of descriptors, for one).
    let mut conn = None;
    let mut marked = false;
    if let Some(retry) = markable(fd) {
        // SAFETY: borrowed for one call.
        let bfd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
        let nb =
            rustix::fs::fcntl_getfl(bfd).is_ok_and(|f| f.contains(rustix::fs::OFlags::NONBLOCK));
        conn = Conn::client(fd, nb)
            .map_err(|why| log!(INFO, "fd {fd}: plain: {why}"))
            .ok();
        marked = conn.is_some() && (retry || bind_marker(fd));
    }
    // SAFETY: passthrough.
    let r = unsafe { real::connect(fd, addr, len) };
    let e = errno();
    if let (true, Some(c)) = (marked && (r == 0 || e == libc::EINPROGRESS), conn) {
        drop(table::insert(fd, Entry::Conn(c)));
        log!(
            DEBUG,
            "fd {fd}: connected with the tsss marker; waiting for the server's offer"
        );
        adopt_epoll_registration(fd);
    }
    set_errno(if r == 0 { saved } else { e });
    r
}

fn offer(nfd: c_int, version: u16, flags: c_int) {
    if version != wire::PROTO_VERSION {
        log!(
            INFO,
            "fd {nfd}: plain: client speaks tsss protocol {version}, we speak {}",
            wire::PROTO_VERSION
        );
        return;
    }
    // SAFETY: borrowed for one call.
    let bfd = unsafe { rustix::fd::BorrowedFd::borrow_raw(nfd) };
    let uid = match rustix::net::sockopt::socket_peercred(bfd) {
        Ok(c) => c.uid.as_raw(),
        Err(e) => {
            log!(INFO, "fd {nfd}: plain: cannot read peer credentials: {e}");
            return;
        }
    };
    match Conn::server(nfd, flags & libc::SOCK_NONBLOCK != 0, uid) {
        Ok(c) => drop(table::insert(nfd, Entry::Conn(c))),
        Err(why) => log!(INFO, "fd {nfd}: plain: {why}"),
    }
}

/// # Safety
/// libc contract.
unsafe fn do_accept(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t, flags: c_int) -> c_int {
    if config::disabled() {
        // SAFETY: passthrough.
        return unsafe { real::accept4(fd, addr, alen, flags) };
    }
    // SAFETY: plain old data.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: our own address buffer; fd and flags are the caller's.
    let nfd = unsafe {
        real::accept4(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
            flags,
        )
    };
    if nfd < 0 {
        return nfd;
    }
    let saved = errno();
    drop(table::remove(nfd));
    let mut out_len = len;
    if let Some(v) = is_marker(&ss, len) {
        // Without tsss the client would be unnamed.
        out_len = core::mem::size_of::<libc::sa_family_t>() as socklen_t;
        offer(nfd, v, flags);
    } else if ss.ss_family == libc::AF_UNIX as libc::sa_family_t && log::enabled(INFO) {
        // SAFETY: borrowed for one call.
        let bfd = unsafe { rustix::fd::BorrowedFd::borrow_raw(nfd) };
        if matches!(
            rustix::net::sockopt::socket_type(bfd),
            Ok(rustix::net::SocketType::STREAM)
        ) {
            log!(
                INFO,
                "fd {nfd}: plain: client does not run tsss (no marker address)"
            );
        }
    }
    // SAFETY: the caller's buffers.
    unsafe { copy_addr_out(addr, alen, &ss, out_len) };
    set_errno(saved);
    nfd
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> c_int {
    // SAFETY: forwarded.
    unsafe { do_accept(fd, addr, alen, 0) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { do_accept(fd, addr, alen, flags) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(
    fd: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { name_hidden(real::getsockname, fd, addr, alen) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(
    fd: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { name_hidden(real::getpeername, fd, addr, alen) }
}

/// Forgets `fd` before the kernel closes it: the connection ends (for
/// this process) when its last descriptor goes. Runs while `fd` still
/// names the socket, since ending may ring the peer's doorbell on it.
fn forget_fd(fd: c_int) {
    // A vfork child's close must not change its parent's table.
    if table::get(fd).is_none() || crate::in_vfork_child() {
        return;
    }
    if let Some(g) = table::remove(fd) {
        if let Entry::Conn(c) = &*g
            && c.drop_alias()
        {
            c.close(fd);
        }
        drop(g);
    }
}

/// `new` now names what `old` names (after a successful dup).
fn alias_fd(old: c_int, new: c_int) {
    if new < 0 || old == new {
        return;
    }
    if (table::get(old).is_some() || table::get(new).is_some()) && crate::in_vfork_child() {
        return;
    }
    match table::get(old) {
        Some(g) => {
            if let Entry::Conn(c) = &*g {
                c.add_alias();
            }
            table::alias(new, &g);
        }
        None => drop(table::remove(new)),
    }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget_fd(fd);
    // SAFETY: passthrough.
    unsafe { real::close(fd) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: passthrough.
    let r = unsafe { real::dup(fd) };
    alias_fd(fd, r);
    r
}

/// Whether `fd` is an open descriptor.
fn is_open(fd: c_int) -> bool {
    // SAFETY: borrowed for one call.
    rustix::io::fcntl_getfd(unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) }).is_ok()
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: passthrough.
    dup_onto(old, new, || unsafe { real::dup2(old, new) })
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: passthrough.
    dup_onto(old, new, || unsafe { real::dup3(old, new, flags) })
}

/// dup2/dup3: `new` is closed first, unless the call would fail; then it
/// names what `old` names. The fcntl probe only for a `new` we track.
fn dup_onto(old: c_int, new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if old != new && table::get(new).is_some() && is_open(old) {
        forget_fd(new);
    }
    let r = call();
    if r >= 0 {
        alias_fd(old, r);
    }
    r
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    // CLOSE_RANGE_CLOEXEC only marks descriptors; nothing closes now.
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && first <= last {
        for fd in table::fds_in(first, last) {
            forget_fd(fd);
        }
    }
    // SAFETY: passthrough.
    unsafe { real::close_range(first, last, flags) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    if let Ok(first) = u32::try_from(low) {
        for fd in table::fds_in(first, u32::MAX) {
            forget_fd(fd);
        }
    }
    // SAFETY: passthrough.
    unsafe { real::closefrom(low) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if let Some(c) = accel(fd)
        && let Some(r) = c.shutdown(fd, how)
    {
        return match r {
            Ok(()) => 0,
            Err(e) => fail(e),
        };
    }
    // SAFETY: passthrough.
    unsafe { real::shutdown(fd, how) }
}

// ------------------------------------------------------------------ receive

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    // read(2) of 0 bytes returns 0 at once on a socket (recv(2) waits):
    // the kernel answers that one.
    if n > 0
        // SAFETY: the caller's buffer.
        && let Some(r) = unsafe { recv_one(fd, buf, n, 0) }
    {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::read(fd, buf, n) }
}

/// # Safety
/// libc contract (fortified read).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n <= buflen
        && n > 0
        // SAFETY: the caller's buffer, n <= its size.
        && let Some(r) = unsafe { recv_one(fd, buf, n, 0) }
    {
        return r;
    }
    // SAFETY: passthrough (aborts on overflow as glibc does).
    unsafe { real::__read_chk(fd, buf, n, buflen) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { recv_one(fd, buf, n, flags) } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::recv(fd, buf, n, flags) }
}

/// # Safety
/// libc contract (fortified recv).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n <= buflen
        // SAFETY: the caller's buffer, n <= its size.
        && let Some(r) = unsafe { recv_one(fd, buf, n, flags) }
    {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::__recv_chk(fd, buf, n, buflen, flags) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { recv_one(fd, buf, n, flags) } {
        if r > 0 {
            // SAFETY: the caller's address buffer.
            unsafe { peer_addr_out(fd, addr, alen) };
        } else if r == 0 && !addr.is_null() && !alen.is_null() {
            // The kernel names the sender of the bytes read: none at EOF.
            // SAFETY: checked non-null.
            unsafe { *alen = 0 };
        }
        return r;
    }
    // SAFETY: passthrough.
    let r = unsafe { real::recvfrom(fd, buf, n, flags, addr, alen) };
    if r >= 0 && !addr.is_null() && !alen.is_null() {
        hide_marker_in(addr, alen);
    }
    r
}

/// A plain connection's peer may still be a marked tsss client whose
/// server went plain: hide the marker there too.
fn hide_marker_in(addr: *mut sockaddr, alen: *mut socklen_t) {
    if config::disabled() {
        return;
    }
    // SAFETY: the kernel filled min(*alen, cap) bytes; sockaddr_storage
    // copies at most its size, and we read no more than the kernel reported.
    unsafe {
        let len = *alen;
        if len as usize <= SUN_OFF || (*addr).sa_family != libc::AF_UNIX as libc::sa_family_t {
            return;
        }
        let mut ss: libc::sockaddr_storage = core::mem::zeroed();
        let n = (len as usize).min(core::mem::size_of::<libc::sockaddr_storage>());
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

/// # Safety
/// libc contract (fortified recvfrom).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: passthrough; glibc aborts.
        return unsafe { real::__recvfrom_chk(fd, buf, n, buflen, flags, addr, alen) };
    }
    // SAFETY: forwarded.
    unsafe { recvfrom(fd, buf, n, flags, addr, alen) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    // readv of 0 bytes returns 0 at once on a socket: the kernel answers it.
    if let Some(c) = accel(fd)
        // SAFETY: the caller's iovecs.
        && let Some(Some(r)) = unsafe {
            with_iov_mut(iov, cnt, |b| {
                if b.iter().all(|s| s.is_empty()) {
                    None
                } else {
                    c.recv(fd, b, RecvOpts::default())
                }
            })
        }
    {
        return ssize(r);
    }
    // SAFETY: passthrough.
    unsafe { real::readv(fd, iov, cnt) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    if !msg.is_null()
        && let Some(c) = accel(fd)
    {
        // SAFETY: msg is a valid msghdr per the caller.
        let m = unsafe { &mut *msg };
        if !m.msg_control.is_null() && m.msg_controllen > 0 {
            let nb = flags & libc::MSG_DONTWAIT != 0;
            let peek = flags & libc::MSG_PEEK != 0;
            let ctl_len = m.msg_controllen;
            // SAFETY: the caller's message, passed on with fewer data bytes.
            let plain = c.recv_plain_with(fd, nb, peek, |max| unsafe {
                recvmsg_capped(fd, msg, flags, max)
            });
            match plain {
                // The last plain bytes, no control data: the kernel's call
                // would go on into what now travels over the ring.
                Some((Ok(n), true)) if n > 0 && m.msg_controllen == 0 => {
                    // SAFETY: the caller's message.
                    return unsafe { recvmsg_more(&c, fd, msg, flags, n, ctl_len) } as ssize_t;
                }
                Some((r, _)) => return ssize(r),
                None => {}
            }
        }
        let (ctl, ctl_len) = (m.msg_control, m.msg_controllen);
        let (iov, iovlen) = (m.msg_iov, m.msg_iovlen);
        // What the kernel reported for a carrier taken on the way.
        let mut got: (usize, c_int) = (0, 0);
        let mut carrier = |peek: bool| {
            let mut byte = [0u8];
            let mut one = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            // SAFETY: msghdr is plain old data.
            let mut m2: libc::msghdr = unsafe { std::mem::zeroed() };
            m2.msg_iov = &mut one;
            m2.msg_iovlen = 1;
            m2.msg_control = ctl;
            m2.msg_controllen = if ctl.is_null() { 0 } else { ctl_len };
            let fl = libc::MSG_DONTWAIT
                | (flags & libc::MSG_CMSG_CLOEXEC)
                | if peek { libc::MSG_PEEK } else { 0 };
            // SAFETY: our one-byte buffer and the caller's control buffer;
            // the kernel fills in descriptors and MSG_CTRUNC itself.
            match unsafe { real::recvmsg(fd, &mut m2, fl) } {
                1 if byte[0] == CARRIER => {
                    got = (m2.msg_controllen, m2.msg_flags & libc::MSG_CTRUNC);
                    Ok(true)
                }
                1 if byte[0] == 0 => Ok(false),
                r if r < 0 => Err(Errno::from_raw_os_error(errno())),
                _ => Err(Errno::IO),
            }
        };
        // SAFETY: the caller's iovecs.
        if let Some(Some(r)) = unsafe {
            with_iov_mut(iov, iovlen as c_int, |b| {
                c.recv_with(fd, &mut carrier, b, recv_opts(flags))
            })
        } {
            if r.is_ok() {
                // Control data only if the read reached a message with it.
                m.msg_controllen = got.0;
                // The kernel echoes MSG_CMSG_CLOEXEC in msg_flags.
                m.msg_flags = got.1 | (flags & libc::MSG_CMSG_CLOEXEC);
                let mut nl = m.msg_namelen;
                // A zero-length read names the sender only if there are
                // bytes (a 0 at EOF names nobody).
                // SAFETY: the caller's iovecs.
                let asked = !unsafe { iov_total_is_zero(iov, iovlen as c_int) }
                    || c.bytes_readable(fd).is_some_and(|n| n == 0);
                if r != Ok(0) || !asked {
                    // SAFETY: msg_name/msg_namelen as the caller gave them.
                    unsafe { peer_addr_out(fd, m.msg_name.cast(), &mut nl) };
                }
                // No sender at EOF: the kernel reports no name.
                m.msg_namelen = if m.msg_name.is_null() || (r == Ok(0) && asked) {
                    0
                } else {
                    nl
                };
            }
            return ssize(r);
        }
    }
    // SAFETY: passthrough.
    let r = unsafe { real::recvmsg(fd, msg, flags) };
    if r >= 0 && !msg.is_null() {
        // SAFETY: valid msghdr.
        let m = unsafe { &mut *msg };
        if !m.msg_name.is_null() {
            hide_marker_in(m.msg_name.cast(), &mut m.msg_namelen);
        }
    }
    r
}

/// The caller's buffers from byte `skip` on, at most `max` bytes of them.
///
/// # Safety
/// `m`'s iovec array is valid.
unsafe fn iov_window(m: &libc::msghdr, mut skip: usize, mut max: usize) -> Vec<libc::iovec> {
    let iovs = if m.msg_iov.is_null() || m.msg_iovlen == 0 {
        &[][..]
    } else {
        // SAFETY: per the caller.
        unsafe { std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen) }
    };
    let mut out = Vec::with_capacity(iovs.len());
    for v in iovs {
        let s = skip.min(v.iov_len);
        skip -= s;
        let l = (v.iov_len - s).min(max);
        if l > 0 {
            out.push(libc::iovec {
                // SAFETY: within the caller's buffer.
                iov_base: unsafe { v.iov_base.cast::<u8>().add(s) }.cast(),
                iov_len: l,
            });
            max -= l;
        }
    }
    out
}

/// After `got` plain bytes that ended at the switch point: reads on from
/// the ring into the rest of the caller's buffers without waiting, with
/// the caller's control buffer. Returns the total.
///
/// # Safety
/// `msg` is a valid msghdr, as for recvmsg.
unsafe fn recvmsg_more(
    c: &Conn,
    fd: c_int,
    msg: *mut libc::msghdr,
    flags: c_int,
    got: usize,
    ctl_len: usize,
) -> usize {
    // SAFETY: per the caller.
    let m = unsafe { &mut *msg };
    // SAFETY: the caller's iovecs.
    let mut rest = unsafe { iov_window(m, got, usize::MAX) };
    if rest.is_empty() {
        return got;
    }
    if flags & libc::MSG_PEEK != 0 {
        // SAFETY: the rest of the caller's buffers.
        let more = unsafe {
            with_iov_mut(rest.as_ptr(), rest.len() as c_int, |b| {
                c.peek_past_switch(got, b)
            })
        };
        return got + more.unwrap_or(0);
    }
    let mut m2 = *m;
    m2.msg_iov = rest.as_mut_ptr();
    m2.msg_iovlen = rest.len();
    m2.msg_name = std::ptr::null_mut();
    m2.msg_namelen = 0;
    m2.msg_controllen = ctl_len;
    let e = errno();
    // SAFETY: our own override, on a copy of the caller's message: now in
    // the ring phase, it takes the ring path. It must not wait: the kernel
    // returns what it has.
    let r = unsafe { recvmsg(fd, &mut m2, flags | libc::MSG_DONTWAIT) };
    set_errno(e);
    if r <= 0 {
        return got;
    }
    m.msg_controllen = m2.msg_controllen;
    m.msg_flags = m2.msg_flags;
    got + r as usize
}

/// The real recvmsg with the data capped at `max` bytes (the rest of the
/// message as the caller gave it, control buffer included).
///
/// # Safety
/// `msg` is a valid msghdr, as for recvmsg.
unsafe fn recvmsg_capped(
    fd: c_int,
    msg: *mut libc::msghdr,
    flags: c_int,
    max: usize,
) -> Result<usize, Errno> {
    // SAFETY: per the caller.
    let m = unsafe { &mut *msg };
    // SAFETY: the caller's iovecs.
    let mut capped = unsafe { iov_window(m, 0, max) };
    let mut m2 = *m;
    m2.msg_iov = capped.as_mut_ptr();
    m2.msg_iovlen = capped.len();
    // SAFETY: a copy of the caller's message with a shorter iovec list.
    let r = unsafe { real::recvmsg(fd, &mut m2, flags) };
    if r < 0 {
        return Err(Errno::from_raw_os_error(errno()));
    }
    m.msg_controllen = m2.msg_controllen;
    m.msg_flags = m2.msg_flags;
    m.msg_namelen = m2.msg_namelen;
    if !m.msg_name.is_null() {
        hide_marker_in(m.msg_name.cast(), &mut m.msg_namelen);
    }
    Ok(r as usize)
}

// ------------------------------------------------------------------ send

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { send_one(fd, buf, n, 0) } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::write(fd, buf, n) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    // SAFETY: the caller's buffer.
    if let Some(r) = unsafe { send_one(fd, buf, n, flags) } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::send(fd, buf, n, flags) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    // With an address the kernel answers EISCONN without sending.
    if addr.is_null()
        // SAFETY: the caller's buffer.
        && let Some(r) = unsafe { send_one(fd, buf, n, flags) }
    {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::sendto(fd, buf, n, flags, addr, alen) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    // SAFETY: the caller's iovecs.
    if unsafe { iov_total_is_zero(iov, cnt) } && accel(fd).is_some() {
        // The kernel's writev returns 0 before the socket sees it.
        return 0;
    }
    if let Some(c) = accel(fd)
        // SAFETY: the caller's iovecs.
        && let Some(Some(r)) = unsafe { with_iov(iov, cnt, |b| c.send(fd, b, SendOpts::default())) }
    {
        return ssize(r);
    }
    // SAFETY: passthrough.
    unsafe { real::writev(fd, iov, cnt) }
}

/// A valid iovec array (0..=IOV_MAX entries) whose lengths are all zero.
///
/// # Safety
/// `iov` points to `cnt` iovecs when `cnt` is in range.
unsafe fn iov_total_is_zero(iov: *const libc::iovec, cnt: c_int) -> bool {
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

/// Whether every control message is SCM_CREDENTIALS.
///
/// # Safety
/// `m` is a valid msghdr with a readable control buffer.
unsafe fn only_credentials(m: &libc::msghdr) -> bool {
    // SAFETY: CMSG_* walk the caller's control buffer within its length.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(m) };
    let mut any = false;
    while !c.is_null() {
        // SAFETY: a header inside the buffer, per CMSG_FIRSTHDR/NXTHDR.
        let h = unsafe { &*c };
        if h.cmsg_level != libc::SOL_SOCKET || h.cmsg_type != libc::SCM_CREDENTIALS {
            return false;
        }
        any = true;
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(m, c) };
    }
    any
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    if !msg.is_null()
        && let Some(c) = accel(fd)
    {
        // SAFETY: valid msghdr per the caller.
        let m = unsafe { &*msg };
        if m.msg_name.is_null() || m.msg_namelen == 0 {
            if m.msg_controllen > 0 {
                // While our direction is a plain socket, the whole message
                // goes there; after the switch the data takes the ring and
                // the control messages a one-byte carrier on the socket.
                // SAFETY: passthrough of the caller's message.
                let f = || match unsafe { real::sendmsg(fd, msg, flags) } {
                    n if n >= 0 => Ok(n as usize),
                    _ => Err(Errno::from_raw_os_error(errno())),
                };
                if let Some(r) = c.send_plain_with(f) {
                    return ssize(r);
                }
                let mut carrier = || {
                    let mut byte = [CARRIER];
                    let mut iov = libc::iovec {
                        iov_base: byte.as_mut_ptr().cast(),
                        iov_len: 1,
                    };
                    let mut m2 = *m;
                    m2.msg_name = std::ptr::null_mut();
                    m2.msg_namelen = 0;
                    m2.msg_iov = &mut iov;
                    m2.msg_iovlen = 1;
                    let fl = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                    // SAFETY: the caller's control messages with our one byte.
                    match unsafe { real::sendmsg(fd, &m2, fl) } {
                        1 => Ok(()),
                        r if r < 0 => Err(Errno::from_raw_os_error(errno())),
                        _ => Err(Errno::IO),
                    }
                };
                let o = SendOpts {
                    // SAFETY: the caller's message.
                    creds_only: unsafe { only_credentials(m) },
                    ..send_opts(flags)
                };
                // SAFETY: the caller's iovecs.
                if let Some(Some(r)) = unsafe {
                    with_iov(m.msg_iov, m.msg_iovlen as c_int, |b| {
                        c.send_with(fd, Some(&mut carrier), b, o)
                    })
                } {
                    return ssize(r);
                }
            }
            // SAFETY: the caller's iovecs.
            if let Some(Some(r)) = unsafe {
                with_iov(m.msg_iov, m.msg_iovlen as c_int, |b| {
                    c.send(fd, b, send_opts(flags))
                })
            } {
                return ssize(r);
            }
        }
    }
    // SAFETY: passthrough.
    unsafe { real::sendmsg(fd, msg, flags) }
}

// ------------------------------------------------------------------ file to socket

/// sendfile/splice into `out`: the real call while our direction is still
/// a plain socket (its bytes counted), else file to ring in one copy.
///
/// # Safety
/// `real_call` performs the caller's call with the caller's arguments.
unsafe fn send_from_fd(
    out: c_int,
    inp: c_int,
    off: *mut i64,
    n: size_t,
    nonblock: bool,
    real_call: impl FnOnce() -> ssize_t,
) -> Option<ssize_t> {
    let c = accel(out)?;
    let mut real_call = Some(real_call);
    let plain = c.send_plain_with(|| match real_call.take().map(|f| f()) {
        Some(r) if r >= 0 => Ok(r as usize),
        _ => Err(Errno::from_raw_os_error(errno())),
    });
    if let Some(r) = plain {
        return Some(ssize(r));
    }
    // SAFETY: off is null or the caller's valid offset.
    let off = unsafe { off.as_mut() };
    c.send_from_fd(out, inp, off, n, nonblock).map(ssize)
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out: c_int,
    inp: c_int,
    off: *mut libc::off_t,
    n: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { send_from_fd(out, inp, off, n, false, || real::sendfile(out, inp, off, n)) };
    if let Some(r) = r {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::sendfile(out, inp, off, n) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out: c_int,
    inp: c_int,
    off: *mut libc::off64_t,
    n: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    if let Some(r) = unsafe {
        send_from_fd(out, inp, off, n, false, || {
            real::sendfile64(out, inp, off, n)
        })
    } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::sendfile64(out, inp, off, n) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn splice(
    fin: c_int,
    offin: *mut libc::loff_t,
    fout: c_int,
    offout: *mut libc::loff_t,
    n: size_t,
    flags: libc::c_uint,
) -> ssize_t {
    let nonblock = flags & libc::SPLICE_F_NONBLOCK != 0;
    // Into an accelerated socket (from a pipe).
    if offout.is_null()
        // SAFETY: the caller's arguments, passed on.
        && let Some(r) = unsafe {
            send_from_fd(fout, fin, offin, n, nonblock, || real::splice(fin, offin, fout, offout, n, flags))
        }
    {
        return r;
    }
    // Out of an accelerated socket (into a pipe): peek, write, then consume
    // exactly what the pipe took, so a full pipe loses nothing.
    if offin.is_null()
        && n > 0
        && let Some(c) = accel(fin)
    {
        let mut buf = vec![0u8; n.min(1 << 16)];
        let peek = RecvOpts {
            peek: true,
            dontwait: nonblock,
            ..RecvOpts::default()
        };
        if let Some(r) = c.recv(fin, &mut [IoSliceMut::new(&mut buf)], peek) {
            let got = match r {
                Ok(0) => return 0,
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            // SAFETY: buf holds `got` initialised bytes.
            let w = unsafe { real::write(fout, buf.as_ptr().cast(), got) };
            if w <= 0 {
                return w;
            }
            let take = RecvOpts {
                dontwait: true,
                ..RecvOpts::default()
            };
            let _ = c.recv(fin, &mut [IoSliceMut::new(&mut buf[..w as usize])], take);
            return w;
        }
    }
    // SAFETY: passthrough.
    unsafe { real::splice(fin, offin, fout, offout, n, flags) }
}

// ------------------------------------------------------------------ control

/// # Safety
/// libc contract; the variadic argument is read as one integer/pointer,
/// which is ABI-compatible on x86_64 and aarch64.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: passthrough.
    let r = unsafe { real::fcntl(fd, cmd, arg) };
    after_fcntl(fd, cmd, arg, r);
    r
}

/// # Safety
/// As [`fcntl`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: passthrough.
    let r = unsafe { real::fcntl64(fd, cmd, arg) };
    after_fcntl(fd, cmd, arg, r);
    r
}

fn after_fcntl(fd: c_int, cmd: c_int, arg: c_ulong, r: c_int) {
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        alias_fd(fd, r);
        return;
    }
    if r != -1
        && cmd == libc::F_SETFL
        && let Some(c) = accel(fd)
    {
        c.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0);
    }
}

/// # Safety
/// libc contract (see [`fcntl`] on the variadic argument).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    if let Some(c) = accel(fd) {
        match req {
            libc::FIONREAD | libc::TIOCOUTQ => {
                let n = if req == libc::FIONREAD {
                    c.bytes_readable(fd)
                } else {
                    c.bytes_unread_by_peer(fd)
                };
                if let Some(n) = n {
                    if arg.is_null() {
                        return fail(Errno::FAULT);
                    }
                    // SAFETY: FIONREAD's and SIOCOUTQ's argument is an int*.
                    unsafe { *(arg as *mut c_int) = n.min(c_int::MAX as usize) as c_int };
                    return 0;
                }
            }
            libc::FIONBIO => {
                // SAFETY: passthrough.
                let r = unsafe { real::ioctl(fd, req, arg) };
                if r == 0 && !arg.is_null() {
                    // SAFETY: FIONBIO's argument is an int*.
                    c.set_nonblocking(unsafe { *(arg as *const c_int) } != 0);
                }
                return r;
            }
            _ => {}
        }
    }
    // SAFETY: passthrough.
    unsafe { real::ioctl(fd, req, arg) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if level == libc::SOL_SOCKET
        && name == libc::SO_ERROR
        && !val.is_null()
        && !len.is_null()
        // SAFETY: len is valid per the contract.
        && unsafe { *len } as usize >= core::mem::size_of::<c_int>()
        && let Some(c) = accel(fd)
        && let Some(e) = c.take_error(fd)
    {
        // SAFETY: val holds at least an int.
        unsafe {
            *(val as *mut c_int) = e;
            *len = core::mem::size_of::<c_int>() as socklen_t;
        }
        return 0;
    }
    // SAFETY: passthrough.
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    v: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
) -> c_int {
    if v.is_null() || accel(fd).is_none() {
        // SAFETY: passthrough.
        return unsafe { real::sendmmsg(fd, v, n, flags) };
    }
    // One message at a time through sendmsg, as the kernel does. A failure
    // after the first message is not reported: errno as it was.
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
                return -1;
            }
            break;
        }
        m.msg_len = r as libc::c_uint;
        done += 1;
    }
    set_errno(saved);
    done as c_int
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    v: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
    t: *mut libc::timespec,
) -> c_int {
    if v.is_null() || accel(fd).is_none() {
        // SAFETY: passthrough.
        return unsafe { real::recvmmsg(fd, v, n, flags, t) };
    }
    // One message at a time through recvmsg; after the first, only what is
    // already there (MSG_WAITFORONE), or until the timeout's deadline.
    let deadline = if t.is_null() {
        None
    } else {
        // SAFETY: a valid timespec per the contract.
        let ts = unsafe { &*t };
        Some(tsss_core::sys::now_ns() + ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
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
                return -1;
            }
            break;
        }
        m.msg_len = r as libc::c_uint;
        done += 1;
        if r == 0 || deadline.is_some_and(|d| tsss_core::sys::now_ns() >= d) {
            break;
        }
        if flags & libc::MSG_WAITFORONE != 0 {
            fl |= libc::MSG_DONTWAIT;
        }
    }
    set_errno(saved);
    done as c_int
}

// ------------------------------------------------------------------ readiness

fn is_conn(fd: RawFd) -> bool {
    fd >= 0 && table::get(fd).is_some_and(|g| matches!(&*g, Entry::Conn(_)))
}

/// Emulated poll if `fds` holds an accelerated fd; `None` otherwise.
///
/// # Safety
/// `fds` is null or valid for `n` entries; `mask` null or valid.
unsafe fn poll_emulated(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    if config::disabled() || fds.is_null() || n == 0 {
        return None;
    }
    // SAFETY: the caller's array of n pollfds.
    let s = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    if !s.iter().any(|p| is_conn(p.fd)) {
        return None;
    }
    let saved = errno();
    // SAFETY: null or a valid sigset per the caller.
    let mask = unsafe { mask.as_ref() };
    Some(match readiness::poll(&Shim, s, timeout, mask) {
        Ok(k) => {
            set_errno(saved);
            k as c_int
        }
        Err(e) => fail(e),
    })
}

/// Milliseconds from a timespec, rounded up; -1 for null; None if invalid.
///
/// # Safety
/// `t` null or valid.
unsafe fn ts_ms(t: *const libc::timespec) -> Option<c_int> {
    // SAFETY: per the caller.
    let Some(t) = (unsafe { t.as_ref() }) else {
        return Some(-1);
    };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return None;
    }
    Some(
        (t.tv_sec * 1000 + (t.tv_nsec as u64).div_ceil(1_000_000) as i64).min(i32::MAX as i64)
            as c_int,
    )
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    // SAFETY: forwarded.
    if let Some(r) = unsafe { poll_emulated(fds, n, timeout, std::ptr::null()) } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::poll(fds, n, timeout) }
}

/// # Safety
/// libc contract (fortified poll).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if (n as usize).saturating_mul(core::mem::size_of::<libc::pollfd>()) <= fdslen
        // SAFETY: forwarded, array size checked.
        && let Some(r) = unsafe { poll_emulated(fds, n, timeout, std::ptr::null()) }
    {
        return r;
    }
    // SAFETY: passthrough (aborts on overflow).
    unsafe { real::__poll_chk(fds, n, timeout, fdslen) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    t: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: t null or valid.
    if let Some(ms) = unsafe { ts_ms(t) }
        // SAFETY: forwarded.
        && let Some(r) = unsafe { poll_emulated(fds, n, ms, mask) }
    {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::ppoll(fds, n, t, mask) }
}

/// # Safety
/// libc contract (fortified ppoll).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    t: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: size_t,
) -> c_int {
    if (n as usize).saturating_mul(core::mem::size_of::<libc::pollfd>()) <= fdslen {
        // SAFETY: forwarded, array size checked.
        return unsafe { ppoll(fds, n, t, mask) };
    }
    // SAFETY: passthrough (aborts).
    unsafe { real::__ppoll_chk(fds, n, t, mask, fdslen) }
}

/// Emulated select if the sets hold an accelerated fd; `None` otherwise.
/// `timeout_ms` -1 for none; `left_us` receives the time not slept.
///
/// # Safety
/// Sets null or valid fd_sets; `mask` null or valid.
unsafe fn select_emulated(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    timeout_ms: c_int,
    mask: *const libc::sigset_t,
    left_us: &mut u64,
) -> Option<c_int> {
    if config::disabled() || nfds <= 0 || nfds > libc::FD_SETSIZE as c_int {
        return None;
    }
    let any = (0..nfds).any(|fd| {
        sets.iter().any(|s| {
            // SAFETY: non-null sets are valid fd_sets; fd < FD_SETSIZE.
            !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) }
        }) && is_conn(fd)
    });
    if !any {
        return None;
    }
    let start = tsss_core::sys::now_ns();
    let saved = errno();
    // SAFETY: each non-null pointer is a valid, exclusively borrowed fd_set.
    let refs = unsafe { [sets[0].as_mut(), sets[1].as_mut(), sets[2].as_mut()] };
    // SAFETY: null or valid sigset.
    let res = readiness::select(&Shim, nfds, refs, timeout_ms, unsafe { mask.as_ref() });
    let spent = (tsss_core::sys::now_ns() - start) / 1000;
    *left_us = (timeout_ms.max(0) as u64 * 1000).saturating_sub(spent);
    Some(match res {
        Ok(k) => {
            set_errno(saved);
            k as c_int
        }
        Err(e) => fail(e),
    })
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    // SAFETY: tv null or valid.
    let timeout_ms = match unsafe { tv.as_ref() } {
        None => Some(-1),
        Some(t) if t.tv_sec < 0 || !(0..1_000_000).contains(&t.tv_usec) => None,
        Some(t) => Some(
            (t.tv_sec * 1000 + (t.tv_usec as u64).div_ceil(1000) as i64).min(i32::MAX as i64)
                as c_int,
        ),
    };
    let mut left = 0;
    if let Some(ms) = timeout_ms
        // SAFETY: forwarded.
        && let Some(res) = unsafe { select_emulated(nfds, [r, w, e], ms, std::ptr::null(), &mut left) }
    {
        if !tv.is_null() && ms >= 0 {
            // Linux writes back the time not slept.
            // SAFETY: non-null timeval.
            unsafe {
                (*tv).tv_sec = (left / 1_000_000) as libc::time_t;
                (*tv).tv_usec = (left % 1_000_000) as libc::suseconds_t;
            }
        }
        return res;
    }
    // SAFETY: passthrough.
    unsafe { real::select(nfds, r, w, e, tv) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    t: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let mut left = 0;
    // SAFETY: t null or valid.
    if let Some(ms) = unsafe { ts_ms(t) }
        // SAFETY: forwarded.
        && let Some(res) = unsafe { select_emulated(nfds, [r, w, e], ms, mask, &mut left) }
    {
        return res;
    }
    // SAFETY: passthrough.
    unsafe { real::pselect(nfds, r, w, e, t, mask) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: passthrough.
    let fd = unsafe { real::epoll_create(size) };
    if fd >= 0 {
        drop(table::remove(fd));
    }
    fd
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: passthrough.
    let fd = unsafe { real::epoll_create1(flags) };
    if fd >= 0 {
        drop(table::remove(fd));
    }
    fd
}

fn epoll_set(epfd: RawFd) -> Option<table::Guard> {
    table::get(epfd).filter(|g| matches!(&**g, Entry::Epoll(_)))
}

static EPOLL_CREATE: Mutex<()> = Mutex::new(());

/// `epfd`'s emulated set, created if it has none. ENOMEM if it cannot be
/// recorded: the caller must not hand an accelerated fd to the kernel's
/// epoll instead. The lock is held in a signal section, as the table's
/// free list is: a handler's epoll_ctl would wait for its own thread.
fn epoll_set_or_create(epfd: RawFd) -> Result<table::Guard, Errno> {
    let _section = tsss_core::signals::Critical::enter();
    let _l = EPOLL_CREATE.lock().unwrap_or_else(|p| p.into_inner());
    match epoll_set(epfd) {
        Some(g) => Ok(g),
        None => table::insert(epfd, Entry::Epoll(EpollSet::new(epfd)?)).ok_or(Errno::NOMEM),
    }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> c_int {
    if op == libc::EPOLL_CTL_ADD
        && !config::disabled()
        && let Some(h) = usize::try_from(fd).ok().and_then(|i| EPOLL_HINT.get(i))
    {
        h.store(epfd + 1, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: forwarded.
    match unsafe { epoll_ctl_inner(epfd, op, fd, ev) } {
        Some(Ok(())) => 0,
        Some(Err(e)) => fail(e),
        // SAFETY: passthrough.
        None => unsafe { real::epoll_ctl(epfd, op, fd, ev) },
    }
}

/// # Safety
/// As epoll_ctl.
unsafe fn epoll_ctl_inner(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> Option<Result<(), Errno>> {
    if config::disabled() {
        return None;
    }
    let (events, data) = if ev.is_null() {
        (0, 0)
    } else {
        // SAFETY: epoll_event is packed; read it unaligned.
        let e = unsafe { std::ptr::read_unaligned(ev) };
        (e.events, e.u64)
    };
    let set = epoll_set(epfd);
    let Some(conn) = accel(fd) else {
        // Not (or no longer) accelerated, but maybe still watched by us.
        let g = set?;
        let Entry::Epoll(s) = &*g else { return None };
        if !s.contains(fd) {
            return None;
        }
        return Some(match op {
            libc::EPOLL_CTL_ADD => Err(Errno::EXIST),
            libc::EPOLL_CTL_DEL => {
                s.remove(fd);
                Ok(())
            }
            _ => {
                s.remove(fd);
                tsss_core::sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events, data)
            }
        });
    };
    if op != libc::EPOLL_CTL_DEL && ev.is_null() {
        return Some(Err(Errno::FAULT));
    }
    if epfd == fd {
        return Some(Err(Errno::INVAL));
    }
    let g = match set {
        Some(g) => g,
        None => {
            if op != libc::EPOLL_CTL_ADD {
                // Registered with the kernel before it was accelerated.
                return (op == libc::EPOLL_CTL_MOD)
                    .then(|| migrate(epfd, fd, conn, events, data))
                    .or(None);
            }
            match epoll_set_or_create(epfd) {
                Ok(g) => g,
                Err(e) => return Some(Err(e)),
            }
        }
    };
    let Entry::Epoll(s) = &*g else { return None };
    if op != libc::EPOLL_CTL_ADD && !s.contains(fd) {
        if op == libc::EPOLL_CTL_DEL {
            return None;
        }
        drop(g);
        return Some(migrate(epfd, fd, conn, events, data));
    }
    Some(s.ctl(op, fd, conn, events, data))
}

/// The epoll (+1) each fd was last added to, whatever it was then: a socket
/// added before it connected is registered on the bare socket, where ring
/// data never shows; connect moves it into our emulation (nginx does this
/// for its upstreams). Only a hint: the kernel's fdinfo is read to confirm.
static EPOLL_HINT: [std::sync::atomic::AtomicI32; 65536] =
    [const { std::sync::atomic::AtomicI32::new(0) }; 65536];

/// After `fd` became a connection: if the program had added it to an epoll
/// before, move that registration into our emulation.
fn adopt_epoll_registration(fd: c_int) {
    let Some(h) = usize::try_from(fd).ok().and_then(|i| EPOLL_HINT.get(i)) else {
        return;
    };
    let epfd = h.swap(0, std::sync::atomic::Ordering::Relaxed) - 1;
    if epfd < 0 {
        return;
    }
    let Ok(path) = std::ffi::CString::new(format!("/proc/self/fdinfo/{epfd}")) else {
        return;
    };
    let Ok(text) = tsss_core::sys::read_small_file(&path) else {
        return;
    };
    let Some((events, data)) = readiness::epoll_registration(&String::from_utf8_lossy(&text), fd)
    else {
        return;
    };
    let Some(c) = table::get(fd).and_then(ConnRef::new) else {
        return;
    };
    match migrate(epfd, fd, c, events, data) {
        Ok(()) => log!(
            DEBUG,
            "fd {fd}: its epoll {epfd} registration moved to the emulation"
        ),
        Err(e) => log!(
            INFO,
            "fd {fd}: cannot move its epoll {epfd} registration: {e}"
        ),
    }
}

/// Moves an fd registered in the kernel's epoll before it was accelerated
/// into our emulation (on the application's next EPOLL_CTL_MOD, or at
/// connect).
fn migrate(epfd: c_int, fd: c_int, conn: ConnRef, events: u32, data: u64) -> Result<(), Errno> {
    tsss_core::sys::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)?;
    let g = epoll_set_or_create(epfd)?;
    let Entry::Epoll(s) = &*g else {
        return Err(Errno::INVAL);
    };
    s.ctl(libc::EPOLL_CTL_ADD, fd, conn, events, data)
}

/// Emulated epoll_wait if `epfd` watches accelerated fds; `None` otherwise.
/// `mask` is installed only while the kernel waits (epoll_pwait).
///
/// # Safety
/// `evs` valid for `max` events; `mask` null or valid.
unsafe fn epoll_emulated(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    if config::disabled() || max <= 0 || evs.is_null() {
        return None;
    }
    let g = epoll_set(epfd)?;
    let Entry::Epoll(s) = &*g else { return None };
    // SAFETY: the caller's array of max events.
    let out = unsafe { std::slice::from_raw_parts_mut(evs, max as usize) };
    let saved = errno();
    let mut real_wait = |buf: &mut [libc::epoll_event], t: c_int| {
        // SAFETY: a sub-slice of the caller's array; mask null or valid.
        let r = unsafe { real::epoll_pwait(epfd, buf.as_mut_ptr(), buf.len() as c_int, t, mask) };
        if r < 0 {
            Err(Errno::from_raw_os_error(errno()))
        } else {
            Ok(r as usize)
        }
    };
    Some(match s.wait(&Shim, out, timeout, &mut real_wait) {
        Ok(n) => {
            set_errno(saved);
            n as c_int
        }
        Err(e) => fail(e),
    })
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: forwarded.
    if let Some(r) = unsafe { epoll_emulated(epfd, evs, max, timeout, std::ptr::null()) } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::epoll_wait(epfd, evs, max, timeout) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: forwarded.
    if let Some(r) = unsafe { epoll_emulated(epfd, evs, max, timeout, mask) } {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::epoll_pwait(epfd, evs, max, timeout, mask) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    t: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: t null or valid.
    if let Some(ms) = unsafe { ts_ms(t) }
        // SAFETY: forwarded.
        && let Some(r) = unsafe { epoll_emulated(epfd, evs, max, ms, mask) }
    {
        return r;
    }
    // SAFETY: passthrough.
    unsafe { real::epoll_pwait2(epfd, evs, max, t, mask) }
}
