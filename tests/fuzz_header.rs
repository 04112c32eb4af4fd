//! Adversarial fuzzing of a whole connection (`tsss_core::conn::Conn`)
//! against a peer that writes anything into the shared segment.
//!
//! Public API only, real objects: a socketpair, a real SysV segment and the
//! victim's `Conn`, client or server. The test is the peer: it negotiates
//! (sends or reads HELLO, sometimes a corrupted one, attaches the segment,
//! publishes its switch point), and between the victim's calls it produces
//! into and consumes from the rings, with and without ancillary records,
//! rings doorbells, sends carrier, stray and plain bytes, shuts its socket
//! down, and above all writes arbitrary values (boundary, huge, random, next
//! to the victim's own indices) into the shared words: ring head and tail,
//! every `RingFlags` word, the ancillary queues (head, tail, record offsets
//! and lengths), magic, nonce, version and client_state.
//!
//! The victim calls everything a shim would: recv (peek, waitall, scattered
//! buffers), send, send_with (a carrier), send_plain_with, recv_plain_with,
//! send_from_fd, readiness and the other queries, shutdown, export/adopt (an
//! exec, which re-attaches and re-checks the segment) and close. After
//! every call:
//! - it returned (watchdog, `fuzz_support`), and a blocking call that took
//!   long slept rather than spun (thread CPU time);
//! - counts lie within the caller's buffer (and SIOCOUTQ within the ring);
//!   the bytes delivered are data, never the marker byte that fills the
//!   rest of the buffer, which stays untouched;
//! - once the victim reports the connection broken (ECONNRESET, and the
//!   broken readiness: in, out, hup, err, no rdhup), every later call fails
//!   with ECONNRESET and readiness stays so; a connection gone plain stays
//!   plain, and a broken one never goes plain;
//! - no panic, no crash (a stray access would kill the test binary).
//!
//! Tests: `nonblocking` (most cases), `blocking` (blocking calls, bounded by
//! SO_RCVTIMEO/SO_SNDTIMEO or by the peer shutting its socket down 30 ms
//! into a blocked call), `racing_scribbler` (a thread rewrites shared words
//! while the victim runs). The five bugs this fuzzer found (all fixed)
//! each have a `known_bug_*` regression test with the exact input, see the
//! end of this file. Seeds, case counts, replay: `fuzz_support`.
//!
//! `cargo test --release --test fuzz_header`

mod fuzz_support;

use fuzz_support::{MARK, Plan, Progress, Rng};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, Shutdown, SocketFlags, SocketType, socketpair,
};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tsss_core::conn::wake_space_sleepers;
use tsss_core::conn::{Conn, Outcome, Ready, RecvOpts, SendOpts};
use tsss_core::os::poll::kernel_view;
use tsss_core::shm::layout::{
    ANC_SLOTS, CARRIER, CLIENT_ATTACHED, Dir, SERVER_CONFIRMED, SegHeader,
};
use tsss_core::shm::protocol::{negotiate, publish_record, publish_switch, take_waiter};
use tsss_core::shm::ring::{DstCursor, SrcCursor};
use tsss_core::shm::segment::Segment;
use tsss_core::wire::{HELLO_LEN, Hello};

const FILE: &str = "fuzz_header";

fn cases(release: u64, debug: u64) -> u64 {
    if cfg!(debug_assertions) {
        debug
    } else {
        release
    }
}

/// Whether to walk into the inputs of bug `n` (see the `known_bug_*`
/// regression tests): always, since all are fixed. Kept as a switch so a
/// new bug can be steered around while it is open
/// (`TSSS_FUZZ_KNOWN_BUGS=none` steers around all of them).
fn known_bug(n: u32) -> bool {
    let _ = n;
    std::env::var("TSSS_FUZZ_KNOWN_BUGS").map_or(true, |v| v != "none")
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Short spins: blocking paths reach their sleeps quickly.
fn tune() {
    tsss_core::config::SPIN_NS.store(2_000, Relaxed);
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

const BROKEN: Ready = Ready {
    readable: true,
    writable: true,
    rdhup: false,
    hup: true,
    err: true,
};

/// A descriptor of the case (the victim's socket, /dev/zero), open for
/// the whole case, borrowed for one call.
fn bfd<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: every descriptor passed here outlives the call it is for.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// A control message passing `fd` (SCM_RIGHTS).
fn rights(fd: RawFd) -> Vec<u8> {
    cmsg(libc::SOL_SOCKET, libc::SCM_RIGHTS, &fd.to_ne_bytes())
}

/// A control message with our own credentials (SCM_CREDENTIALS).
fn credentials() -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(std::process::id() as i32).to_ne_bytes());
    d.extend_from_slice(&rustix::process::getuid().as_raw().to_ne_bytes());
    d.extend_from_slice(&rustix::process::getgid().as_raw().to_ne_bytes());
    cmsg(libc::SOL_SOCKET, libc::SCM_CREDENTIALS, &d)
}

fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
    let len = size_of::<libc::cmsghdr>() + data.len();
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&level.to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    while v.len() % size_of::<usize>() != 0 {
        v.push(0);
    }
    v
}

/// The readiness a broken connection reports (a live one with hup always
/// has rdhup too when the kernel's view is left out).
fn is_broken(c: &Conn, fd: RawFd) -> bool {
    c.readiness(bfd(fd), None) == Some(BROKEN)
}

// ------------------------------------------------------------------ the peer

/// The hostile end: its socket, its mapping of the segment.
struct Peer {
    sock: Option<OwnedFd>,
    seg: Segment,
    /// The victim's incoming direction (the peer produces into it) and
    /// outgoing one.
    rx: Dir,
    tx: Dir,
    /// Plain bytes sent on the socket in the victim's incoming direction.
    plain_sent: u64,
    /// Every byte sent on the socket.
    sock_sent: u64,
    /// Out of 4 moves, how many are honest ones at most (per case: from
    /// a peer that scribbles all the time to one that rarely does).
    calm: u64,
    /// The victim is a client: the peer confirms its attach, as a server
    /// does at its next call.
    confirms: bool,
}

impl Peer {
    fn hdr(&self) -> &SegHeader {
        self.seg.header()
    }

