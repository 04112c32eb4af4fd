//! socket, connect, accept: where a connection gets its marker (client)
//! or its offer (server), and the names that must hide the marker.

use super::addr::{copy_out, is_marker, name_hidden, storage};
use crate::abi::{self, errno, set_errno};
use crate::real;
use crate::table::{self, Entry};
use libc::{c_int, sockaddr, socklen_t};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tsss_core::conn::{Conn, Role, offers, plain_from_start};
use tsss_core::log::{DEBUG, INFO};
use tsss_core::registry::{self, Event};
use tsss_core::{log, wire};

hook! {
    fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
        // SAFETY: the caller's arguments.
        let fd = unsafe { real::socket(domain, ty, proto) };
        if fd >= 0 {
            // A stale entry means the fd was closed behind our back.
            drop(table::remove(fd));
        }
        Done(fd)
    }
}

/// Binds an AF_UNIX stream socket to a fresh marker address: `Ok` if it
/// carries the marker now (or still, from an earlier connect that
/// failed); `Err(why)` if it stays plain. Costs one bind; getsockname
/// only for a socket bound already.
fn mark(fd: BorrowedFd<'_>, raw: c_int) -> Result<(), &'static str> {
    let addr = marker_addr().ok_or("cannot make a marker address")?;
    match rustix::net::bind(fd, &addr) {
        Ok(()) => return Ok(()),
        Err(Errno::INVAL) => {}
        Err(e) => {
            log!(INFO, "fd {raw}: plain: cannot bind the marker address: {e}");
            return Err("cannot bind the marker address");
        }
    }
    // Bound already: by us (a connect that failed), or by the program.
    let (mut ss, mut len) = storage();
    // SAFETY: our own buffer.
    let r = unsafe {
        real::getsockname(
            raw,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r == 0 && is_marker(&ss, len).is_some() {
        return Ok(());
    }
    const WHY: &str = "the application bound this socket itself";
    log!(INFO, "fd {raw}: plain: {WHY}");
    Err(WHY)
}

/// A marker address no other socket has: our pid, and a random number
/// drawn once per process plus a count (getrandom once, not per connect).
fn marker_addr() -> Option<rustix::net::SocketAddrUnix> {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut r = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
        u64::from_ne_bytes(r)
    });
    let n = seed.wrapping_add(NEXT.fetch_add(1, Relaxed));
    let pid = tsss_core::os::proc::cached_pid() as u32;
    let (name, len) = wire::marker_name(pid, n);
    rustix::net::SocketAddrUnix::new_abstract_name(&name[1..len]).ok()
}

hook! {
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        // SAFETY: addr is readable for len >= 2 bytes when non-null.
        let unix = !addr.is_null()
            && len as usize >= 2
            && unsafe { (*addr).sa_family } == libc::AF_UNIX as libc::sa_family_t;
        if !unix || table::get(fd).is_some() {
            return Real;
        }
        // SAFETY: the caller's descriptor, for this call.
        let bfd = unsafe { abi::fd(fd) };
        let saved = errno();
        // The cheap checks first: every AF_UNIX connect comes here, datagram
        // ones (syslog) too. Then our state: once the marker is bound the
        // server will offer, and a client that cannot track the connection
        // would hand HELLO to the program (out of descriptors, for one).
        let mut conn = None;
        // Why a stream socket that connects stays plain (logged already).
        let mut plain: Option<Cow<'static, str>> = None;
        if matches!(
            rustix::net::sockopt::socket_type(bfd),
            Ok(rustix::net::SocketType::STREAM)
        ) {
            let nb = rustix::fs::fcntl_getfl(bfd)
                .is_ok_and(|f| f.contains(rustix::fs::OFlags::NONBLOCK));
            conn = Conn::client(bfd, nb)
                .map_err(|why| {
                    log!(INFO, "fd {fd}: plain: {why}");
                    plain = Some(why.into());
                })
                .ok();
            if conn.is_some()
                && let Err(why) = mark(bfd, fd)
            {
                conn = None;
                plain = Some(why.into());
            }
        }
        // SAFETY: the caller's arguments.
        let r = unsafe { real::connect(fd, addr, len) };
        let e = errno();
        let connected = r == 0 || e == libc::EINPROGRESS;
        if let (true, Some(c)) = (connected, conn) {
            c.list(bfd, None);
            drop(table::insert(fd, Entry::Conn(c)));
            log!(DEBUG, "fd {fd}: connected with the tsss marker; waiting for the server's offer");
            super::epoll::note_registration(fd);
        } else if let (true, Some(why)) = (connected, plain) {
            registry::connection_event(bfd, Event::Plain(Role::Client, format_args!("{why}")));
        }
        set_errno(if r == 0 { saved } else { e });
        Done(r)
    }
}

