//! The connection against a socketpair, both ends in this process.
use super::*;
use crate::shm::layout::Dir;
use crate::sync::Ordering::{Relaxed, SeqCst};
use rustix::event::PollFlags;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, socketpair};
use std::io::{IoSlice, IoSliceMut};

/// A connection and the socket it runs on.
struct End {
    c: Conn,
    s: OwnedFd,
}

impl std::ops::Deref for End {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.c
    }
}

impl End {
    fn fd(&self) -> BorrowedFd<'_> {
        self.s.as_fd()
    }
}

fn client(s: OwnedFd, nonblock: bool) -> End {
    End {
        c: Conn::client(s.as_fd(), nonblock).unwrap(),
        s,
    }
}

fn server(s: OwnedFd, nonblock: bool) -> End {
    End {
        c: Conn::server(s.as_fd(), nonblock, uid(), -1).unwrap(),
        s,
    }
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn send(c: &End, b: &[u8]) -> Result<usize, Errno> {
    c.send(c.fd(), &[IoSlice::new(b)], SendOpts::default())
        .done()
        .unwrap()
}

fn send_nb(c: &End, b: &[u8]) -> Result<usize, Errno> {
    let o = SendOpts {
        dontwait: true,
        nosignal: true,
        creds_only: false,
        raw: (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32,
    };
    c.send(c.fd(), &[IoSlice::new(b)], o).done().unwrap()
}

fn recv(c: &End, n: usize, o: RecvOpts) -> Result<Vec<u8>, Errno> {
    let mut v = vec![0u8; n];
    let k = c
        .recv(c.fd(), &mut [IoSliceMut::new(&mut v)], o)
        .done()
        .unwrap()?;
    v.truncate(k);
    Ok(v)
}

fn nb() -> RecvOpts {
    RecvOpts {
        dontwait: true,
        ..RecvOpts::default()
    }
}

/// Reads exactly `n` bytes, blocking.
fn recv_all(c: &End, n: usize) -> Vec<u8> {
    let o = RecvOpts {
        waitall: true,
        ..RecvOpts::default()
    };
    recv(c, n, o).unwrap()
}

#[test]
fn plain_bytes_then_ring_in_both_directions() {
    let (a, b) = pair();
    let client = client(a, false);
    // The client writes before the server ever looks: plain bytes.
    assert_eq!(send(&client, b"early ").unwrap(), 6);
    let server = server(b, false);
    assert_eq!(send(&server, b"hello ").unwrap(), 6); // still plain: client not attached
    // The client's read sees HELLO and attaches; its writes stay plain
    // until the server confirms.
    assert_eq!(recv_all(&client, 6), b"hello ");
    assert_eq!(send(&client, b"still ").unwrap(), 6);
    assert!(!client.sb().tx_ring.load(Relaxed));
    assert_eq!(recv_all(&server, 12), b"early still ");
    // The server's next write confirms, and switches its direction.
    assert_eq!(send(&server, b"back").unwrap(), 4);
    assert!(server.sb().tx_ring.load(Relaxed));
    assert_eq!(recv_all(&client, 4), b"back");
    // The client's next write switches ours.
    assert_eq!(send(&client, b"ring").unwrap(), 4);
    assert!(client.sb().tx_ring.load(Relaxed));
    assert_eq!(recv_all(&server, 4), b"ring");
    assert!(client.is_accelerated() && server.is_accelerated());
    // Large transfer through a full ring, across threads.
    let total = 3 * config::ring_size() + 12345;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(send(&client, &data).unwrap(), total));
        assert_eq!(recv_all(&server, total), data);
    });
}