    fn send_raw(&mut self, b: &[u8]) {
        if let Some(s) = &self.sock
            && let Ok(n) = rustix::net::send(s, b, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
        {
            self.sock_sent += n as u64;
        }
    }

    fn drain(&self) {
        let Some(s) = &self.sock else { return };
        let mut b = [0u8; 4096];
        while let Ok((_, n)) = rustix::net::recv(s, &mut b, RecvFlags::DONTWAIT) {
            if n == 0 {
                break;
            }
        }
    }

    /// Indices worth landing next to.
    fn near(&self) -> Vec<u64> {
        let h = self.hdr();
        let mut v = Vec::with_capacity(8);
        for d in 0..2 {
            v.push(h.rings[d].head.load(Relaxed));
            v.push(h.rings[d].tail.load(Relaxed));
            v.push(h.anc[d].head.load(Relaxed));
            v.push(h.anc[d].tail.load(Relaxed));
        }
        v
    }

    /// The incoming direction's shared words, for traces.
    fn dump(&self) -> String {
        let h = self.hdr();
        let (r, q) = (&h.rings[self.rx as usize], &h.anc[self.rx as usize]);
        let (qh, qt) = (q.head.load(Relaxed), q.tail.load(Relaxed));
        let recs: Vec<(u64, u64)> = (0..qh.wrapping_sub(qt).min(4))
            .map(|i| {
                let rec = &q.recs[(qt.wrapping_add(i) % ANC_SLOTS as u64) as usize];
                (rec.offset.load(Relaxed), rec.len.load(Relaxed))
            })
            .collect();
        format!(
            "rx head {:#x} tail {:#x} switch_at {:#x} wr_closed {} anc {qt:#x}..{qh:#x} {recs:x?}",
            r.head.load(Relaxed),
            r.tail.load(Relaxed),
            r.flags.switch_at.load(Relaxed),
            r.flags.wr_closed.load(Relaxed)
        )
    }

    fn dir(&self, rng: &mut Rng) -> usize {
        // Mostly the direction the victim reads, where most checks are.
        if rng.below(3) < 2 {
            self.rx as usize
        } else {
            self.tx as usize
        }
    }

    /// Some shared 64-bit word.
    fn word64(&self, rng: &mut Rng) -> (&'static str, &AtomicU64) {
        let h = self.hdr();
        let d = self.dir(rng);
        let q = &h.anc[d];
        let at_tail = (q.tail.load(Relaxed) % ANC_SLOTS as u64) as usize;
        let any = rng.below(ANC_SLOTS as u64) as usize;
        match rng.below(14) {
            0..=2 => ("head", &*h.rings[d].head),
            3..=5 => ("tail", &*h.rings[d].tail),
            6 => ("switch_at", &h.rings[d].flags.switch_at),
            7 => ("anc.head", &q.head),
            8 => ("anc.tail", &q.tail),
            9 => ("anc.rec.offset", &q.recs[at_tail].offset),
            10 => ("anc.rec.len", &q.recs[at_tail].len),
            11 if rng.coin() => ("anc.recs[any].offset", &q.recs[any].offset),
            11 => ("anc.recs[any].len", &q.recs[any].len),
            12 => ("magic", &h.magic),
            _ => ("nonce", &h.nonce),
        }
    }

    /// Some shared 32-bit word.
    fn word32(&self, rng: &mut Rng) -> (&'static str, &AtomicU32) {
        let h = self.hdr();
        let f = &h.rings[self.dir(rng)].flags;
        match rng.below(9) {
            0 => ("reader_waiting", &f.reader_waiting),
            1 => ("writer_waiting", &f.writer_waiting),
            2 => ("writer_sleeping", &f.writer_sleeping),
            3 => ("space_seq", &f.space_seq),
            4 | 5 => ("wr_closed", &f.wr_closed),
            6 => ("rd_closed", &f.rd_closed),
            7 => ("version", &h.version),
            _ => ("client_state", &h.client_state),
        }
    }

    /// Honest producer into the victim's incoming ring, optionally with
    /// an ancillary record and its carrier.
    fn produce(&mut self, rng: &mut Rng, anc: bool) {
        let cap = self.seg.cap(self.rx);
        let n = rng.len_near(cap).max(1);
        let data = rng.data(n);
        let h = self.hdr();
        let q = &h.anc[self.rx as usize];
        let qh = q.head.load(Relaxed);
        let record = anc && qh.wrapping_sub(q.tail.load(Relaxed)) < ANC_SLOTS as u64;
        if record {
            self.send_raw(&[CARRIER]);
            let ring = self.seg.ring(self.rx);
            let len = ring.writable().unwrap_or(0).min(n) as u64;
            publish_record(&self.hdr().anc[self.rx as usize], ring.head(), len);
        }
        let ring = self.seg.ring(self.rx);
        let _ = ring
            .producer()
            .push(&mut SrcCursor::new(&[IoSlice::new(&data)]));
        if take_waiter(&ring.flags().reader_waiting) {
            self.send_raw(&[0]);
        }
    }

    /// Honest consumer of the victim's outgoing ring and its records.
    fn consume(&mut self, rng: &mut Rng) {
        let cap = self.seg.cap(self.tx);
        let mut b = vec![0u8; rng.len_near(cap)];
        let ring = self.seg.ring(self.tx);
        let _ = ring
            .consumer()
            .pop(&mut DstCursor::new(&mut [IoSliceMut::new(&mut b)]), false);
        let q = &self.hdr().anc[self.tx as usize];
        if rng.coin() {
            q.tail.store(q.head.load(Relaxed), SeqCst);
        }
        let f = ring.flags();
        if take_waiter(&f.writer_sleeping) {
            wake_space_sleepers(f);
        }
        if f.writer_waiting.swap(0, SeqCst) != 0 {
            self.send_raw(&[0]);
        }
    }

    /// One move of the peer. Returns what it did, for traces.
    fn step(&mut self, rng: &mut Rng) -> String {
        if self.confirms {
            let _ = negotiate(&self.hdr().client_state, CLIENT_ATTACHED, SERVER_CONFIRMED);
        }
        let cap = self.seg.cap(self.rx) as u64;
        let near = self.near();
        if rng.below(4) < self.calm {
            return match rng.below(4) {
                0 | 1 => {
                    let anc = rng.one_in(4);
                    self.produce(rng, anc);
                    "produce (calm)".into()
                }
                2 => {
                    self.consume(rng);
                    "consume (calm)".into()
                }
                _ => {
                    self.drain();
                    "drain socket (calm)".into()
                }
            };
        }
        match rng.below(22) {
            0..=6 => {
                let v = rng.hostile(cap, &near);
                let (name, w) = self.word64(rng);
                w.store(v, SeqCst);
                format!("{name} := {v:#x}")
            }
            7 | 8 => {
                let v = match rng.below(7) {
                    0..=4 => rng.below(5) as u32,
                    5 => u32::MAX,
                    _ => rng.next() as u32,
                };
                let (name, w) = self.word32(rng);
                w.store(v, SeqCst);
                format!("{name} := {v:#x}")
            }
            9..=11 => {
                self.produce(rng, false);
                "produce".into()
            }
            12 => {
                self.produce(rng, true);
                "produce with a record".into()
            }
            13 | 14 => {
                self.consume(rng);
                "consume".into()
            }
            15 => {
                let b = match rng.below(3) {
                    0 => vec![0],
                    1 => vec![CARRIER],
                    _ => {
                        let n = 1 + rng.below(8) as usize;
                        rng.data(n)
                    }
                };
                self.send_raw(&b);
                format!("socket bytes {b:?}")
            }
            16 => {
                self.drain();
                "drain socket".into()
            }
            17 => {
                let v = if rng.coin() {
                    self.plain_sent
                } else {
                    rng.hostile(cap, &near) & !tsss_core::shm::layout::SWITCHED
                };
                publish_switch(&self.hdr().rings[self.rx as usize].flags, v);
                format!("publish switch_at {v:#x}")
            }
            18 => {
                // A crafted record in front of the victim's reads.
                let h = self.hdr();
                let (ring, q) = (&h.rings[self.rx as usize], &h.anc[self.rx as usize]);
                let t = q.tail.load(Relaxed);
                let near = [ring.tail.load(Relaxed), ring.head.load(Relaxed)];
                let (off, len) = (rng.hostile(cap, &near), rng.hostile(cap, &[1, cap]));
                let r = &q.recs[(t % ANC_SLOTS as u64) as usize];
                r.offset.store(off, Relaxed);
                r.len.store(len, Relaxed);
                q.head.store(t.wrapping_add(1), SeqCst);
                format!("record at {t:#x}: offset {off:#x} len {len:#x}")
            }
            19 => {
                let n = rng.upto(64);
                let b = rng.data(n);
                self.send_raw(&b);
                self.plain_sent += n as u64;
                format!("{n} plain bytes")
            }
            20 => {
                // Undo a corruption: a consistent pair for the incoming ring.
                let r = &self.hdr().rings[self.rx as usize];
                let t = r.tail.load(Relaxed);
                let v = t.wrapping_add(rng.below(cap + 1));
                r.head.store(v, SeqCst);
                format!("repair head := {v:#x}")
            }
            _ if rng.one_in(8) => match rng.below(3) {
                0 => {
                    if let Some(s) = &self.sock {
                        let _ = rustix::net::shutdown(s, Shutdown::Write);
                    }
                    "shutdown(SHUT_WR)".into()
                }
                1 => {
                    if let Some(s) = &self.sock {
                        let _ = rustix::net::shutdown(s, Shutdown::Both);
                    }
                    "shutdown(SHUT_RDWR)".into()
                }
                _ => {
                    self.sock = None;
                    "close".into()
                }
            },
            _ => {
                let v = match rng.below(3) {
                    0 => 0,
                    1 => 1,
                    _ => 2,
                };
                let f = &self.hdr().rings[self.rx as usize].flags;
                f.wr_closed.store(v, SeqCst);
                format!("rx wr_closed := {v}")
            }
        }
    }
}

// ------------------------------------------------------------------ the victim

/// Whether a blocking read may walk into a known bug: both spin at full CPU
/// for as long as the peer lives, ignoring SO_RCVTIMEO, once a pass reads
/// nothing while a record is pending:
/// - known bug 1: a record whose offset + len wraps past u64::MAX onto the
///   read position caps every pass at 0 bytes while the ring stays
///   readable, and `wait_rx` returns at once on a readable ring;
/// - known bug 5: with the ring empty (at the start, or after a waitall
///   read took what there was) and a carrier byte at the head of the
///   socket, `wait_rx` finds the carrier and the pending record and returns
///   at once, the pass reads nothing, and round it goes.
fn spin_hazard(peer: &Peer) -> bool {
    let q = &peer.hdr().anc[peer.rx as usize];
    q.head.load(Relaxed) != q.tail.load(Relaxed)
}

/// Shuts the peer's socket down if a blocking call has not returned 30 ms
/// after it was armed: the peer "dies", and the victim must notice.
struct DeadMan {
    armed: Mutex<Option<(Instant, OwnedFd)>>,
    stop: AtomicBool,
}

impl DeadMan {
    fn start() -> Arc<DeadMan> {
        let d = Arc::new(DeadMan {
            armed: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let d2 = d.clone();
        std::thread::spawn(move || {
            while !d2.stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                let mut a = d2.armed.lock().unwrap();
                if a.as_ref()
                    .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(30))
                {
                    let (_, fd) = a.take().unwrap();
                    let _ = rustix::net::shutdown(&fd, Shutdown::Both);
                }
            }
        });
        d
    }