/// Server: the peer carries the marker of protocol `version`: offer it a
/// segment (or log why not). `listener`: the accepting descriptor.
fn offer(listener: c_int, nfd: c_int, version: u16, flags: c_int) {
    // SAFETY: accept just returned this descriptor to the caller, whose
    // call is being served.
    let bfd = unsafe { abi::fd(nfd) };
    if version != wire::PROTO_VERSION {
        return plain_from_start(
            bfd,
            Role::Server,
            format_args!(
                "client speaks tsss protocol {version}, we speak {}",
                wire::PROTO_VERSION
            ),
        );
    }
    if !offers::offer(listener) {
        // Not listed either: such connections come and go by the thousand.
        log!(INFO, "fd {nfd}: plain: {}", offers::why_not());
        return;
    }
    let peer = match rustix::net::sockopt::socket_peercred(bfd) {
        Ok(c) => registry::PeerCred {
            pid: c.pid.as_raw_nonzero().get(),
            uid: c.uid.as_raw(),
        },
        Err(e) => {
            return plain_from_start(
                bfd,
                Role::Server,
                format_args!("cannot read peer credentials: {e}"),
            );
        }
    };
    match Conn::server(bfd, flags & libc::SOCK_NONBLOCK != 0, peer.uid, listener) {
        Ok(c) => {
            c.list(bfd, Some(peer));
            drop(table::insert(nfd, Entry::Conn(c)));
        }
        Err(why) => plain_from_start(bfd, Role::Server, format_args!("{why}")),
    }
}

/// accept4 with the peer's address read into our buffer: a marker there
/// gets an offer, and the caller sees an unnamed peer.
///
/// # Safety
/// As for accept4.
unsafe fn do_accept(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t, flags: c_int) -> c_int {
    let (mut ss, mut len) = storage();
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
        out_len = size_of::<libc::sa_family_t>() as socklen_t;
        offer(fd, nfd, v, flags);
    } else if ss.ss_family == libc::AF_UNIX as libc::sa_family_t
        && (log::enabled(INFO) || registry::enabled())
    {
        // SAFETY: accept just returned this descriptor.
        let bfd = unsafe { abi::fd(nfd) };
        if matches!(
            rustix::net::sockopt::socket_type(bfd),
            Ok(rustix::net::SocketType::STREAM)
        ) {
            plain_from_start(
                bfd,
                Role::Server,
                format_args!("client does not run tsss (no marker address)"),
            );
        }
    }
    // SAFETY: the caller's buffers.
    unsafe { copy_out(addr, alen, &ss, out_len) };
    set_errno(saved);
    nfd
}

hook! {
    fn accept(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> c_int {
        // SAFETY: the caller's arguments.
        Done(unsafe { do_accept(fd, addr, alen, 0) })
    }
}

hook! {
    fn accept4(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t, flags: c_int) -> c_int {
        // SAFETY: the caller's arguments.
        Done(unsafe { do_accept(fd, addr, alen, flags) })
    }
}

hook! {
    fn getsockname(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> c_int {
        // SAFETY: the caller's arguments.
        match unsafe { name_hidden(real::getsockname, fd, addr, alen) } {
            Some(r) => Done(r),
            None => Real,
        }
    }
}

hook! {
    fn getpeername(fd: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> c_int {
        // SAFETY: the caller's arguments.
        match unsafe { name_hidden(real::getpeername, fd, addr, alen) } {
            Some(r) => Done(r),
            None => Real,
        }
    }
}