#[test]
fn peek_waitall_and_eof_after_all_bytes() {
    let (a, b) = pair();
    let client = client(a, false);
    let server = server(b, false);
    assert_eq!(recv(&client, 1, nb()), Err(Errno::AGAIN)); // only HELLO so far
    send(&client, b"abcdef").unwrap();
    let peek = RecvOpts {
        peek: true,
        ..RecvOpts::default()
    };
    assert_eq!(recv(&server, 3, peek).unwrap(), b"abc");
    assert_eq!(recv(&server, 3, nb()).unwrap(), b"abc");
    assert_eq!(server.bytes_readable(server.fd()), Some(3));
    assert_eq!(
        client.shutdown(client.fd(), libc::SHUT_WR),
        Outcome::Done(Ok(()))
    );
    assert_eq!(recv(&server, 100, nb()).unwrap(), b"def");
    assert_eq!(recv(&server, 100, nb()).unwrap(), b"");
    assert_eq!(
        recv(&server, 100, RecvOpts::default()).unwrap(),
        b"",
        "EOF repeats"
    );
    // Half-close: the other direction still works.
    send(&server, b"reply").unwrap();
    assert_eq!(recv_all(&client, 5), b"reply");
    let r = server
        .readiness(server.fd(), Some(PollFlags::empty()))
        .unwrap();
    assert!(r.readable && r.rdhup && r.writable);
}

#[test]
fn closed_reader_gives_epipe_and_nonblocking_full_ring_gives_eagain() {
    let (a, b) = pair();
    let client = client(a, true);
    let server = server(b, true);
    assert_eq!(recv(&client, 1, nb()), Err(Errno::AGAIN));
    send_nb(&client, b"x").unwrap();
    assert_eq!(recv(&server, 1, nb()).unwrap(), b"x");
    // The server confirms; the client's next write switches.
    server.progress(server.fd());
    // Fill the c2s ring.
    let chunk = vec![7u8; 65536];
    let mut total = 0;
    loop {
        match send_nb(&client, &chunk) {
            Ok(n) => total += n,
            Err(e) => {
                assert_eq!(e, Errno::AGAIN);
                break;
            }
        }
    }
    assert_eq!(total, config::ring_size());
    assert!(
        !client
            .readiness(client.fd(), Some(PollFlags::empty()))
            .unwrap()
            .writable
    );
    server.close(server.fd());
    assert_eq!(send_nb(&client, b"y"), Err(Errno::PIPE));
}

#[test]
fn a_server_without_tsss_keeps_the_client_plain() {
    let (a, b) = pair();
    let client = client(a, false);
    rustix::net::send(&b, b"+OK hi", SendFlags::empty()).unwrap();
    assert_eq!(
        client.recv(
            client.fd(),
            &mut [IoSliceMut::new(&mut [0u8; 8])],
            RecvOpts::default()
        ),
        Outcome::Kernel
    );
    assert!(client.is_plain());
    let mut buf = [0u8; 8];
    let (_, n) = rustix::net::recv(&client.s, &mut buf, RecvFlags::empty()).unwrap();
    assert_eq!(&buf[..n], b"+OK hi", "nothing consumed");
}

#[test]
fn a_short_lookalike_of_hello_is_data() {
    let (a, b) = pair();
    let client = client(a, false);
    rustix::net::send(&b, &wire::HELLO_MAGIC[..5], SendFlags::empty()).unwrap();
    assert_eq!(
        client.recv(client.fd(), &mut [IoSliceMut::new(&mut [0u8; 8])], nb()),
        Outcome::Kernel
    );
    assert!(client.is_plain());
}

#[test]
fn corrupt_indices_reset_the_connection() {
    let (a, b) = pair();
    let client = client(a, false);
    let server = server(b, false);
    send(&client, b"").unwrap();
    assert_eq!(recv(&client, 1, nb()), Err(Errno::AGAIN));
    send(&client, b"ok").unwrap();
    assert_eq!(recv_all(&server, 2), b"ok");
    // Confirmed: the server's writes switch to the s2c ring.
    server.progress(server.fd());
    // A hostile peer scribbles over the s2c head.
    let seg = server.seg().unwrap();
    seg.header().rings[Dir::ServerToClient as usize]
        .head
        .store(u64::MAX / 3, SeqCst);
    assert_eq!(recv(&client, 10, nb()), Err(Errno::CONNRESET));
    assert_eq!(send(&client, b"z"), Err(Errno::CONNRESET));
    assert!(client.readiness(client.fd(), None).unwrap().err);
}