    fn arm(&self, peer: &Peer) {
        if let Some(s) = &peer.sock {
            *self.armed.lock().unwrap() = Some((Instant::now(), rustix::io::dup(s).expect("dup")));
        }
    }

    fn disarm(&self) {
        self.armed.lock().unwrap().take();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    NonBlocking,
    /// Blocking calls; `dead_man`: no socket timeouts, the peer's socket is
    /// shut down 30 ms into a blocked call instead.
    Blocking {
        dead_man: bool,
    },
}

struct Victim {
    conn: Conn,
    _sock: OwnedFd,
    fd: RawFd,
    mode: Mode,
    /// The victim's view of the ring sizes (from the HELLO it got).
    cap_rx: usize,
    cap_tx: usize,
    broken: bool,
    plain: bool,
    dev_zero: RawFd,
    trace: bool,
}

/// A call's result in one shape, for the common checks.
type Res = Option<Result<usize, Errno>>;

impl Victim {
    fn blocking(&self) -> bool {
        matches!(self.mode, Mode::Blocking { .. })
    }

    /// Runs one call of the victim: watchdog, dead man's switch, and the
    /// no-busy-wait check for blocking calls.
    fn call<T>(
        &self,
        prog: &Progress,
        peer: &Peer,
        dm: Option<&DeadMan>,
        may_block: bool,
        f: impl FnOnce(&Conn) -> T,
    ) -> T {
        let dm = dm.filter(|_| may_block && self.mode == Mode::Blocking { dead_man: true });
        if let Some(d) = dm {
            d.arm(peer);
        }
        let (t0, c0) = (Instant::now(), thread_cpu());
        let r = prog.op(|| f(&self.conn));
        let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
        if let Some(d) = dm {
            d.disarm();
        }
        assert!(
            wall < Duration::from_millis(25) || cpu * 2 < wall,
            "busy-waited: {cpu:?} of CPU in {wall:?}"
        );
        r
    }

    /// The stickiness rules, for calls whose `None` means "plain now".
    fn settle(&mut self, what: &str, r: &Res) {
        if self.trace {
            eprintln!("  victim {what} -> {r:?}");
        }
        if self.broken {
            assert_eq!(
                *r,
                Some(Err(Errno::CONNRESET)),
                "{what} on a broken connection"
            );
        }
        if self.plain {
            assert!(
                r.is_none(),
                "{what} on a plain connection did not pass through"
            );
        }
        if r.is_none() {
            assert!(!self.broken, "{what}: broken connection went plain");
            assert!(self.conn.is_plain(), "{what}: None but not plain");
            self.plain = true;
        }
        self.check_state(what, r);
    }

    /// After any call: the broken/plain state only moves forward.
    fn check_state(&mut self, what: &str, r: &Res) {
        if *r == Some(Err(Errno::CONNRESET)) && !self.broken && is_broken(&self.conn, self.fd) {
            self.broken = true;
        }
        if self.broken {
            assert!(is_broken(&self.conn, self.fd), "{what}: no longer broken");
            assert!(
                !self.conn.is_plain(),
                "{what}: broken connection went plain"
            );
        }
        if self.plain {
            assert!(self.conn.is_plain(), "{what}: no longer plain");
        }
        if !self.plain && self.conn.is_plain() {
            assert!(!self.broken, "{what}: broken connection went plain");
            self.plain = true;
        }
    }

    fn recv(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer, dm: Option<&DeadMan>) {
        let total = rng.len_near(self.cap_rx);
        let parts = rng.split(total);
        let mut o = RecvOpts {
            peek: rng.one_in(5),
            waitall: rng.one_in(4),
            dontwait: !self.blocking() || rng.one_in(3),
        };
        let walk_in = known_bug(1) && known_bug(5);
        if !walk_in && !o.dontwait && spin_hazard(peer) {
            o.dontwait = true;
        }
        let mut bufs: Vec<Vec<u8>> = parts.iter().map(|&n| vec![MARK; n]).collect();
        let fd = self.fd;
        if self.trace {
            eprintln!("  victim recv {parts:?} {o:?} ...");
        }
        let r = self.call(prog, peer, dm, !o.dontwait, |c| {
            let mut iov: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            c.recv(bfd(fd), &mut iov, o).done()
        });
        let what = format!("recv {parts:?} {o:?}");
        if let Some(Ok(n)) = r {
            let flat = bufs.concat();
            assert!(n <= total, "{what}: {n} bytes into {total}");
            assert!(
                flat[..n].iter().all(|&b| b != MARK),
                "{what}: delivered bytes that are not data"
            );
            assert!(
                flat[n..].iter().all(|&b| b == MARK),
                "{what}: wrote past the count {n}"
            );
        }
        self.settle(&what, &r);
    }

    fn send(
        &mut self,
        rng: &mut Rng,
        prog: &Progress,
        peer: &Peer,
        dm: Option<&DeadMan>,
        carrier: bool,
    ) {
        let total = rng.len_near(self.cap_tx);
        let data = rng.data(total);
        let parts = rng.split(total);
        let mut dontwait = !self.blocking() || rng.one_in(3);
        // Known bug 2: a sendmsg with ancillary data on a ring whose
        // indices are corrupt spins (the record-room loop treats Corrupt as
        // "no space" and the writer's wait as "ready at once").
        let corrupt = peer.seg.ring(peer.tx).writable().is_err();
        if carrier && corrupt && !known_bug(2) {
            dontwait = true;
        }
        let o = SendOpts {
            dontwait,
            nosignal: true,
            creds_only: carrier && rng.one_in(4),
            raw: (libc::MSG_NOSIGNAL | if dontwait { libc::MSG_DONTWAIT } else { 0 }) as u32,
        };
        let mut at = 0;
        let iov: Vec<IoSlice<'_>> = parts
            .iter()
            .map(|&n| {
                at += n;
                IoSlice::new(&data[at - n..at])
            })
            .collect();
        let fd = self.fd;
        let what = format!("send{} {parts:?} {o:?}", if carrier { "_with" } else { "" });
        if self.trace {
            let tx = peer.seg.ring(peer.tx);
            eprintln!(
                "  victim {what} (tx head {:#x} tail {:#x}) ...",
                tx.head(),
                tx.tail()
            );
        }
        let control = if o.creds_only {
            credentials()
        } else {
            rights(self.dev_zero)
        };
        let r = self.call(prog, peer, dm, !dontwait, |c| {
            if carrier {
                c.sendmsg(bfd(fd), &iov, &control, o.raw as i32).done()
            } else {
                c.send(bfd(fd), &iov, o).done()
            }
        });
        if let Some(Ok(n)) = r {
            assert!(n <= total, "{what}: sent {n} of {total}");
            assert!(n > 0 || total == 0, "{what}: sent nothing without an error");
        }
        self.settle(&what, &r);
    }

    fn send_plain_with(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer) {
        let n = rng.len_near(64);
        let data = rng.data(n);
        let sock = &self._sock;
        let r = self.call(prog, peer, None, false, |c| {
            c.send_plain_with(|| {
                rustix::net::send(sock, &data, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
            })
        });
        let what = format!("send_plain_with {}", data.len());
        if self.trace {
            eprintln!("  victim {what} -> {r:?}");
        }
        if let Some(Ok(n)) = r {
            assert!(n <= data.len(), "{what}: {n}");
        }
        // Known bug 3: on a broken connection whose outgoing direction
        // never switched, the real send still runs.
        if self.broken && known_bug(3) {
            assert!(
                matches!(r, None | Some(Err(Errno::CONNRESET))),
                "{what} on a broken connection: {r:?}"
            );
        }
        self.check_state(&what, &r);
    }

    /// recvmsg with a control buffer: while the incoming direction is
    /// plain, the kernel's, capped at the switch point (and a peek that
    /// reaches it goes on into the ring); then the ring with carriers.
    fn recvmsg(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer) {
        let len = rng.len_near(64);
        let peek = rng.one_in(3);
        let mut buf = vec![MARK; len];
        let mut control = [0u8; 64];
        let fd = self.fd;
        let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
        let r = self.call(prog, peer, None, false, |c| {
            c.recvmsg(
                bfd(fd),
                &mut [IoSliceMut::new(&mut buf)],
                &mut [],
                &mut control,
                flags,
            )
            .done()
        });
        let what = format!("recvmsg {len} peek {peek}");
        if self.trace {
            eprintln!("  victim {what} -> {r:?}");
        }
        let r: Res = r.map(|r| r.map(|(n, _)| n));
        if let Some(Ok(n)) = r {
            assert!(n <= len, "{what}: {n}");
            assert!(
                buf[..n].iter().all(|&b| b != MARK) && buf[n..].iter().all(|&b| b == MARK),
                "{what}: delivered bytes that are not data, or wrote past {n}"
            );
        }
        self.settle(&what, &r);
    }

    fn send_from_fd(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer, dm: Option<&DeadMan>) {
        let count = rng.len_near(self.cap_tx);
        let nb = !self.blocking() || rng.coin();
        let (fd, zero) = (self.fd, self.dev_zero);
        let r = self.call(prog, peer, dm, !nb, |c| {
            c.send_from_fd(bfd(fd), bfd(zero), None, count, nb).done()
        });
        let what = format!("send_from_fd {count} nonblock {nb}");
        if self.trace {
            eprintln!("  victim {what} -> {r:?}");
        }
        if let Some(Ok(n)) = r {
            assert!(n <= count, "{what}: {n}");
        }
        if self.broken {
            assert_eq!(
                r,
                Some(Err(Errno::CONNRESET)),
                "{what} on a broken connection"
            );
        }
        self.check_state(&what, &r);
    }

    fn queries(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer) {
        let fd = self.fd;
        let (rd, wr) = (rng.coin(), rng.coin());
        let (ready, quick, readable, unread, _counters, err) =
            self.call(prog, peer, None, false, |c| {
                let fd = bfd(fd);
                c.progress(fd);
                c.arm(rd, wr);
                let ready = c.readiness(fd, Some(kernel_view(fd)));
                let quick = c.quick_ready(rd, wr);
                let _ = (
                    c.needs_kernel(),
                    c.bells_work(),
                    c.is_accelerated(),
                    c.shmid(),
                );
                (
                    ready,
                    quick,
                    c.bytes_readable(fd),
                    c.bytes_unread_by_peer(fd),
                    c.progress_counters(),
                    c.take_error(fd),
                )
            });
        let what = "queries";
        if self.trace {
            eprintln!(
                "  victim {what} -> {ready:?} quick {quick} readable {readable:?} \
                 unread {unread:?} error {err:?}"
            );
        }
        if let Some(n) = unread {
            // The ring, and plain bytes the peer may not have read.
            let bound = self.cap_tx as u64 + self.conn.plain_bytes_sent();
            assert!(
                n as u64 <= bound,
                "SIOCOUTQ {n} beyond the ring and plain bytes ({bound})"
            );
        }
        if let Some(n) = readable {
            let bound = self.cap_rx as u64 + peer.sock_sent;
            assert!(
                n as u64 <= bound,
                "FIONREAD {n} beyond ring and socket ({bound})"
            );
        }
        if self.broken {
            assert_eq!(ready, Some(BROKEN), "readiness of a broken connection");
        }
        if self.plain {
            assert_eq!(ready, None, "readiness of a plain connection");
        }
        self.check_state(what, &Some(Ok(0)));
    }

    fn shutdown(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer) {
        let how = rng.pick(&[libc::SHUT_RD, libc::SHUT_WR, libc::SHUT_RDWR, 7]);
        let fd = self.fd;
        let r = self.call(prog, peer, None, false, |c| c.shutdown(bfd(fd), how).done());
        let r: Res = r.map(|r| r.map(|()| 0));
        if how == 7 {
            assert_eq!(r, Some(Err(Errno::INVAL)), "shutdown(7)");
            return;
        }
        self.settle(&format!("shutdown({how})"), &r);
    }

    /// An exec: export, forget this process's state, adopt.
    fn adopt(&mut self, prog: &Progress, peer: &Peer) {
        let fd = self.fd;
        let line = self.conn.export(false);
        let new = self.call(prog, peer, None, false, |_| Conn::adopt(bfd(fd), &line));
        if self.trace {
            eprintln!(
                "  victim adopt {line:?} -> {}",
                new.as_ref().map_or_else(|e| e.clone(), |_| "ok".into())
            );
        }
        match new {
            Ok(c) => {
                assert!(!self.plain, "a plain connection was adopted");
                // Known bug 4: the adopted connection attaches the segment
                // on first use, and if the peer spoiled magic, nonce or
                // version, the send family turns that failure into `None`
                // ("not accelerated: call the real function") once,
                // instead of ECONNRESET. Attach now, through a query.
                if !known_bug(4) {
                    let _ = c.shmid();
                }
                self.conn = c;
            }
            Err(e) => {
                assert!(self.plain, "adopting {line:?} failed: {e}");
                assert_eq!(e, "plain");
            }
        }
        self.check_state("adopt", &Some(Ok(0)));
    }

    fn step(&mut self, rng: &mut Rng, prog: &Progress, peer: &Peer, dm: Option<&DeadMan>) {
        match rng.below(24) {
            0..=6 => self.recv(rng, prog, peer, dm),
            7..=10 => self.send(rng, prog, peer, dm, false),
            11 | 12 => self.send(rng, prog, peer, dm, true),
            13 => self.send_plain_with(rng, prog, peer),
            14 => self.recvmsg(rng, prog, peer),
            15 => self.send_from_fd(rng, prog, peer, dm),
            16 if rng.one_in(6) => self.shutdown(rng, prog, peer),
            17 if rng.one_in(3) => self.adopt(prog, peer),
            _ => self.queries(rng, prog, peer),
        }
    }
}

// ------------------------------------------------------------------ cases

fn pick_cap(rng: &mut Rng) -> usize {
    rng.pick(&[4096, 4096, 4096, 8192, 65536])
}

/// Sets up a victim and its peer, negotiated (or not, if the peer sends a
/// corrupted HELLO) to the point where both directions may switch.
fn setup(rng: &mut Rng, mode: Mode, dev_zero: RawFd, trace: bool) -> (Victim, Peer) {
    let (vs, ps) = pair();
    let fd = vs.as_raw_fd();
    if mode != (Mode::Blocking { dead_man: true }) {
        let t = Some(Duration::from_millis(1));
        rustix::net::sockopt::set_socket_timeout(&vs, rustix::net::sockopt::Timeout::Recv, t)
            .unwrap();
        rustix::net::sockopt::set_socket_timeout(&vs, rustix::net::sockopt::Timeout::Send, t)
            .unwrap();
    }
    let nonblock = mode == Mode::NonBlocking;
    let client = rng.coin();
    let mut plain_sent = 0;
    let mut sock_sent = 0;
    let (conn, seg, caps) = if client {
        let conn = Conn::client(bfd(fd), nonblock).expect("client conn");
        if rng.one_in(4) {
            // Plain bytes before HELLO arrives.
            let n = 1 + rng.upto(100);
            let early = rng.data(n);
            let o = SendOpts {
                dontwait: true,
                nosignal: true,
                creds_only: false,
                raw: (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32,
            };
            let r = conn.send(bfd(fd), &[IoSlice::new(&early)], o).done();
            assert_eq!(r, Some(Ok(early.len())), "early plain send");
        }
        let (c2s, s2c) = (pick_cap(rng), pick_cap(rng));
        let (seg, hello) = Segment::create(c2s, s2c, None).expect("segment");
        let mut h = hello;
        if rng.one_in(16) {
            match rng.below(5) {
                0 => h.shmid = h.shmid.wrapping_add(1),
                1 => h.nonce ^= 1 << rng.below(64),
                2 => h.cap_c2s = (h.cap_c2s / 2).max(4096),
                3 => h.cap_s2c = (h.cap_s2c / 2).max(4096),
                _ => h.cap_s2c *= 2,
            }
        }
        let mut bytes = h.encode();
        if rng.one_in(32) {
            let i = rng.below(HELLO_LEN as u64) as usize;
            bytes[i] ^= 1 << rng.below(8);
        }
        rustix::net::send(&ps, &bytes, SendFlags::empty()).expect("HELLO");
        sock_sent += HELLO_LEN as u64;
        let caps = match Hello::decode(&bytes) {
            Ok(h) => (h.cap_s2c as usize, h.cap_c2s as usize),
            Err(_) => (s2c, c2s),
        };
        if trace {
            eprintln!("case: client victim, caps {c2s}/{s2c}, HELLO {h:?}");
        }
        (conn, seg, caps)
    } else {
        tsss_core::config::RING_SIZE.store(pick_cap(rng), Relaxed);
        let conn = Conn::server(bfd(fd), nonblock, uid(), -1).expect("server conn");
        let mut b = [0u8; HELLO_LEN];
        let (_, n) = rustix::net::recv(&ps, &mut b, RecvFlags::WAITALL).expect("HELLO");
        assert_eq!(n, HELLO_LEN);
        let h = Hello::decode(&b).expect("valid HELLO");
        let seg = Segment::attach(&h, uid()).expect("attach");
        if trace {
            eprintln!("case: server victim, HELLO {h:?}");
        }
        (conn, seg, (h.cap_c2s as usize, h.cap_s2c as usize))
    };
    let (rx, tx) = if client {
        (Dir::ServerToClient, Dir::ClientToServer)
    } else {
        (Dir::ClientToServer, Dir::ServerToClient)
    };
    // Plain bytes from the peer, then (usually) its switch point.
    let k = if rng.coin() { 0 } else { rng.upto(200) };
    let b = rng.data(k);
    if k > 0 {
        rustix::net::send(&ps, &b, SendFlags::DONTWAIT).expect("plain bytes");
        plain_sent += k as u64;
        sock_sent += k as u64;
    }
    if !rng.one_in(8) {
        publish_switch(&seg.header().rings[rx as usize].flags, plain_sent);
    }
    if !client && !rng.one_in(8) {
        seg.header().client_state.store(CLIENT_ATTACHED, SeqCst);
        rustix::net::send(&ps, &[0], SendFlags::DONTWAIT).expect("bell");
        sock_sent += 1;
    }
    let victim = Victim {
        conn,
        _sock: vs,
        fd,
        mode,
        cap_rx: caps.0,
        cap_tx: caps.1,
        broken: false,
        plain: false,
        dev_zero,
        trace,
    };
    let peer = Peer {
        sock: Some(ps),
        seg,
        rx,
        tx,
        plain_sent,
        sock_sent,
        calm: rng.below(4),
        confirms: client,
    };
    (victim, peer)
}

fn dev_zero() -> OwnedFd {
    rustix::fs::open(
        "/dev/zero",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("/dev/zero")
}

/// Victim and peer take turns.
fn turns(plan: &Plan, prog: &Progress, blocking: bool) {
    tune();
    let zero = dev_zero();
    let dm = blocking.then(DeadMan::start);
    // How the cases ended: broken, plain, both directions on the rings,
    // anything else (negotiation unfinished).
    let mut ends = [0u64; 4];
    for (i, mut rng) in plan.cases() {
        prog.case(i);
        let mode = if blocking {
            Mode::Blocking {
                dead_man: rng.one_in(4),
            }
        } else {
            Mode::NonBlocking
        };
        if plan.trace {
            eprintln!("case {i}: {mode:?}");
        }
        let (mut v, mut p) = setup(&mut rng, mode, zero.as_raw_fd(), plan.trace);
        let steps = 1 + rng.below(48);
        for _ in 0..steps {
            if rng.below(5) < 2 {
                let what = p.step(&mut rng);
                if plan.trace {
                    eprintln!("  peer {what}");
                }
            } else {
                if plan.trace {
                    eprintln!("  [{}]", p.dump());
                }
                v.step(&mut rng, prog, &p, dm.as_deref());
            }
        }
        ends[if v.broken {
            0
        } else if v.plain {
            1
        } else if v.conn.is_accelerated() {
            2
        } else {
            3
        }] += 1;
        if rng.coin() {
            let fd = v.fd;
            v.call(prog, &p, None, false, |c| c.close(bfd(fd)));
        }
    }
    if let Some(d) = dm {
        d.stop.store(true, Relaxed);
    }
    eprintln!(
        "{}: cases ended broken {}, plain {}, accelerated {}, negotiating {}",
        plan.test, ends[0], ends[1], ends[2], ends[3]
    );
}

#[test]
fn nonblocking() {
    let n = cases(100_000, 3_000);
    fuzz_support::run(FILE, "nonblocking", n, |plan, prog| {
        turns(plan, prog, false)
    });
}

#[test]
fn blocking() {
    let n = cases(1_500, 150);
    fuzz_support::run(FILE, "blocking", n, |plan, prog| turns(plan, prog, true));
}

/// A thread rewrites shared words nonstop while the victim runs
/// non-blocking calls and the peer takes its turns.
fn racing(plan: &Plan, prog: &Progress) {
    tune();
    let zero = dev_zero();
    for (i, mut rng) in plan.cases() {
        prog.case(i);
        let (mut v, mut p) = setup(&mut rng, Mode::NonBlocking, zero.as_raw_fd(), plan.trace);
        let stop = AtomicBool::new(false);
        let mut adv = Rng::new(rng.next());
        let (rx, tx) = (p.rx, p.tx);
        let second = Hello {
            version: tsss_core::wire::PROTO_VERSION,
            hdr_size: tsss_core::shm::layout::HDR_SIZE as u32,
            shmid: p.seg.shmid(),
            cap_c2s: p.seg.cap(Dir::ClientToServer) as u32,
            cap_s2c: p.seg.cap(Dir::ServerToClient) as u32,
            nonce: p.hdr().nonce.load(SeqCst),
        };
        // Only atomics: the data areas stay the business of the peer's
        // turns, so the test itself has no data race.
        let scribbler = Peer {
            sock: None,
            seg: Segment::attach(&second, uid()).expect("second mapping"),
            rx,
            tx,
            plain_sent: 0,
            sock_sent: 0,
            calm: 0,
            confirms: false,
        };
        std::thread::scope(|s| {
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Relaxed);
                }
            }
            let _stop = Stop(&stop);
            s.spawn(|| {
                let cap = scribbler.seg.cap(rx) as u64;
                while !stop.load(Relaxed) {
                    let near = scribbler.near();
                    let v = adv.hostile(cap, &near);
                    if adv.below(4) == 0 {
                        let (_, w) = scribbler.word32(&mut adv);
                        w.store(v as u32, SeqCst);
                    } else {
                        let (_, w) = scribbler.word64(&mut adv);
                        w.store(v, SeqCst);
                    }
                    if adv.one_in(4) {
                        std::thread::yield_now();
                    }
                }
            });
            for _ in 0..1 + rng.below(64) {
                if rng.below(4) == 0 {
                    p.step(&mut rng);
                } else {
                    v.step(&mut rng, prog, &p, None);
                }
            }
        });
    }
}

#[test]
fn racing_scribbler() {
    let n = cases(2_000, 100);
    fuzz_support::run(FILE, "racing_scribbler", n, racing);
}

// ------------------------------------------------------------------ found bugs
//
// Each found by the fuzzer above, reduced to its input; all fixed, kept as
// regression tests.

/// A client victim running over the rings both ways, with its socket, the
/// peer's socket and the peer's mapping of the segment (4 KiB rings).
fn accelerated_client(nonblock: bool) -> (Conn, OwnedFd, OwnedFd, Segment) {
    tune();
    let (vs, ps) = pair();
    let c = Conn::client(vs.as_fd(), nonblock).expect("client");
    let (seg, hello) = Segment::create(4096, 4096, None).expect("segment");
    rustix::net::send(&ps, &hello.encode(), SendFlags::empty()).expect("HELLO");
    publish_switch(&seg.header().rings[Dir::ServerToClient as usize].flags, 0);
    let r = c.recv(vs.as_fd(), &mut [IoSliceMut::new(&mut [0u8; 1])], NB);
    assert_eq!(r, Outcome::Done(Err(Errno::AGAIN)));
    // Attached; the peer confirms, as a server does.
    let word = &seg.header().client_state;
    assert_eq!(
        negotiate(word, CLIENT_ATTACHED, SERVER_CONFIRMED),
        SERVER_CONFIRMED
    );
    c.progress(vs.as_fd());
    assert!(c.is_accelerated());
    let mut b = [0u8; 64];
    let _ = rustix::net::recv(&ps, &mut b, RecvFlags::DONTWAIT); // its doorbell
    (c, vs, ps, seg)
}

const NB: RecvOpts = RecvOpts {
    peek: false,
    waitall: false,
    dontwait: true,
};

fn send_opts(dontwait: bool) -> SendOpts {
    SendOpts {
        dontwait,
        nosignal: true,
        creds_only: false,
        raw: (libc::MSG_NOSIGNAL | if dontwait { libc::MSG_DONTWAIT } else { 0 }) as u32,
    }
}

/// Known bug 1. Input: 10 bytes in the victim's incoming ring (tail 0,
/// head 10) and one pending record {offset: u64::MAX, len: 1}. In
/// `rx_step`, `max = off + len - at` wraps to 0, so every pass reads
/// nothing: poll says readable, a non-blocking read says EAGAIN forever,
/// and a blocking read spins at full CPU (SO_RCVTIMEO never applies) until
/// the peer changes the record.
#[test]
fn known_bug_1_wrapping_record_stalls_reads() {
    let (c, vs, _ps, seg) = accelerated_client(true);
    let fd = vs.as_raw_fd();
    let ring = seg.ring(Dir::ServerToClient);
    assert_eq!(
        ring.producer()
            .push(&mut SrcCursor::new(&[IoSlice::new(b"0123456789")])),
        Ok(10)
    );
    let q = &seg.header().anc[Dir::ServerToClient as usize];
    publish_record(q, u64::MAX, 1);
    let ready = c.readiness(bfd(fd), Some(kernel_view(bfd(fd)))).unwrap();
    assert!(ready.readable, "{ready:?}");
    let r = c
        .recv(bfd(fd), &mut [IoSliceMut::new(&mut [0u8; 10])], NB)
        .done();
    assert_ne!(
        r,
        Some(Err(Errno::AGAIN)),
        "readable, yet the read would block"
    );
}

/// Known bug 2. Input: the victim's outgoing ring corrupt (head 100000,
/// tail 0, capacity 4096), then a sendmsg with ancillary data
/// (`send_with` with a carrier). The record-room loop takes `Corrupt` for
/// "no space": non-blocking, it says EAGAIN and the connection is not
/// reset; blocking (no SO_SNDTIMEO), `wait_tx` finds the ring "ready"
/// (Corrupt) at once and the loop spins at full CPU until the peer dies.
#[test]
fn known_bug_2_ancillary_send_on_corrupt_ring() {
    let (c, vs, ps, seg) = accelerated_client(false);
    let fd = vs.as_raw_fd();
    let c2s = &seg.header().rings[Dir::ClientToServer as usize];
    c2s.head.store(100_000, SeqCst);
    c2s.tail.store(0, SeqCst);
    let control = rights(fd);
    let nb = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    let r = c
        .sendmsg(bfd(fd), &[IoSlice::new(b"x")], &control, nb)
        .done();
    assert_eq!(r, Some(Err(Errno::CONNRESET)), "non-blocking");
    // Blocking: the peer shuts its socket down after 300 ms; a correct
    // victim has failed long before.
    let c = Conn::adopt(bfd(fd), &c.export(false)).unwrap();
    let t0 = Instant::now();
    let (r, took) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = c
                .sendmsg(bfd(fd), &[IoSlice::new(b"x")], &control, libc::MSG_NOSIGNAL)
                .done();
            (r, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        let _ = rustix::net::shutdown(&ps, Shutdown::Both);
        h.join().unwrap()
    });
    assert!(
        took < Duration::from_millis(300) && r == Some(Err(Errno::CONNRESET)),
        "blocking: {r:?} after {took:?}"
    );
}

/// Known bug 3. Input: a server victim whose incoming direction switched
/// (the peer published switch_at 0) but whose outgoing one did not (the
/// peer never set client_state); then the peer corrupts the incoming ring
/// (head 1 << 40) and a read resets the connection. `send_plain_with` (the
/// shim's sendmsg with control data, sendfile, splice) still runs the real
/// send: application bytes go out on a broken connection, where `send`
/// says ECONNRESET.
#[test]
fn known_bug_3_plain_send_on_broken_connection() {
    tune();
    let (vs, ps) = pair();
    let fd = vs.as_raw_fd();
    let c = Conn::server(bfd(fd), true, uid(), -1).expect("server");
    let mut b = [0u8; HELLO_LEN];
    rustix::net::recv(&ps, &mut b, RecvFlags::WAITALL).expect("HELLO");
    let seg = Segment::attach(&Hello::decode(&b).unwrap(), uid()).expect("attach");
    let c2s = &seg.header().rings[Dir::ClientToServer as usize];
    publish_switch(&c2s.flags, 0);
    c2s.head.store(1 << 40, SeqCst);
    let r = c
        .recv(bfd(fd), &mut [IoSliceMut::new(&mut [0u8; 8])], NB)
        .done();
    assert_eq!(r, Some(Err(Errno::CONNRESET)));
    assert!(is_broken(&c, fd));
    let r = c.send_plain_with(|| rustix::net::send(&vs, b"app data", SendFlags::DONTWAIT));
    assert!(matches!(r, None | Some(Err(Errno::CONNRESET))), "{r:?}");
}

/// Known bug 4. Input: an accelerated connection handed over an exec
/// (export, adopt), and the peer stores anything but the segment magic
/// into `magic` (or changes nonce or version). The first send attaches the
/// segment lazily (`seg()`), which fails and marks the connection broken,
/// but `send_with`'s `self.seg()?` returns `None`: "not accelerated, call
/// the real function", so that write goes to the raw socket. The same
/// `?` is in `send_from_fd` and `bytes_unread_by_peer`.
#[test]
fn known_bug_4_failed_reattach_passes_a_send_through() {
    let (c, vs, _ps, seg) = accelerated_client(true);
    let fd = vs.as_raw_fd();
    let line = c.export(false);
    drop(c);
    seg.header().magic.store(0, SeqCst);
    let c = Conn::adopt(bfd(fd), &line).unwrap();
    let r = c
        .send(bfd(fd), &[IoSlice::new(b"x")], send_opts(true))
        .done();
    assert_eq!(r, Some(Err(Errno::CONNRESET)));
}

/// Known bug 5. Input: the victim's incoming ring empty (head = tail = 0),
/// one pending record {offset 0, len 5} and a carrier byte (2) at the head
/// of the victim's socket, i.e. an ancillary message whose data never
/// comes. A blocking read: `rx_step` reads nothing, `wait_rx` sees the
/// carrier and the pending record and returns at once, and round it goes
/// at full CPU, ignoring SO_RCVTIMEO, even after the peer closes (the
/// carrier stays queued). The read below never returns (its thread is
/// left spinning when this test fails).
#[test]
fn known_bug_5_record_without_data_spins_reader() {
    let (c, vs, ps, seg) = accelerated_client(false);
    let fd = vs.as_raw_fd();
    rustix::net::sockopt::set_socket_timeout(
        &vs,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(20)),
    )
    .unwrap();
    rustix::net::send(&ps, &[CARRIER], SendFlags::empty()).unwrap();
    let q = &seg.header().anc[Dir::ServerToClient as usize];
    publish_record(q, 0, 5);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = c
            .recv(
                bfd(fd),
                &mut [IoSliceMut::new(&mut [0u8; 5])],
                RecvOpts::default(),
            )
            .done();
        let _ = tx.send(r);
        drop((c, vs, ps, seg));
    });
    let r = rx.recv_timeout(Duration::from_secs(2));
    assert!(
        r.is_ok(),
        "a blocking read with SO_RCVTIMEO 20 ms has not returned in 2 s"
    );
}

/// Record offsets near u64::MAX: the distances `rx_step` computes wrap or
/// are checked, so a debug build (which aborts on overflow) reads on as a
/// release build does.
#[test]
fn record_offsets_near_u64_max() {
    let (c, vs, _ps, seg) = accelerated_client(true);
    let fd = vs.as_raw_fd();
    let ring = seg.ring(Dir::ServerToClient);
    assert_eq!(
        ring.producer()
            .push(&mut SrcCursor::new(&[IoSlice::new(b"0123456789")])),
        Ok(10)
    );
    let q = &seg.header().anc[Dir::ServerToClient as usize];
    publish_record(q, u64::MAX - 2, 5);
    let r = c
        .recv(bfd(fd), &mut [IoSliceMut::new(&mut [0u8; 10])], NB)
        .done();
    assert!(
        matches!(r, Some(Ok(1..)) | Some(Err(Errno::CONNRESET))),
        "{r:?}"
    );
}
