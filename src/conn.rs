//! One accelerated connection: negotiation, the per-direction switch from the
//! socket to the ring, and the kernel's stream semantics on top of the rings.
//!
//! Each direction switches separately (DESIGN-NOTES 3). Until its writer
//! publishes `switch_at` (the count of plain bytes it sent), a direction is
//! an ordinary socket stream. The reader consumes exactly that many plain
//! bytes, then reads the ring. After the switch the socket carries only
//! one-byte doorbells in that direction; it stays open for the connection's
//! life as readiness source, liveness signal and fallback.
//!
//! Waking (Dekker style, SeqCst on both sides):
//! - readers and poll/epoll waiters set a `*_waiting` flag, re-check the
//!   ring, and sleep on the socket; the other side swaps the flag to 0 and
//!   sends one doorbell byte;
//! - blocking writers sleep on a shared futex (`space_seq`), so draining
//!   doorbells on the socket can never steal a writer's wake-up.

use crate::config;
use crate::layout::{
    ANC_CREDS_ONLY, ANC_SLOTS, CARRIER, CLIENT_ATTACHED, CLIENT_NONE, CLIENT_REFUSED, Dir,
    RD_RELEASED, RD_SHUT, RingFlags, SERVER_CONFIRMED, SERVER_WITHDRAWN,
};
use crate::protocol;
use crate::ring::{DstCursor, Ring, SrcCursor};
use crate::segment::Segment;
use crate::side::{ShmGuard, Side, SideBlock};
use crate::signals;
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use crate::sync::fence;
use crate::sys;
use crate::wire::{self, FirstBytes, HELLO_LEN};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{BorrowedFd, RawFd};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use std::io::{IoSlice, IoSliceMut};
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Client: waiting for the server's first bytes (HELLO or data).
const PENDING: u8 = 0;
/// Server: HELLO sent, client not attached yet.
const OFFERED: u8 = 1;
/// Segment mapped on this side.
const ATTACHED: u8 = 2;
/// Not accelerated: every call passes straight to the kernel.
const PLAIN: u8 = 3;
/// The shared header was corrupted: every call fails.
const BROKEN: u8 = 4;

/// A blocked writer re-checks liveness at least this often.
const WRITER_NAP_NS: u64 = 100_000_000;
/// How often a writer polls the socket for a dead peer.
const LIVENESS_NS: u64 = 20_000_000;
/// `wr_closed` value of a side that closed with unread data (ECONNRESET).
const CLOSED_RESET: u32 = 2;
/// Side block count of a connection adopted after exec while other
/// processes, counted in another block, still hold it.
const SHARED_UNCOUNTED: u32 = 1 << 30;
/// How often a pending client peeks for HELLO from its write path.
const HELLO_PEEK_NS: u64 = 200_000;
/// Writes up to this size go into the ring whole or not at all (capped at
/// half the ring), as the kernel appends a Unix stream write in whole
/// buffers of about 32 KiB: concurrent small writers (threads, processes,
/// a signal handler) never interleave inside one write.
const ATOMIC_WRITE: usize = 32 << 10;

#[derive(Clone, Copy, Debug, Default)]
pub struct RecvOpts {
    pub peek: bool,
    pub waitall: bool,
    pub dontwait: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SendOpts {
    pub dontwait: bool,
    pub nosignal: bool,
    /// The ancillary data is SCM_CREDENTIALS only (see `ANC_CREDS_ONLY`).
    pub creds_only: bool,
    /// The caller's flags, forwarded as they are while the direction is
    /// still a plain socket.
    pub raw: u32,
}

/// Poll-style readiness of an accelerated connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    pub rdhup: bool,
    pub hup: bool,
    pub err: bool,
}

#[derive(Default, Clone, Copy, PartialEq)]
struct RxState {
    /// Plain bytes consumed in this direction (after HELLO for s2c).
    plain_read: u64,
    /// The writer's published `switch_at`, once seen.
    limit: Option<u64>,
}

#[derive(Default, Clone, Copy, PartialEq)]
struct TxState {
    /// Plain bytes sent in this direction (after HELLO for s2c).
    plain_written: u64,
}

pub struct Conn {
    /// The descriptor the connection was made on (for log lines only).
    fd: RawFd,
    role: Role,
    /// Shared by every process of our side (fork), never by the peer.
    side: Side,
    /// This process's mapping of the segment, attached lazily when another
    /// process of our side did the attaching.
    seg: OnceLock<Segment>,
    next_hello_peek: AtomicU64,
    next_live_check: AtomicU64,
    /// Writes since the last liveness look (the clock is read every 64).
    tx_ops: AtomicU32,
    /// Cached remote index: the tx ring's tail (the rx side loads the
    /// head once per pass anyway, for the ancillary ordering).
    tx_tail_cache: AtomicU64,
    /// The peer's read position (+1) when a non-blocking write last found
    /// the ring full: until the peer reads, nothing more fits, as a kernel
    /// socket that answered EAGAIN takes nothing until its reader reads.
    full_at: AtomicU64,
    /// Descriptors of this process naming the connection (dup and friends).
    aliases: AtomicU32,
    /// This process has given up its share (its last descriptor closed).
    closed: AtomicBool,
    /// Current spin budget in ns (see [`Conn::spin`]).
    spin_budget: AtomicU64,
    /// The socket's inode: names the connection across dup2 and exec.
    ino: AtomicU64,
}

/// Plain-phase state kept in the shared side block, loaded when its lock
/// is taken and stored back when it is released.
trait SideState: Copy + PartialEq {
    fn load(b: &SideBlock) -> Self;
    fn store(&self, b: &SideBlock);
}

impl SideState for RxState {
    fn load(b: &SideBlock) -> Self {
        RxState {
            plain_read: b.plain_read.load(Relaxed),
            limit: b.limit_plus1.load(Relaxed).checked_sub(1),
        }
    }
    fn store(&self, b: &SideBlock) {
        b.plain_read.store(self.plain_read, Relaxed);
        b.limit_plus1
            .store(self.limit.map_or(0, |l| l + 1), Relaxed);
    }
}

impl SideState for TxState {
    fn load(b: &SideBlock) -> Self {
        TxState {
            plain_written: b.plain_written.load(Relaxed),
        }
    }
    fn store(&self, b: &SideBlock) {
        b.plain_written.store(self.plain_written, Relaxed);
    }
}

/// A side lock held, with the state it guards loaded; stored back on
/// release only if it changed (in the ring phase it never does).
struct Locked<'a, T: SideState> {
    _lock: ShmGuard<'a>,
    block: &'a SideBlock,
    st: T,
    orig: T,
}

impl<'a, T: SideState> Locked<'a, T> {
    fn new(lock: ShmGuard<'a>, block: &'a SideBlock) -> Self {
        let st = T::load(block);
        Locked {
            _lock: lock,
            block,
            st,
            orig: st,
        }
    }
}

impl<T: SideState> Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.st
    }
}

impl<T: SideState> DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.st
    }
}

impl<T: SideState> Drop for Locked<'_, T> {
    fn drop(&mut self) {
        if self.st != self.orig {
            self.st.store(self.block);
        }
    }
}

type RxGuard<'a> = Locked<'a, RxState>;
type TxGuard<'a> = Locked<'a, TxState>;

/// Receives one byte that should be the carrier of ancillary data (`true`:
/// MSG_PEEK) into the application's control buffer (without one,
/// descriptors are discarded, as the kernel does for read()). Returns
/// whether it was the carrier (else it was a doorbell, consumed harmlessly).
pub type CarrierRecv<'a> = dyn FnMut(bool) -> Result<bool, Errno> + 'a;
/// Sends the one-byte carrier with the application's control messages.
pub type CarrierSend<'a> = dyn FnMut() -> Result<(), Errno> + 'a;

/// What one non-blocking pass over the incoming direction found.
enum Step {
    /// Data, and the call must end here (after a message with ancillary
    /// data, as the kernel's does).
    Stop,
    Data,
    Eof,
    Empty,
}

impl Conn {
    /// A client socket that connected with the marker bound; HELLO may
    /// follow. Errors only if the side block cannot be made (then stay plain).
    pub fn client(fd: RawFd, nonblock: bool) -> Result<Conn, String> {
        Self::new(fd, Role::Client, PENDING, nonblock)
    }

    /// A server socket whose peer carries the marker: creates the segment and
    /// sends HELLO. On error the connection stays plain; the reason is returned
    /// for the log.
    pub fn server(fd: RawFd, nonblock: bool, peer_uid: u32) -> Result<Conn, String> {
        let cap = config::ring_size();
        let me = rustix::process::geteuid().as_raw();
        let grant = (peer_uid != me).then_some(peer_uid);
        let c = Self::new(fd, Role::Server, OFFERED, nonblock)?;
        let (seg, hello) =
            Segment::create(cap, cap, grant).map_err(|e| format!("cannot create segment: {e}"))?;
        match rustix::net::send(
            sock(fd),
            &hello.encode(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(HELLO_LEN) => {}
            // A fresh socket's buffer is empty, so 40 bytes never split.
            Ok(n) => return Err(format!("HELLO send was short ({n} bytes)")),
            Err(e) => return Err(format!("cannot send HELLO: {e}")),
        }
        c.remember_segment(&hello);
        let _ = c.seg.set(seg);
        crate::log!(
            crate::log::DEBUG,
            "fd {fd}: offered shmid {} ({} KiB per direction)",
            hello.shmid,
            cap >> 10
        );
        Ok(c)
    }

    fn new(fd: RawFd, role: Role, state: u8, nonblock: bool) -> Result<Conn, String> {
        let side = Side::new().map_err(|e| format!("cannot map side state: {e}"))?;
        side.block().state.store(state, Release);
        side.block().nonblock.store(nonblock, Release);
        Ok(Conn {
            fd,
            role,
            side,
            seg: OnceLock::new(),
            next_hello_peek: AtomicU64::new(0),
            next_live_check: AtomicU64::new(0),
            tx_ops: AtomicU32::new(0),
            tx_tail_cache: AtomicU64::new(0),
            full_at: AtomicU64::new(0),
            aliases: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            spin_budget: AtomicU64::new(u64::MAX),
            ino: AtomicU64::new(rustix::fs::fstat(sock(fd)).map_or(0, |st| st.st_ino)),
        })
    }

    /// Spins before a blocking wait, adaptively: a spin that ended in
    /// sleep anyway halves this connection's budget, one that caught the
    /// event doubles it (up to TSSS_SPIN_US). Round trips keep spinning;
    /// idle or oversubscribed connections stop burning CPU others need.
    /// The budget never falls below a sixteenth: at zero no spin could
    /// ever catch an event again, and a connection that idled once would
    /// pay a sleep and a wake-up on every later round trip.
    fn spin(&self, ready: impl FnMut() -> bool) -> bool {
        let max = config::spin_ns();
        let cur = self.spin_budget.load(Relaxed).min(max);
        let caught = spin_until(cur, ready);
        let next = if caught {
            cur.saturating_mul(2).max(1000).min(max)
        } else {
            (cur / 2).max(max / 16)
        };
        self.spin_budget.store(next, Relaxed);
        caught
    }

    fn sb(&self) -> &SideBlock {
        self.side.block()
    }

    /// Stores where the segment is, for the other processes of our side.
    fn remember_segment(&self, h: &wire::Hello) {
        let b = self.sb();
        b.seg_shmid.store(h.shmid as u64, Relaxed);
        b.seg_nonce.store(h.nonce, Relaxed);
        b.seg_caps
            .store(u64::from(h.cap_c2s) << 32 | u64::from(h.cap_s2c), Release);
    }

    /// This process's mapping of the segment, attaching it if another
    /// process of our side made or attached it.
    fn seg(&self) -> Option<&Segment> {
        if let Some(s) = self.seg.get() {
            return Some(s);
        }
        if !matches!(self.sb().state.load(Acquire), OFFERED | ATTACHED) {
            return None;
        }
        let b = self.sb();
        let caps = b.seg_caps.load(Acquire);
        if caps == 0 {
            return None;
        }
        let h = wire::Hello {
            version: wire::PROTO_VERSION,
            hdr_size: crate::layout::HDR_SIZE as u32,
            shmid: b.seg_shmid.load(Relaxed) as i32,
            cap_c2s: (caps >> 32) as u32,
            cap_s2c: caps as u32,
            nonce: b.seg_nonce.load(Relaxed),
        };
        let me = rustix::process::geteuid().as_raw();
        match Segment::attach(&h, me) {
            Ok(s) => {
                let _ = self.seg.set(s);
                self.seg.get()
            }
            Err(e) => {
                if self.sb().state.load(Acquire) == OFFERED {
                    // The segment vanished before the client attached (our
                    // only mapping went with an exec): nothing ever went
                    // through a ring, and the client stays plain too.
                    self.go_plain(format_args!(
                        "segment {} gone before the client attached ({e})",
                        h.shmid
                    ));
                } else {
                    crate::log!(
                        crate::log::INFO,
                        "fd {}: cannot attach segment {}: {e}",
                        self.fd,
                        h.shmid
                    );
                    self.sb().state.store(BROKEN, Release);
                }
                None
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// No longer accelerated: the caller should forget this connection and
    /// pass every call to the kernel.
    pub fn is_plain(&self) -> bool {
        self.sb().state.load(Acquire) == PLAIN
    }

    /// Both directions run over the ring.
    pub fn is_accelerated(&self) -> bool {
        self.sb().rx_ring.load(Acquire) && self.sb().tx_ring.load(Acquire)
    }

    pub fn set_nonblocking(&self, on: bool) {
        self.sb().nonblock.store(on, Relaxed);
    }

    pub fn nonblocking(&self) -> bool {
        self.sb().nonblock.load(Relaxed)
    }

    pub fn shmid(&self) -> Option<i32> {
        self.seg().map(Segment::shmid)
    }

    fn rx_dir(&self) -> Dir {
        match self.role {
            Role::Client => Dir::ServerToClient,
            Role::Server => Dir::ClientToServer,
        }
    }

    fn tx_dir(&self) -> Dir {
        match self.role {
            Role::Client => Dir::ClientToServer,
            Role::Server => Dir::ServerToClient,
        }
    }

    fn lock_rx(&self) -> RxGuard<'_> {
        Locked::new(self.sb().rx_lock.lock(), self.sb())
    }

    fn lock_tx(&self) -> TxGuard<'_> {
        Locked::new(self.sb().tx_lock.lock(), self.sb())
    }

    fn try_lock_rx(&self) -> Option<RxGuard<'_>> {
        self.sb()
            .rx_lock
            .try_lock()
            .map(|g| Locked::new(g, self.sb()))
    }

    fn try_lock_tx(&self) -> Option<TxGuard<'_>> {
        self.sb()
            .tx_lock
            .try_lock()
            .map(|g| Locked::new(g, self.sb()))
    }

    fn go_plain(&self, why: core::fmt::Arguments<'_>) {
        self.sb().state.store(PLAIN, Release);
        crate::log!(crate::log::INFO, "fd {}: plain: {}", self.fd, why);
    }

    fn broken(&self) -> Errno {
        if self.sb().state.swap(BROKEN, AcqRel) != BROKEN {
            crate::log!(
                crate::log::INFO,
                "fd {}: shared segment corrupted by the peer; connection reset",
                self.fd
            );
        }
        Errno::CONNRESET
    }

    // ---------------------------------------------------------------- negotiation

    /// Client, rx lock held: looks at the first bytes from the server.
    /// `take`: use the offer; else a HELLO found is consumed and the
    /// connection stays plain (before an exec).
    fn resolve_hello(&self, fd: RawFd, rx: &mut RxState, take: bool) {
        if self.sb().state.load(Acquire) != PENDING {
            return;
        }
        let mut buf = [0u8; HELLO_LEN];
        let n = match rustix::net::recv(sock(fd), &mut buf, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((_, n)) => n,
            Err(Errno::AGAIN | Errno::INTR) => return,
            Err(e) => return self.go_plain(format_args!("socket error before HELLO: {e}")),
        };
        if n == 0 {
            // It may have died between creating a segment and marking it.
            crate::segment::sweep_orphans();
            return self.go_plain(format_args!("peer closed before offering"));
        }
        let hello = match wire::classify_first_bytes(&buf[..n]) {
            FirstBytes::Plain => {
                return self.go_plain(format_args!(
                    "server does not run tsss (first bytes are application data)"
                ));
            }
            FirstBytes::Hello(h) => h,
        };
        // HELLO is not application data whatever happens next: consume it.
        match rustix::net::recv(sock(fd), &mut buf, RecvFlags::DONTWAIT) {
            Ok((_, HELLO_LEN)) => {}
            _ => {
                self.sb().state.store(BROKEN, Release);
                return;
            }
        }
        let hello = match hello {
            Ok(h) => h,
            Err(e) => return self.go_plain(format_args!("invalid HELLO ({e})")),
        };
        let refuse = if !take {
            Some("the offer came before an exec: the new program gets a plain socket")
        } else if self.sb().shut_wr.load(Acquire) {
            Some("already shut down for writing")
        } else if self.sb().shut_rd.load(Acquire) {
            // The server would switch its writes to a ring nobody reads;
            // the kernel already answers them with EPIPE.
            Some("already shut down for reading")
        } else {
            None
        };
        let me = rustix::process::geteuid().as_raw();
        let seg = match Segment::attach(&hello, me) {
            Ok(s) => s,
            Err(e) => {
                return self.go_plain(format_args!("cannot use segment {}: {e}", hello.shmid));
            }
        };
        let word = &seg.header().client_state;
        if let Some(why) = refuse {
            // Tell the server, which would otherwise keep its offer open.
            let _ = protocol::negotiate(word, CLIENT_NONE, CLIENT_REFUSED);
            return self.go_plain(format_args!("{why}"));
        }
        if protocol::negotiate(word, CLIENT_NONE, CLIENT_ATTACHED) != CLIENT_ATTACHED {
            return self.go_plain(format_args!(
                "the server withdrew its offer of segment {}",
                hello.shmid
            ));
        }
        self.remember_segment(&hello);
        let _ = self.seg.set(seg);
        rx.plain_read = 0;
        self.sb().state.store(ATTACHED, Release);
        crate::log!(
            crate::log::DEBUG,
            "fd {}: attached shmid {}; waiting for the server to confirm",
            self.fd,
            hello.shmid
        );
        if let Some(mut tx) = self.try_lock_tx() {
            self.progress_tx(fd, &mut tx);
        }
    }

    /// Tx lock held: switches our writes to the ring once allowed: both
    /// sides' once the server confirmed the client's attach.
    fn progress_tx(&self, fd: RawFd, tx: &mut TxState) {
        if self.sb().tx_ring.load(Relaxed) || self.sb().shut_wr.load(Relaxed) {
            return;
        }
        let Some(seg) = self.seg() else { return };
        let word = &seg.header().client_state;
        match self.role {
            Role::Client => {
                // Attached: our switch is due once confirmed (a broken
                // connection never switches).
                if self.sb().state.load(Acquire) != ATTACHED {
                    return;
                }
                match word.load(Acquire) {
                    SERVER_CONFIRMED => crate::log!(
                        crate::log::INFO,
                        "fd {}: accelerated (client, shmid {}, rings {}+{} KiB)",
                        self.fd,
                        seg.shmid(),
                        seg.cap(Dir::ClientToServer) >> 10,
                        seg.cap(Dir::ServerToClient) >> 10
                    ),
                    SERVER_WITHDRAWN => {
                        return self.go_plain(format_args!(
                            "the server withdrew its offer (an exec before it confirmed)"
                        ));
                    }
                    _ => return,
                }
            }
            Role::Server => {
                if self.sb().state.load(Acquire) == OFFERED {
                    match word.load(Acquire) {
                        CLIENT_NONE => return,
                        CLIENT_ATTACHED => {}
                        CLIENT_REFUSED => {
                            return self.go_plain(format_args!("the client refused the offer"));
                        }
                        _ => return self.go_plain(format_args!("invalid negotiation word")),
                    }
                    match protocol::negotiate(word, CLIENT_ATTACHED, SERVER_CONFIRMED) {
                        SERVER_CONFIRMED => {}
                        CLIENT_REFUSED => {
                            return self.go_plain(format_args!("the client refused the offer"));
                        }
                        _ => return self.go_plain(format_args!("invalid negotiation word")),
                    }
                    if self
                        .sb()
                        .state
                        .compare_exchange(OFFERED, ATTACHED, AcqRel, Relaxed)
                        .is_ok()
                    {
                        crate::log!(
                            crate::log::INFO,
                            "fd {}: accelerated (server, shmid {})",
                            self.fd,
                            seg.shmid()
                        );
                    }
                }
                if self.sb().state.load(Acquire) != ATTACHED {
                    return;
                }
            }
        }
        let flags = &seg.ring(self.tx_dir()).ctrl().flags;
        if self.sb().plain_eagain.load(Relaxed) && !kernel_view(fd).contains(PollFlags::OUT) {
            let read = flags.plain_read.load(Acquire);
            self.sb().plain_full.store(read.wrapping_add(1), Relaxed);
        }
        // Published before any control byte goes out on the socket.
        protocol::publish_switch(flags, tx.plain_written);
        self.sb().tx_ring.store(true, Release);
        // Wakes a reader sleeping on the socket so it sees the switch.
        self.bell(fd);
    }

    /// Before an exec or spawn hands this connection to a new program,
    /// which may not run tsss or may read it with stdio (glibc's internal
    /// reads cannot be intercepted): a negotiation not yet confirmed ends
    /// now, both sides plain; a confirmed one is finished, so that the new
    /// image adopts a connection in a settled state. Returns whether the
    /// connection is still ours to hand over (false: plain now).
    pub fn settle_for_exec(&self, fd: RawFd) -> bool {
        let mut rx = self.lock_rx();
        let mut tx = self.lock_tx();
        match (self.sb().state.load(Acquire), self.role) {
            (PLAIN, _) => return false,
            (BROKEN, _) => return true,
            // No offer yet (the server has not accepted): the new image
            // takes HELLO, if it calls into tsss at all.
            (PENDING, Role::Client) => {
                self.resolve_hello(fd, &mut rx, false);
                return self.sb().state.load(Acquire) != PLAIN;
            }
            (ATTACHED, Role::Client) if !self.sb().tx_ring.load(Acquire) => {
                let Some(seg) = self.seg() else { return false };
                let word = &seg.header().client_state;
                match protocol::negotiate(word, CLIENT_ATTACHED, CLIENT_REFUSED) {
                    CLIENT_REFUSED => {
                        self.go_plain(format_args!(
                            "exec before the server confirmed: the new program gets a plain socket"
                        ));
                        return false;
                    }
                    SERVER_CONFIRMED => self.progress_tx(fd, &mut tx),
                    _ => {
                        self.go_plain(format_args!("the server withdrew its offer"));
                        return false;
                    }
                }
            }
            (OFFERED, Role::Server) => {
                let Some(seg) = self.seg() else {
                    return self.sb().state.load(Acquire) != PLAIN;
                };
                let word = &seg.header().client_state;
                let now = loop {
                    match word.load(Acquire) {
                        v @ (CLIENT_NONE | CLIENT_ATTACHED) => {
                            // The client may attach in between: try again.
                            if protocol::negotiate(word, v, SERVER_WITHDRAWN) == SERVER_WITHDRAWN {
                                break SERVER_WITHDRAWN;
                            }
                        }
                        v => break v,
                    }
                };
                if now == SERVER_WITHDRAWN || now == CLIENT_REFUSED {
                    self.go_plain(format_args!(
                        "exec before the client's attach was confirmed: the new program gets a plain socket"
                    ));
                    return false;
                }
                // Only a hostile peer writes anything else.
                self.go_plain(format_args!("invalid negotiation word {now}"));
                return false;
            }
            _ => {}
        }
        self.sb().state.load(Acquire) != PLAIN
    }

    /// Rx lock held: counts `n` plain bytes read, and tells the peer's
    /// SIOCOUTQ.
    fn read_plain(&self, rx: &mut RxState, n: u64) {
        rx.plain_read += n;
        if let Some(seg) = self.seg() {
            seg.ring(self.rx_dir())
                .ctrl()
                .flags
                .plain_read
                .store(rx.plain_read, Release);
        }
    }

    /// Tx lock held: counts a plain send's bytes, and whether the kernel's
    /// buffer was full (see `SideBlock::plain_full`).
    fn sent_plain(&self, tx: &mut TxState, r: &Result<usize, Errno>) {
        let full = match r {
            // An empty send says nothing of the buffer.
            Ok(0) => return,
            Ok(n) => {
                tx.plain_written += *n as u64;
                false
            }
            Err(e) => *e == Errno::AGAIN,
        };
        self.sb().plain_eagain.store(full, Relaxed);
    }

    /// Rx lock held: enters the ring phase once every plain byte is read.
    fn progress_rx(&self, fd: RawFd, rx: &mut RxState) {
        if self.sb().rx_ring.load(Relaxed) {
            return;
        }
        if self.role == Role::Client && self.sb().state.load(Acquire) == PENDING {
            self.resolve_hello(fd, rx, true);
        }
        let Some(seg) = self.seg() else { return };
        if rx.limit.is_none() {
            rx.limit = protocol::switch_point(&seg.ring(self.rx_dir()).ctrl().flags);
        }
        if rx.limit == Some(rx.plain_read) {
            self.sb().rx_ring.store(true, Release);
        }
        // A side that only reads confirms (server) or learns of the
        // confirmation (client) here. After the limit: the server confirms
        // before it publishes its switch, so a client that has seen the
        // switch sees the confirmation too (and later calls return above).
        if !self.sb().tx_ring.load(Relaxed)
            && let Some(mut tx) = self.try_lock_tx()
        {
            self.progress_tx(fd, &mut tx);
        }
    }

    /// Runs whatever negotiation step is due, without blocking.
    pub fn progress(&self, fd: RawFd) {
        if let Some(mut rx) = self.try_lock_rx() {
            self.progress_rx(fd, &mut rx);
        }
        if let Some(mut tx) = self.try_lock_tx() {
            self.progress_tx(fd, &mut tx);
        }
    }

    // ---------------------------------------------------------------- doorbells

    /// One control byte to the peer; only once our direction is switched, so
    /// it can never land in the application's stream.
    fn bell(&self, fd: RawFd) {
        if self.sb().tx_ring.load(Acquire) {
            let _ = rustix::net::send(sock(fd), &[0u8], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        }
    }

    /// After producing: wake a reader that declared itself waiting.
    fn data_bell(&self, fd: RawFd, f: &RingFlags) {
        if protocol::take_waiter(&f.reader_waiting) {
            self.bell(fd);
        }
    }

    /// After consuming: wake writers waiting for space.
    fn space_bell(&self, fd: RawFd, ring: &Ring<'_>) {
        let f = &ring.ctrl().flags;
        if protocol::take_waiter(&f.writer_sleeping) {
            wake_space_sleepers(f);
        }
        if f.writer_waiting.load(Relaxed) != 0
            && ring.writable().is_ok_and(|n| n >= ring.capacity() / 2)
            && protocol::take_waiter(&f.writer_waiting)
        {
            self.bell(fd);
        }
    }

    /// Rx ring phase, rx lock held: reads and discards control bytes.
    fn drain_bells(&self, fd: RawFd) {
        let mut buf = [0u8; 64];
        loop {
            // Peek first: a carrier of ancillary data (non-zero) must stay
            // until the read that reaches its message takes it.
            let n = match rustix::net::recv(
                sock(fd),
                &mut buf,
                RecvFlags::DONTWAIT | RecvFlags::PEEK,
            ) {
                Ok((_, 0)) => {
                    self.socket_eof(fd);
                    return;
                }
                Ok((_, n)) => n,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    // The kernel's error is read once, and this read took
                    // it: keep it if it was about bytes of the program's.
                    if e == Errno::CONNRESET && !self.kernel_err_not_ours() {
                        self.sb().kernel_reset.store(true, Release);
                    }
                    self.sb().sock_eof.store(true, Release);
                    return;
                }
            };
            let bells = buf[..n].iter().take_while(|&&b| b == 0).count();
            if bells > 0 {
                let _ = rustix::net::recv(sock(fd), &mut buf[..bells], RecvFlags::DONTWAIT);
            }
            if bells < n && buf[bells] != CARRIER {
                // Neither doorbell nor carrier: bytes written behind our
                // back (a broken peer, or a process without tsss sharing
                // the socket). Dropping them would lose data silently.
                self.broken();
                return;
            }
            // All taken: look again, for more or for the EOF behind them
            // (a peer that rang, then died).
            if bells < n {
                return;
            }
        }
    }

    /// Takes the carrier of the ancillary data that came with the message
    /// a read just reached. Doorbells are rare in a busy stream, so the
    /// carrier is usually the first byte: one recvmsg; a doorbell taken
    /// instead is harmless, and we try again.
    fn take_carrier(
        &self,
        fd: RawFd,
        peek: bool,
        carrier: &mut CarrierRecv<'_>,
    ) -> Result<(), Errno> {
        if peek {
            // A peek cannot skip doorbells: drain them first.
            self.drain_bells(fd);
        }
        // The producer sends the carrier before it publishes the record, so
        // it is queued; anything else is a broken peer.
        for _ in 0..4096 {
            match carrier(peek) {
                Ok(true) => return Ok(()),
                Ok(false) if !peek => continue,
                _ => break,
            }
        }
        Err(self.broken())
    }

    // ---------------------------------------------------------------- receive

    /// `recv`-family semantics. `None` means "not accelerated (any more):
    /// call the real function". Ancillary data reached on the way is
    /// discarded, as the kernel does for read().
    pub fn recv(
        &self,
        fd: RawFd,
        bufs: &mut [IoSliceMut<'_>],
        o: RecvOpts,
    ) -> Option<Result<usize, Errno>> {
        self.recv_with(fd, &mut |peek| discard_carrier(fd, peek), bufs, o)
    }

    /// [`recv`](Self::recv) for recvmsg: `carrier` receives the ancillary
    /// data of a message the read reaches.
    pub fn recv_with(
        &self,
        fd: RawFd,
        carrier: &mut CarrierRecv<'_>,
        bufs: &mut [IoSliceMut<'_>],
        o: RecvOpts,
    ) -> Option<Result<usize, Errno>> {
        let mut dst = DstCursor::new(bufs);
        let nonblock = o.dontwait || self.nonblocking();
        let target = if o.waitall && !o.peek {
            dst.remaining()
        } else {
            1
        };
        loop {
            match self.sb().state.load(Acquire) {
                PLAIN => {
                    return if dst.filled() == 0 {
                        None
                    } else {
                        Some(Ok(dst.filled()))
                    };
                }
                BROKEN => return Some(Err(Errno::CONNRESET)),
                _ => {}
            }
            if dst.remaining() == 0 && dst.filled() > 0 {
                return Some(Ok(dst.filled()));
            }
            let step = if dst.remaining() == 0 {
                // recv(len 0) waits like a read, then returns 0.
                let mut b = [0u8; 1];
                let mut probe = [IoSliceMut::new(&mut b)];
                let mut probe = DstCursor::new(&mut probe);
                let mut rx = self.lock_rx();
                self.progress_rx(fd, &mut rx);
                match self.sb().state.load(Acquire) {
                    PENDING => Ok(Step::Empty),
                    PLAIN => continue,
                    _ => self.rx_step(fd, carrier, &mut rx, &mut probe, true),
                }
                .map(|s| match s {
                    Step::Data | Step::Stop => Step::Eof,
                    other => other,
                })
            } else {
                let mut rx = self.lock_rx();
                self.progress_rx(fd, &mut rx);
                match self.sb().state.load(Acquire) {
                    PENDING => Ok(Step::Empty),
                    PLAIN => continue,
                    _ => self.rx_step(fd, carrier, &mut rx, &mut dst, o.peek),
                }
            };
            match step {
                Err(e) => {
                    return Some(partial(dst.filled(), e));
                }
                Ok(Step::Eof | Step::Stop) => return Some(Ok(dst.filled())),
                Ok(Step::Data) if dst.filled() >= target => return Some(Ok(dst.filled())),
                Ok(Step::Data) => continue,
                Ok(Step::Empty) => {}
            }
            if nonblock {
                return Some(partial(dst.filled(), Errno::AGAIN));
            }
            if let Err(e) = self.wait_rx(fd) {
                return Some(partial(dst.filled(), e));
            }
        }
    }

    /// A receive that carries ancillary data (recvmsg with a control
    /// buffer) while our incoming direction is still a plain socket: runs
    /// `f(max)`, the real recvmsg with its data capped at `max` bytes, so
    /// the kernel hands over descriptors and credentials itself and the
    /// switch point is never crossed. `None`: HELLO still unread, or the
    /// direction already runs over the ring. With the result: whether the
    /// call stopped exactly at the switch point (the caller may go on
    /// reading from the ring, as the kernel's call would have).
    pub fn recv_plain_with(
        &self,
        fd: RawFd,
        nonblock_call: bool,
        peek: bool,
        f: impl FnOnce(usize) -> Result<usize, Errno>,
    ) -> Option<(Result<usize, Errno>, bool)> {
        let mut f = Some(f);
        loop {
            {
                let mut rx = self.lock_rx();
                self.progress_rx(fd, &mut rx);
                let st = self.sb().state.load(Acquire);
                if st == PENDING {
                    // HELLO not here yet: wait for the first bytes rather than
                    // let a control-less read take the first message.
                    drop(rx);
                    if nonblock_call || self.nonblocking() {
                        return Some((Err(Errno::AGAIN), false));
                    }
                    if let Err(e) = self.wait_rx(fd) {
                        return Some((Err(e), false));
                    }
                    continue;
                }
                if st != OFFERED && st != ATTACHED || self.sb().rx_ring.load(Acquire) {
                    return None;
                }
                let queued = rustix::io::ioctl_fionread(sock(fd)).unwrap_or(0) as usize;
                // Bytes seen before the limit is published are data.
                let limit = rx.limit.or_else(|| {
                    let l = self
                        .seg()
                        .and_then(|s| protocol::switch_point(&s.ring(self.rx_dir()).ctrl().flags));
                    rx.limit = l;
                    l
                });
                let allowed = match limit {
                    Some(l) => (l.saturating_sub(rx.plain_read)) as usize,
                    None => queued,
                };
                let at_eof = allowed == 0
                    && limit.is_none()
                    && matches!(
                        rustix::net::recv(
                            sock(fd),
                            &mut [0u8; 1],
                            RecvFlags::PEEK | RecvFlags::DONTWAIT
                        ),
                        Ok((_, 0))
                    );
                if allowed > 0 || at_eof {
                    // At EOF the real call just returns 0.
                    let r = (f.take()?)(allowed.max(1));
                    let n = *r.as_ref().unwrap_or(&0) as u64;
                    let at_switch = limit.is_some_and(|l| rx.plain_read + n == l);
                    if !peek {
                        self.read_plain(&mut rx, n);
                    }
                    return Some((r, at_switch));
                }
                if limit.is_some() {
                    // Every plain byte was read: the ring takes over.
                    return None;
                }
            }
            if nonblock_call || self.nonblocking() {
                return Some((Err(Errno::AGAIN), false));
            }
            if let Err(e) = self.wait_rx(fd) {
                return Some((Err(e), false));
            }
        }
    }

    /// After a peek that returned the last `got` plain bytes before the
    /// switch point: peeks on into the ring, as the kernel's peek would go
    /// on into the next bytes. Stops before a message with ancillary data
    /// (its carrier sits behind the unread plain bytes on the socket).
    pub fn peek_past_switch(&self, got: usize, bufs: &mut [IoSliceMut<'_>]) -> usize {
        let rx = self.lock_rx();
        let (Some(l), Some(seg)) = (rx.limit, self.seg()) else {
            return 0;
        };
        if rx.plain_read + got as u64 != l {
            return 0;
        }
        self.peek_ring_start(seg, &mut DstCursor::new(bufs))
            .unwrap_or(0)
    }

    /// Peeks the ring's first bytes, up to the next message with ancillary
    /// data (its carrier sits behind any unread plain bytes).
    fn peek_ring_start(
        &self,
        seg: &Segment,
        dst: &mut DstCursor<'_, '_>,
    ) -> Result<usize, crate::ring::Corrupt> {
        let ring = seg.ring(self.rx_dir());
        let anc = &seg.header().anc[self.rx_dir() as usize];
        let (at, head) = (ring.tail(), ring.head());
        let (qh, qt) = (anc.head.load(Acquire), anc.tail.load(Relaxed));
        let max = if qh == qt {
            usize::MAX
        } else {
            let off = anc.recs[(qt % ANC_SLOTS as u64) as usize]
                .offset
                .load(Acquire);
            off.saturating_sub(at) as usize
        };
        ring.pop_from(dst, at, head, max, true)
    }

    /// One non-blocking pass: plain bytes below the limit, then the ring.
    fn rx_step(
        &self,
        fd: RawFd,
        carrier: &mut CarrierRecv<'_>,
        rx: &mut RxState,
        dst: &mut DstCursor<'_, '_>,
        peek: bool,
    ) -> Result<Step, Errno> {
        let seg = self.seg().ok_or(Errno::CONNRESET)?;
        let ring = seg.ring(self.rx_dir());
        let flags = &ring.ctrl().flags;
        let start = dst.filled();
        let data_or =
            |dst: &DstCursor<'_, '_>, s: Step| if dst.filled() > start { Step::Data } else { s };
        while !self.sb().rx_ring.load(Relaxed) {
            self.progress_rx(fd, rx);
            if self.sb().rx_ring.load(Relaxed) {
                break;
            }
            if dst.remaining() == 0 || (peek && dst.filled() > start) {
                return Ok(Step::Data);
            }
            let known = rx.limit;
            let cap = match known {
                Some(l) if rx.plain_read > l => return Err(self.broken()),
                Some(l) => (l - rx.plain_read) as usize,
                None => usize::MAX,
            };
            // With the limit unknown, peek first: bytes seen before the
            // limit is published are data, because the writer publishes
            // before it sends any control byte.
            let first = if known.is_some() && !peek {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::DONTWAIT | RecvFlags::PEEK
            };
            let (want, got) = if peek && dst.at_start() {
                // A peek cannot go on where it left off: one vectored call
                // over all the buffers, as the kernel's peek fills them.
                let mut left = cap;
                let mut v: Vec<IoSliceMut<'_>> = Vec::new();
                for b in dst.bufs_mut().iter_mut() {
                    if left == 0 {
                        break;
                    }
                    let k = b.len().min(left);
                    v.push(IoSliceMut::new(&mut b[..k]));
                    left -= k;
                }
                let want = v.iter().map(|b| b.len()).sum::<usize>();
                let r = rustix::net::recvmsg(sock(fd), &mut v, &mut Default::default(), first);
                (want, r.map(|m| m.bytes))
            } else {
                let cur = dst.current();
                let want = cur.len().min(cap);
                (
                    want,
                    rustix::net::recv(sock(fd), &mut cur[..want], first).map(|(_, n)| n),
                )
            };
            let mut n = match got {
                Ok(0) => {
                    self.progress_rx(fd, rx);
                    if rx.limit.is_some() && rx.limit != known {
                        continue;
                    }
                    self.socket_eof(fd);
                    return Ok(data_or(dst, Step::Eof));
                }
                Ok(n) => n,
                Err(Errno::AGAIN) => {
                    self.progress_rx(fd, rx);
                    if rx.limit.is_some() && rx.limit != known {
                        continue;
                    }
                    return Ok(data_or(dst, Step::Empty));
                }
                Err(Errno::INTR) => continue,
                // The kernel resets us when the peer went away with bytes
                // of ours unread; if we never sent it data, those were only
                // our control bytes, and the program would have seen EOF.
                Err(Errno::CONNRESET) if self.sent_nothing(seg) => {
                    return Ok(data_or(dst, Step::Eof));
                }
                Err(e) => return Err(e),
            };
            if known.is_none() {
                if let Some(l) = protocol::switch_point(flags) {
                    rx.limit = Some(l);
                    if rx.plain_read > l {
                        return Err(self.broken());
                    }
                    n = n.min((l - rx.plain_read) as usize);
                }
                if !peek && n > 0 {
                    let cur = dst.current();
                    match rustix::net::recv(sock(fd), &mut cur[..n], RecvFlags::DONTWAIT) {
                        Ok((_, k)) if k == n => {}
                        _ => return Err(self.broken()),
                    }
                }
            }
            dst.advance(n);
            if !peek {
                self.read_plain(rx, n as u64);
            }
            if peek
                && dst.remaining() > 0
                && rx.limit.is_some_and(|l| rx.plain_read + n as u64 == l)
            {
                // Peeked every plain byte left: the kernel's peek would go
                // on into what follows, which is in the ring (up to the next
                // message with ancillary data, whose carrier sits behind the
                // plain bytes).
                self.peek_ring_start(seg, dst).map_err(|_| self.broken())?;
            }
            if peek || (rx.limit.is_none() && n < want) {
                return Ok(data_or(dst, Step::Empty));
            }
        }
        // Ring phase.
        let anc = &seg.header().anc[self.rx_dir() as usize];
        let mut passcred = None;
        for _ in 0..2 {
            // A message with ancillary data ahead? Then this read may go up
            // to its end, delivers its control data if it reaches its
            // first byte, and stops there, as the kernel's does.
            // Data first, records second: the writer publishes a record
            // before its data, so every byte below this head has its record
            // visible below; reading past it could skip one.
            let at = ring.tail();
            let head = ring.head();
            let (qh, qt) = (anc.head.load(Acquire), anc.tail.load(Relaxed));
            if qh.wrapping_sub(qt) > ANC_SLOTS as u64 {
                return Err(self.broken());
            }
            // Credentials alone are invisible to a socket without
            // SO_PASSCRED: the kernel neither reports nor stops at them, so
            // such records are passed over (a peek keeps stopping: their
            // carriers stay queued ahead of any later one).
            let mut qi = qt;
            let mut rec = None;
            while qi != qh {
                let r = &anc.recs[(qi % ANC_SLOTS as u64) as usize];
                let (off, raw) = (r.offset.load(Acquire), r.len.load(Acquire));
                let len = raw & !ANC_CREDS_ONLY;
                // The message must end within what a full ring could hold.
                if off < at
                    || len == 0
                    || len > ring.capacity() as u64
                    || off - at > ring.capacity() as u64
                {
                    return Err(self.broken());
                }
                if raw & ANC_CREDS_ONLY != 0
                    && !peek
                    && !*passcred.get_or_insert_with(|| {
                        rustix::net::sockopt::socket_passcred(sock(fd)).unwrap_or(false)
                    })
                {
                    qi = qi.wrapping_add(1);
                    continue;
                }
                rec = Some((off, len));
                break;
            }
            // (Both terms were checked against the capacity: no overflow,
            // whatever the peer wrote.)
            let max = rec.map_or(usize::MAX, |(off, len)| (off - at + len) as usize);
            // From the head loaded above, never a newer one (see there).
            let n = ring
                .pop_from(dst, at, head, max, peek)
                .map_err(|_| self.broken())?;
            if n > 0 {
                if !peek && qi != qt {
                    // Drop the carriers of the passed-over records this read
                    // went past (in socket order, before any later carrier).
                    let mut t = qt;
                    while t != qi
                        && anc.recs[(t % ANC_SLOTS as u64) as usize]
                            .offset
                            .load(Relaxed)
                            .wrapping_sub(at)
                            < n as u64
                    {
                        self.take_carrier(fd, false, &mut |p| discard_carrier(fd, p))?;
                        t = t.wrapping_add(1);
                    }
                    anc.tail.store(t, Release);
                }
                if let Some((off, _)) = rec
                    && off - at < n as u64
                {
                    self.take_carrier(fd, peek, carrier)?;
                    if !peek {
                        anc.tail.store(qi.wrapping_add(1), Release);
                        self.space_bell(fd, &ring);
                    }
                    return Ok(Step::Stop);
                }
                if !peek {
                    self.space_bell(fd, &ring);
                }
                return Ok(Step::Data);
            }
            if dst.filled() > start || dst.remaining() == 0 {
                return Ok(Step::Data);
            }
            let wr_closed = flags.wr_closed.load(Acquire);
            if wr_closed != 0 || self.sb().shut_rd.load(Acquire) {
                if ring.readable().map_err(|_| self.broken())? > 0 {
                    continue;
                }
                // Like the kernel: the error comes once the queue is empty.
                // A peer that shut its writes and was then killed with our
                // bytes unread resets too: look at the socket (end of stream
                // only, a cold path).
                if wr_closed != CLOSED_RESET && !self.sb().sock_eof.load(Acquire) {
                    self.drain_bells(fd);
                }
                if self.take_pending_reset(fd) {
                    return Err(Errno::CONNRESET);
                }
                return Ok(Step::Eof);
            }
            self.drain_bells(fd);
            if self.sb().state.load(Acquire) == BROKEN {
                return Err(Errno::CONNRESET);
            }
            if self.sb().sock_eof.load(Acquire) {
                if ring.readable().map_err(|_| self.broken())? > 0 {
                    continue;
                }
                // The peer is gone without a close of its own (killed): had
                // it left our bytes unread, the kernel would say so once.
                if self.take_pending_reset(fd) {
                    return Err(Errno::CONNRESET);
                }
                return Ok(Step::Eof);
            }
            return Ok(Step::Empty);
        }
        Ok(data_or(dst, Step::Empty))
    }

    /// Whether no byte of ours awaits the peer: none ever sent on the
    /// socket, none unread in our ring.
    fn sent_nothing(&self, seg: &Segment) -> bool {
        self.sb().plain_written.load(Relaxed) == 0
            && seg.ring(self.tx_dir()).readable().unwrap_or(0) == 0
    }

    fn rx_quick_ready(&self, ring: &Ring<'_>) -> bool {
        ring.readable().map_or(true, |n| n > 0)
            || ring.ctrl().flags.wr_closed.load(Acquire) != 0
            || self.sb().shut_rd.load(Relaxed)
            || self.sb().sock_eof.load(Relaxed)
    }

    /// Blocks until the incoming direction may have progressed: spins on the
    /// ring briefly, then sleeps in a blocking one-byte MSG_PEEK on the real
    /// socket, which honours SO_RCVTIMEO and SA_RESTART exactly as the
    /// kernel would for this very read.
    fn wait_rx(&self, fd: RawFd) -> Result<(), Errno> {
        let ring_phase = self.sb().rx_ring.load(Acquire);
        let seg = self.seg();
        if let (true, Some(seg)) = (ring_phase, seg) {
            let ring = seg.ring(self.rx_dir());
            if self.spin(|| self.rx_quick_ready(&ring)) {
                return Ok(());
            }
            protocol::announce_waiting(&ring.ctrl().flags.reader_waiting);
            if self.rx_quick_ready(&ring) {
                return Ok(());
            }
        }
        let mut b = [0u8; 1];
        match rustix::net::recv(sock(fd), &mut b, RecvFlags::PEEK) {
            // A carrier heads the socket, so this peek will not wait again.
            // Its record and bytes follow at once (the writer sends it
            // first); ones that never come are a broken peer, not a reason
            // to spin.
            Ok((_, 1)) if b[0] == CARRIER && ring_phase => {
                let Some(seg) = seg else { return Ok(()) };
                let ring = seg.ring(self.rx_dir());
                // The writer is usually a few instructions from publishing:
                // a short spin, then yields, before naps that give a broken
                // peer 100 ms.
                if spin_until(20_000, || self.rx_quick_ready(&ring)) {
                    return Ok(());
                }
                for i in 0..200 {
                    if self.rx_quick_ready(&ring) {
                        return Ok(());
                    }
                    if i < 100 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                Err(self.broken())
            }
            Ok(_) => Ok(()),
            Err(e @ (Errno::AGAIN | Errno::INTR)) => Err(e),
            // Errors surface from the next pass.
            Err(_) => Ok(()),
        }
    }

    // ---------------------------------------------------------------- send

    /// `send`-family semantics. `None`: call the real function.
    pub fn send(
        &self,
        fd: RawFd,
        bufs: &[IoSlice<'_>],
        o: SendOpts,
    ) -> Option<Result<usize, Errno>> {
        self.send_with(fd, None, bufs, o)
    }

    /// [`send`](Self::send) for a sendmsg with ancillary data once our
    /// direction runs over the ring: `carrier` sends it on the socket (the
    /// kernel validates it and moves the descriptors), and a record in the
    /// segment ties it to the message's first byte. While the direction is
    /// plain, use [`send_plain_with`](Self::send_plain_with) instead.
    pub fn send_with(
        &self,
        fd: RawFd,
        carrier: Option<&mut CarrierSend<'_>>,
        bufs: &[IoSlice<'_>],
        o: SendOpts,
    ) -> Option<Result<usize, Errno>> {
        match self.sb().state.load(Acquire) {
            PLAIN => return None,
            BROKEN => return Some(Err(Errno::CONNRESET)),
            _ => {}
        }
        let mut tx = self.lock_tx();
        // Negotiation steps only until our direction runs over the ring.
        if !self.sb().tx_ring.load(Relaxed) {
            if self.role == Role::Client && self.sb().state.load(Acquire) == PENDING {
                let now = sys::now_ns();
                if now >= self.next_hello_peek.load(Relaxed) {
                    self.next_hello_peek.store(now + HELLO_PEEK_NS, Relaxed);
                    if let Some(mut rx) = self.try_lock_rx() {
                        self.resolve_hello(fd, &mut rx, true);
                    }
                    if self.sb().state.load(Acquire) == PLAIN {
                        return None;
                    }
                }
            }
            self.progress_tx(fd, &mut tx);
            if !self.sb().tx_ring.load(Relaxed) {
                let flags = SendFlags::from_bits_retain(o.raw);
                let r = rustix::net::sendmsg(sock(fd), bufs, &mut Default::default(), flags);
                self.sent_plain(&mut tx, &r);
                return Some(r);
            }
        }
        let Some(seg) = self.seg() else {
            // A failed re-attach marks the connection broken: never fall
            // back to the bare socket, whose stream is past the switch.
            return (self.sb().state.load(Acquire) != PLAIN).then_some(Err(Errno::CONNRESET));
        };
        let ring = seg.ring(self.tx_dir()).with_cache(&self.tx_tail_cache);
        let mut src = SrcCursor::new(bufs);
        let nonblock = o.dontwait || self.nonblocking();
        let mut sent = 0;
        let mut sndtimeo = None;
        let fail = |e: Errno, sent: usize| {
            if sent == 0 && e == Errno::PIPE && !o.nosignal {
                sys::raise_sigpipe();
            }
            partial(sent, e)
        };
        if src.remaining() == 0 {
            // The kernel checks only that the socket may still send.
            let gone = self.sb().shut_wr.load(Relaxed)
                || ring.ctrl().flags.rd_closed.load(Acquire) != 0
                || self.sb().sock_eof.load(Relaxed)
                || self.peer_hung_up(fd);
            return Some(if gone { fail(Errno::PIPE, 0) } else { Ok(0) });
        }
        // Full since the last EAGAIN, with nothing read since? Then nothing
        // fits, as in the kernel. Checked before a carrier can go out (it
        // must never go without its message).
        if nonblock && self.still_full(&ring) {
            return Some(match self.tx_error(fd, &ring) {
                Some(e) => fail(e, 0),
                None => Err(Errno::AGAIN),
            });
        }
        if let Some(carrier) = carrier {
            let anc = &seg.header().anc[self.tx_dir() as usize];
            // Room for a record and at least one byte first: the carrier
            // must never go out without its message.
            loop {
                if let Some(e) = self.tx_error(fd, &ring) {
                    return Some(fail(e, 0));
                }
                let used = anc.head.load(Relaxed).wrapping_sub(anc.tail.load(Acquire));
                if used > ANC_SLOTS as u64 {
                    return Some(fail(self.broken(), 0));
                }
                let Ok(free) = ring.writable() else {
                    return Some(fail(self.broken(), 0));
                };
                let room = free >= src.remaining().min(ATOMIC_WRITE.min(ring.capacity() / 2));
                if used < ANC_SLOTS as u64 && room {
                    break;
                }
                if nonblock {
                    return Some(Err(Errno::AGAIN));
                }
                // Never sleep holding the lock: a signal handler (or another
                // thread) writing to this socket would wait for us.
                drop(tx);
                if room {
                    // Only the record queue is full: the reader frees it as
                    // it reads; no doorbell covers that, so nap briefly.
                    std::thread::sleep(std::time::Duration::from_micros(50));
                } else if let Err(e) = self.wait_tx(fd, &ring, &mut sndtimeo) {
                    return Some(fail(e, 0));
                }
                tx = self.lock_tx();
            }
            // The carrier wakes a reader sleeping on the socket: it answers
            // the request to be woken made so far. It goes out before the
            // data, so a reader it wakes may find the ring empty and ask
            // again: the doorbell after the data answers that.
            let _ = protocol::take_waiter(&ring.ctrl().flags.reader_waiting);
            if let Err(e) = carrier() {
                return Some(fail(e, 0));
            }
            let len = ring.writable().unwrap_or(0).min(src.remaining()) as u64;
            let creds = if o.creds_only { ANC_CREDS_ONLY } else { 0 };
            protocol::publish_record(anc, ring.head(), len | creds);
        }
        loop {
            if let Some(e) = self.tx_error(fd, &ring) {
                return Some(fail(e, sent));
            }
            let n = match ring.push_whole(&mut src, ATOMIC_WRITE.min(ring.capacity() / 2)) {
                Ok(n) => n,
                Err(_) => return Some(fail(self.broken(), sent)),
            };
            if n > 0 {
                sent += n;
                self.data_bell(fd, &ring.ctrl().flags);
            }
            if src.remaining() == 0 {
                return Some(Ok(sent));
            }
            if nonblock {
                // The read position the failed push saw (it refreshed the
                // cache), never a later one: a marker naming a position the
                // reader reached after the push would answer EAGAIN for
                // ever once the ring is empty.
                self.full_at
                    .store(self.tx_tail_cache.load(Relaxed).wrapping_add(1), Relaxed);
                return Some(partial(sent, Errno::AGAIN));
            }
            drop(tx);
            if let Err(e) = self.wait_tx(fd, &ring, &mut sndtimeo) {
                return Some(fail(e, sent));
            }
            tx = self.lock_tx();
        }
    }

    /// Runs `f`, a real send that carries ancillary data, while our direction
    /// is still a plain socket, counting its bytes; `None` once the direction
    /// runs over the ring (where ancillary data cannot follow, yet).
    pub fn send_plain_with(
        &self,
        f: impl FnOnce() -> Result<usize, Errno>,
    ) -> Option<Result<usize, Errno>> {
        if self.sb().state.load(Acquire) == BROKEN {
            return Some(Err(Errno::CONNRESET));
        }
        let mut tx = self.lock_tx();
        if self.sb().tx_ring.load(Relaxed) {
            return None;
        }
        let r = f();
        self.sent_plain(&mut tx, &r);
        Some(r)
    }

    /// sendfile(2)/splice(2) into the connection once our direction runs
    /// over the ring: up to `count` bytes go from `in_fd` (at `*off`, or its
    /// file position) straight into the ring. `None`: the direction is still
    /// a plain socket; the caller uses the real call through
    /// [`send_plain_with`](Self::send_plain_with).
    pub fn send_from_fd(
        &self,
        fd: RawFd,
        in_fd: RawFd,
        mut off: Option<&mut i64>,
        count: usize,
        nonblock_call: bool,
    ) -> Option<Result<usize, Errno>> {
        match self.sb().state.load(Acquire) {
            PLAIN => return None,
            BROKEN => return Some(Err(Errno::CONNRESET)),
            _ => {}
        }
        let mut tx = self.lock_tx();
        if !self.sb().tx_ring.load(Relaxed) {
            return None;
        }
        let Some(seg) = self.seg() else {
            // A failed re-attach marks the connection broken: never fall
            // back to the bare socket, whose stream is past the switch.
            return (self.sb().state.load(Acquire) != PLAIN).then_some(Err(Errno::CONNRESET));
        };
        let ring = seg.ring(self.tx_dir()).with_cache(&self.tx_tail_cache);
        let nonblock = nonblock_call || self.nonblocking();
        // Set when the input itself ran dry (push_with also returns 0 for
        // a full ring, which is no end of file).
        let mut input_eof = false;
        let mut sent = 0;
        let mut sndtimeo = None;
        if nonblock && self.still_full(&ring) && self.tx_error(fd, &ring).is_none() {
            return Some(Err(Errno::AGAIN));
        }
        while sent < count {
            if let Some(e) = self.tx_error(fd, &ring) {
                if e == Errno::PIPE && sent == 0 {
                    sys::raise_sigpipe();
                }
                return Some(partial(sent, e));
            }
            let r = ring.push_with(count - sent, |p, len| {
                // SAFETY: push_with hands us `len` writable ring bytes.
                let r = unsafe { sys::read_into(in_fd, p, len, off.as_deref_mut()) };
                input_eof = r == Ok(0);
                r
            });
            let n = match r {
                Err(_) => return Some(Err(self.broken())),
                Ok(Err(e)) => return Some(partial(sent, e)),
                Ok(Ok(n)) => n,
            };
            if n > 0 {
                sent += n;
                self.data_bell(fd, &ring.ctrl().flags);
                continue;
            }
            if input_eof {
                break;
            }
            if nonblock {
                self.full_at
                    .store(self.tx_tail_cache.load(Relaxed).wrapping_add(1), Relaxed);
                return Some(partial(sent, Errno::AGAIN));
            }
            // Never sleep holding the lock (see send_with).
            drop(tx);
            if let Err(e) = self.wait_tx(fd, &ring, &mut sndtimeo) {
                return Some(partial(sent, e));
            }
            tx = self.lock_tx();
        }
        drop(tx);
        Some(Ok(sent))
    }

    /// Why a write must fail now (EPIPE), if it must.
    fn tx_error(&self, fd: RawFd, ring: &Ring<'_>) -> Option<Errno> {
        // EPIPE even when the peer left our data unread: a Unix stream send
        // never reports the pending ECONNRESET (reads, poll and SO_ERROR
        // do), so it stays pending for them.
        let fail = || Some(Errno::PIPE);
        if self.sb().shut_wr.load(Relaxed)
            || ring.ctrl().flags.rd_closed.load(Acquire) != 0
            || self.sb().sock_eof.load(Relaxed)
        {
            return fail();
        }
        // A killed peer sets no flag: look at the socket now and then. The
        // caller holds the tx lock, so a plain load/store counts.
        let k = self.tx_ops.load(Relaxed);
        self.tx_ops.store(k.wrapping_add(1), Relaxed);
        if k % 64 != 0 {
            return None;
        }
        let now = sys::now_ns();
        if now >= self.next_live_check.load(Relaxed) {
            self.next_live_check.store(now + LIVENESS_NS, Relaxed);
            if self.peer_hung_up(fd) {
                return fail();
            }
        }
        None
    }

    /// Our socket reads end of input: the peer's release, or only a
    /// shutdown (ours, or its SHUT_WR while it wrote plain)? A peer that
    /// writes to the ring never shuts the socket's writes: from it, end of
    /// input is its release (or a broken peer: its doorbells cannot reach
    /// us any more, so our reads must end too).
    fn socket_eof(&self, fd: RawFd) {
        let on_ring = self
            .seg()
            .is_some_and(|s| protocol::switch_point(&s.ring(self.rx_dir()).ctrl().flags).is_some());
        if on_ring && !self.sb().shut_rd.load(Acquire) {
            self.sb().sock_eof.store(true, Release);
        } else {
            self.peer_hung_up(fd);
        }
    }

    fn peer_hung_up(&self, fd: RawFd) -> bool {
        if self.kernel_says_gone(kernel_view(fd)) {
            self.sb().sock_eof.store(true, Release);
            return true;
        }
        false
    }

    /// Whether the kernel's view of our socket shows the peer's socket
    /// released. ERR is its release with our bytes unread. HUP is both
    /// shutdown bits of ours, and either is the release's unless something
    /// else may have set it: the receive one our own SHUT_RD or the peer's
    /// SHUT_WR while it wrote plain; the send one our own SHUT_WR while we
    /// wrote plain or the peer's SHUT_RD (both kernel calls only while that
    /// direction is plain; counted whenever made, to stay on the safe side).
    fn kernel_says_gone(&self, k: PollFlags) -> bool {
        if k.contains(PollFlags::ERR) {
            return true;
        }
        if !k.contains(PollFlags::HUP) {
            return false;
        }
        let Some(seg) = self.seg() else {
            return true;
        };
        let b = self.sb();
        let rcv_other = b.shut_rd.load(Acquire)
            || protocol::switch_point(&seg.ring(self.rx_dir()).ctrl().flags).is_none();
        let snd_other = (b.shut_wr.load(Acquire) && !b.tx_ring.load(Acquire))
            || seg.ring(self.tx_dir()).ctrl().flags.rd_closed.load(Acquire) == RD_SHUT;
        !rcv_other || !snd_other
    }

    /// Whether the kernel's buffer was full when we switched to the ring
    /// and the peer has not read since (see `SideBlock::plain_full`).
    fn plain_still_full(&self, ring: &Ring<'_>) -> bool {
        marker_holds(&self.sb().plain_full, || {
            ring.ctrl().flags.plain_read.load(Acquire)
        })
    }

    /// Whether a non-blocking send must answer EAGAIN without trying: our
    /// last one found the ring (or, before the switch, the kernel's buffer)
    /// full and the reader has not read since. Only then is the reader's
    /// index (a cache line it writes) read here.
    fn still_full(&self, ring: &Ring<'_>) -> bool {
        self.plain_still_full(ring) || marker_holds(&self.full_at, || ring.tail())
    }

    /// POLLOUT: room (half the ring), or a peer whose socket is released
    /// (the kernel frees what it left unread). A peer that only shut its
    /// read side keeps our bytes queued: not writable, as in the kernel.
    fn tx_poll_ready(&self, ring: &Ring<'_>) -> bool {
        (ring.writable().map_or(true, |n| n >= ring.capacity() / 2) && !self.plain_still_full(ring))
            || ring.ctrl().flags.rd_closed.load(Acquire) == RD_RELEASED
            || self.sb().sock_eof.load(Relaxed)
    }

    fn tx_quick_ready(&self, ring: &Ring<'_>) -> bool {
        ring.writable().map_or(true, |n| n >= ring.capacity() / 2)
            || ring.ctrl().flags.rd_closed.load(Acquire) != 0
            || self.sb().sock_eof.load(Relaxed)
    }

    /// Blocks until the ring has room (half of it), the peer is gone, or a
    /// signal interrupts, on a shared futex with a bounded nap so that a
    /// killed peer is noticed.
    ///
    /// `deadline` holds SO_SNDTIMEO's end once known (read on the first wait
    /// of a call, so the fast path never pays for it); past it: EAGAIN.
    fn wait_tx(
        &self,
        fd: RawFd,
        ring: &Ring<'_>,
        deadline: &mut Option<Option<u64>>,
    ) -> Result<(), Errno> {
        let expired = |end: Option<u64>| end.is_some_and(|e| sys::now_ns() >= e);
        if deadline.is_some_and(expired) {
            return Err(Errno::AGAIN);
        }
        // Spin first: a fast reader usually frees room within it, and then
        // this wait costs no syscall at all.
        if self.spin(|| self.tx_quick_ready(ring)) {
            return Ok(());
        }
        let end = *deadline.get_or_insert_with(|| {
            rustix::net::sockopt::socket_timeout(sock(fd), rustix::net::sockopt::Timeout::Send)
                .ok()
                .flatten()
                .map(|d| sys::now_ns() + d.as_nanos() as u64)
        });
        if expired(end) {
            return Err(Errno::AGAIN);
        }
        let f = &ring.ctrl().flags;
        let seq = f.space_seq.load(SeqCst);
        protocol::announce_waiting(&f.writer_sleeping);
        if self.tx_quick_ready(ring) {
            return Ok(());
        }
        let left = end.map_or(WRITER_NAP_NS, |e| {
            e.saturating_sub(sys::now_ns()).clamp(1, WRITER_NAP_NS)
        });
        let nap = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: left as _,
        };
        let mark = signals::mark();
        match rustix::thread::futex::wait(
            &f.space_seq,
            rustix::thread::futex::Flags::empty(),
            seq,
            Some(&nap),
        ) {
            // The kernel's rule for a blocked send: with SO_SNDTIMEO set,
            // always EINTR; else restart if the handler had SA_RESTART.
            Err(Errno::INTR)
                if end.is_some()
                    || !signals::handler_ran(mark).unwrap_or_else(sys::all_handlers_restart) =>
            {
                Err(Errno::INTR)
            }
            Err(Errno::TIMEDOUT) => {
                if self.peer_hung_up(fd) {
                    Err(Errno::PIPE)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    // ---------------------------------------------------------------- shutdown / close

    /// `shutdown(2)`. `None`: call the real function.
    pub fn shutdown(&self, fd: RawFd, how: i32) -> Option<Result<(), Errno>> {
        let (rd, wr) = match how {
            libc::SHUT_RD => (true, false),
            libc::SHUT_WR => (false, true),
            libc::SHUT_RDWR => (true, true),
            _ => return Some(Err(Errno::INVAL)),
        };
        match self.sb().state.load(Acquire) {
            PLAIN => return None,
            BROKEN => return Some(Err(Errno::CONNRESET)),
            _ => {}
        }
        let seg = self.seg();
        if let Some(seg) = seg {
            seg.header().shut_seq.fetch_add(1, Release);
        }
        let mut real = false;
        if wr {
            let mut tx = self.lock_tx();
            self.progress_tx(fd, &mut tx);
            if let (true, Some(seg)) = (self.sb().tx_ring.load(Relaxed), seg) {
                let f = &seg.ring(self.tx_dir()).ctrl().flags;
                f.wr_closed.store(1, SeqCst);
                self.data_bell(fd, f);
            } else {
                // Still a plain stream: the kernel's own EOF does the job.
                real = true;
            }
            self.sb().shut_wr.store(true, Release);
        }
        // The kernel's SHUT_RD only while our reads are plain: the peer may
        // still write plain (it must get EPIPE) and our reads must end at
        // EOF once the queue is empty. Over the ring the flag does both, and
        // the socket must keep taking the peer's doorbells: they also wake
        // our pollers waiting for room to write.
        let real_rd = rd && !self.sb().rx_ring.load(Acquire);
        if rd {
            self.sb().shut_rd.store(true, Release);
            if let Some(seg) = seg {
                let ring = seg.ring(self.rx_dir());
                ring.ctrl().flags.rd_closed.store(RD_SHUT, SeqCst);
                self.wake_writers(fd, &ring);
            }
        }
        if real || real_rd {
            // Never the kernel's SHUT_WR for a direction on the ring: the
            // peer's socket then reads EOF (and HUP) only when we are gone.
            let how = match (real_rd, wr && !self.sb().tx_ring.load(Relaxed)) {
                (true, true) => rustix::net::Shutdown::Both,
                (true, false) => rustix::net::Shutdown::Read,
                _ => rustix::net::Shutdown::Write,
            };
            if let Err(e) = rustix::net::shutdown(sock(fd), how) {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    fn wake_writers(&self, fd: RawFd, ring: &Ring<'_>) {
        let f = &ring.ctrl().flags;
        wake_space_sleepers(f);
        if f.writer_waiting.swap(0, SeqCst) != 0 {
            self.bell(fd);
        }
    }

    /// This process drops its last descriptor of the connection. Marks our
    /// side closed in the segment if no other process shares it; the real
    /// close that follows gives the peer EOF/HUP on the socket as well.
    pub fn close(&self, fd: RawFd) {
        // A plain connection never used a ring: the socket says it all.
        if self.closed.swap(true, AcqRel) || self.is_plain() {
            return;
        }
        if self.sb().state.load(Acquire) == OFFERED && self.sb().sharers.load(Acquire) <= 1 {
            crate::log!(
                crate::log::INFO,
                "fd {}: plain: closed before the client attached",
                self.fd
            );
        }
        let Some(seg) = self.seg() else { return };
        if self.sb().sharers.fetch_sub(1, SeqCst) > 1 {
            return;
        }
        let tx = seg.ring(self.tx_dir());
        let rx = seg.ring(self.rx_dir());
        // Closing with unread data resets the peer, as in the kernel: ring
        // bytes, or plain ones (the kernel resets the peer for those too,
        // but our end of stream in the ring must say so as well).
        let plain_unread = !self.sb().rx_ring.load(Acquire)
            && match protocol::switch_point(&rx.ctrl().flags) {
                Some(l) => l > self.sb().plain_read.load(Acquire),
                None => rustix::io::ioctl_fionread(sock(fd)).unwrap_or(0) > 0,
            };
        let unread = plain_unread || rx.readable().map_or(true, |n| n > 0);
        if !self.sb().tx_ring.load(Acquire) && protocol::switch_point(&tx.ctrl().flags).is_none() {
            // We never wrote to the ring: say where our plain bytes end, so
            // that the peer's reads go on to the ring's end of stream (and
            // its reset) once they are read.
            protocol::publish_switch(&tx.ctrl().flags, self.sb().plain_written.load(Acquire));
        }
        tx.ctrl()
            .flags
            .wr_closed
            .store(if unread { CLOSED_RESET } else { 1 }, SeqCst);
        self.data_bell(fd, &tx.ctrl().flags);
        rx.ctrl().flags.rd_closed.store(RD_RELEASED, SeqCst);
        self.wake_writers(fd, &rx);
        // Unread doorbells in our socket would make the kernel reset the
        // peer on close: stop asking for them, then drain. Before our reads
        // reached the ring, only if every plain byte was read: what follows
        // the switch point on the socket is control bytes (the client's
        // "attached" doorbell, racing our close).
        // Our read side is shut first, so that a doorbell the peer sends
        // from now on is refused (EPIPE to it) rather than left unread.
        let _ = rustix::net::shutdown(sock(fd), rustix::net::Shutdown::Read);
        let plain_done = || {
            protocol::switch_point(&rx.ctrl().flags)
                .is_some_and(|l| self.sb().plain_read.load(Acquire) == l)
        };
        if self.sb().rx_ring.load(Acquire) || plain_done() {
            rx.ctrl().flags.reader_waiting.store(0, SeqCst);
            tx.ctrl().flags.writer_waiting.store(0, SeqCst);
            self.drain_bells(fd);
        }
    }

    /// The process is in exit() with the connection open: the kernel
    /// releases the socket once the exit handlers and the stdio flush are
    /// done. Our reads are over, so the peer's writes fail from now on, as
    /// they will then; our own writes (that flush) still go out, so our
    /// direction is left to the socket's EOF. A process that still shares
    /// the connection keeps it whole.
    pub fn process_exiting(&self, fd: RawFd) {
        if self.closed.swap(true, AcqRel) || self.is_plain() {
            return;
        }
        let Some(seg) = self.seg() else { return };
        if self.sb().sharers.fetch_sub(1, SeqCst) > 1 {
            return;
        }
        let rx = seg.ring(self.rx_dir());
        rx.ctrl().flags.rd_closed.store(RD_RELEASED, SeqCst);
        self.wake_writers(fd, &rx);
    }

    /// Reports the peer's reset, once: true if this call does. The kernel
    /// may hold the same error (the peer left plain bytes or doorbells of
    /// ours unread): it is taken too, so that it is not reported twice.
    fn take_reset(&self, fd: RawFd) -> bool {
        if self.sb().reset_taken.swap(true, AcqRel) {
            return false;
        }
        let _ = rustix::net::sockopt::socket_error(sock(fd));
        true
    }

    /// Reports a pending reset of the peer's, once: true if this call does.
    fn take_pending_reset(&self, fd: RawFd) -> bool {
        self.reset_pending() && self.take_reset(fd)
    }

    /// Whether a reset the kernel holds for our socket is not the
    /// program's to see: ours was reported already, or the peer had read
    /// every plain byte of ours, so the kernel's is about doorbells.
    fn kernel_err_not_ours(&self) -> bool {
        self.sb().reset_taken.load(Acquire)
            || (self.sb().tx_ring.load(Acquire) && self.plain_left() == Some(0))
    }

    /// The peer closed with our data unread and we have not said so yet.
    fn reset_pending(&self) -> bool {
        if self.sb().reset_taken.load(Relaxed) {
            return false;
        }
        if self.sb().kernel_reset.load(Acquire) {
            return true;
        }
        let Some(s) = self.seg() else {
            return false;
        };
        // Closed by tsss with our data unread...
        (self.sb().rx_ring.load(Relaxed)
            && s.ring(self.rx_dir()).ctrl().flags.wr_closed.load(Acquire) == CLOSED_RESET)
            // ...or gone without a close of its own (killed, or exited with
            // the fd open) and our ring bytes unread: the kernel resets a
            // socket whose peer went away with data in its queue.
            || (self.sb().sock_eof.load(Relaxed)
                && self.sb().tx_ring.load(Relaxed)
                && s.ring(self.tx_dir()).readable().unwrap_or(0) > 0)
    }

    /// The state a new program image needs to carry on with this
    /// connection after execve (see the shim's exec hooks): one line of
    /// space-separated numbers.
    ///
    /// The new image gets a side block of its own: if other processes
    /// share the connection (`shared`, or counted here), it cannot count
    /// them, and leaves the ending to the socket's EOF.
    pub fn export(&self, shared: bool) -> String {
        let b = self.sb();
        let shared = shared || b.sharers.load(Acquire) > 1;
        let flags = u32::from(b.nonblock.load(Acquire))
            | u32::from(b.rx_ring.load(Acquire)) << 1
            | u32::from(b.tx_ring.load(Acquire)) << 2
            | u32::from(b.sock_eof.load(Acquire)) << 4
            | u32::from(b.reset_taken.load(Acquire)) << 5
            | u32::from(b.shut_rd.load(Acquire)) << 6
            | u32::from(b.shut_wr.load(Acquire)) << 7
            | u32::from(b.kernel_reset.load(Acquire)) << 8
            | u32::from(shared) << 9;
        format!(
            "{} {} {} {} {} {} {} {} {}",
            match self.role {
                Role::Client => 0,
                Role::Server => 1,
            },
            b.state.load(Acquire),
            flags,
            b.plain_read.load(Acquire),
            b.limit_plus1.load(Acquire),
            b.plain_written.load(Acquire),
            b.seg_shmid.load(Acquire),
            b.seg_nonce.load(Acquire),
            b.seg_caps.load(Acquire)
        )
    }

    /// Rebuilds a connection from [`export`](Self::export) in a new program
    /// image. The segment is attached (and its nonce checked) on first use.
    pub fn adopt(fd: RawFd, line: &str) -> Result<Conn, String> {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|w| w.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| "malformed handover".to_string())?;
        let [
            role,
            state,
            flags,
            plain_read,
            limit_plus1,
            plain_written,
            shmid,
            nonce,
            caps,
        ] = v[..]
        else {
            return Err("malformed handover".into());
        };
        let role = if role == 0 {
            Role::Client
        } else {
            Role::Server
        };
        let state = u8::try_from(state)
            .ok()
            .filter(|&s| s <= BROKEN)
            .ok_or("bad state")?;
        if state == PLAIN {
            return Err("plain".into());
        }
        let c = Self::new(fd, role, state, flags & 1 != 0)?;
        let b = c.sb();
        b.rx_ring.store(flags & 2 != 0, Release);
        b.tx_ring.store(flags & 4 != 0, Release);
        b.sock_eof.store(flags & 16 != 0, Release);
        b.reset_taken.store(flags & 32 != 0, Release);
        b.shut_rd.store(flags & 64 != 0, Release);
        b.shut_wr.store(flags & 128 != 0, Release);
        b.kernel_reset.store(flags & 256 != 0, Release);
        if flags & 512 != 0 {
            // Other holders we cannot count: never the last one.
            b.sharers.store(SHARED_UNCOUNTED, Release);
        }
        b.plain_read.store(plain_read, Release);
        b.limit_plus1.store(limit_plus1, Release);
        b.plain_written.store(plain_written, Release);
        b.seg_shmid.store(shmid, Release);
        b.seg_nonce.store(nonce, Release);
        b.seg_caps.store(caps, Release);
        Ok(c)
    }

    /// The socket's inode (0 if unknown).
    pub fn ino(&self) -> u64 {
        self.ino.load(Relaxed)
    }

    /// Another descriptor of this process now names the connection.
    pub fn add_alias(&self) {
        self.aliases.fetch_add(1, Relaxed);
    }

    /// One of this process's descriptors is being closed; true if it was
    /// the last one (the caller then calls [`close`](Self::close)).
    pub fn drop_alias(&self) -> bool {
        self.aliases.fetch_sub(1, AcqRel) == 1
    }

    /// A child about to be forked will share this connection.
    ///
    /// Called in the parent *before* fork (pthread_atfork prepare): a child
    /// handler would race with the parent closing its copy right after fork
    /// returns. A failed fork leaves the count one too high, which only
    /// means the socket's own EOF, not the flag, ends the connection.
    pub fn before_fork(&self) {
        self.sb().sharers.fetch_add(1, SeqCst);
    }

    /// Takes back a [`before_fork`](Self::before_fork) made for a new
    /// image that never ran (exec or spawn failed).
    pub fn undo_fork(&self) {
        self.sb().sharers.fetch_sub(1, SeqCst);
    }

    // ---------------------------------------------------------------- readiness

    /// Whether our writes go to the ring (POLLOUT is then the ring's, and
    /// the kernel's says nothing about it).
    pub fn tx_on_ring(&self) -> bool {
        self.sb().tx_ring.load(Relaxed)
    }

    /// Whether computing readiness needs the kernel's view of the socket
    /// (some direction is still a plain stream).
    pub fn needs_kernel(&self) -> bool {
        !(self.sb().rx_ring.load(Relaxed) && self.sb().tx_ring.load(Relaxed))
    }

    /// Poll-style readiness. `kernel` holds revents of a zero-timeout poll of
    /// the real socket for POLLIN|POLLOUT|POLLRDHUP, if one was made (it
    /// must be when [`needs_kernel`](Self::needs_kernel)). `None`: the
    /// connection is plain now; ask the kernel.
    pub fn readiness(&self, fd: RawFd, kernel: Option<PollFlags>) -> Option<Ready> {
        let mut k = kernel.unwrap_or(PollFlags::empty());
        let before = (
            self.sb().state.load(Acquire),
            self.sb().rx_ring.load(Acquire),
            self.sb().tx_ring.load(Acquire),
        );
        if kernel.is_some_and(|k| k.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR))
            && let Some(mut rx) = self.try_lock_rx()
        {
            self.progress_rx(fd, &mut rx);
            if self.sb().rx_ring.load(Relaxed) && self.sb().state.load(Acquire) != PLAIN {
                self.drain_bells(fd);
            }
        }
        if let Some(mut tx) = self.try_lock_tx() {
            self.progress_tx(fd, &mut tx);
        }
        let after = (
            self.sb().state.load(Acquire),
            self.sb().rx_ring.load(Acquire),
            self.sb().tx_ring.load(Acquire),
        );
        // Negotiation consumed socket bytes (HELLO) or changed which
        // directions the kernel speaks for: its earlier view is stale.
        if kernel.is_some() && before != after && self.needs_kernel() {
            k = kernel_view(fd);
        }
        let (state, rx_ring, tx_ring) = after;
        match state {
            PLAIN => return None,
            BROKEN => {
                return Some(Ready {
                    readable: true,
                    writable: true,
                    hup: true,
                    err: true,
                    ..Ready::default()
                });
            }
            _ => {}
        }
        let mut r = Ready::default();
        let known_gone = self.sb().sock_eof.load(Acquire);
        let gone = known_gone || (kernel.is_some() && self.kernel_says_gone(k));
        if gone && !known_gone {
            self.sb().sock_eof.store(true, Release);
        }
        let reset = self.reset_pending();
        let seg = self.seg();
        let shut_rd = self.sb().shut_rd.load(Relaxed);
        // The kernel's RCV_SHUTDOWN / SEND_SHUTDOWN of our socket.
        let mut rcv_shut = shut_rd || gone || k.contains(PollFlags::RDHUP);
        let mut snd_shut = self.sb().shut_wr.load(Relaxed) || gone;
        if let Some(seg) = seg {
            // The peer's shutdowns, said in the segment, count at once, as
            // the kernel's do, even before our reads reach the ring.
            rcv_shut |= seg.ring(self.rx_dir()).ctrl().flags.wr_closed.load(Acquire) != 0;
            snd_shut |= seg.ring(self.tx_dir()).ctrl().flags.rd_closed.load(Acquire) != 0;
        }
        match (rx_ring, seg) {
            (true, Some(seg)) => {
                let ring = seg.ring(self.rx_dir());
                r.readable = self.rx_quick_ready(&ring) || gone || reset || rcv_shut;
            }
            _ => {
                // HELLO still unread (pending client) is not data.
                r.readable = state != PENDING
                    && (rcv_shut || k.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR));
            }
        }
        match (tx_ring, seg) {
            (true, Some(seg)) => {
                let ring = seg.ring(self.tx_dir());
                r.writable = self.tx_poll_ready(&ring) || gone;
            }
            _ => r.writable = k.contains(PollFlags::OUT),
        }
        r.rdhup = rcv_shut;
        r.hup = k.contains(PollFlags::HUP) || (rcv_shut && snd_shut);
        // Once both directions run over the ring, a kernel error can only
        // come from doorbell bytes; the application's errors are emulated.
        // Once our direction runs over the ring and the peer read our plain
        // bytes, a kernel error (its release with our bytes unread) can only
        // be about doorbells: the application's errors are emulated.
        r.err = reset || (k.contains(PollFlags::ERR) && !self.kernel_err_not_ours());
        Some(r)
    }

    /// Ring-only readiness for spinning (atomics, no syscalls). False when
    /// unsure.
    pub fn quick_ready(&self, want_read: bool, want_write: bool) -> bool {
        let Some(seg) = self.seg() else {
            return false;
        };
        (want_read
            && self.sb().rx_ring.load(Relaxed)
            && self.rx_quick_ready(&seg.ring(self.rx_dir())))
            || (want_write
                && self.sb().tx_ring.load(Relaxed)
                && self.tx_poll_ready(&seg.ring(self.tx_dir())))
    }

    /// Before a poll/epoll sleep: ask the peer for doorbells. The caller
    /// re-checks [`quick_ready`](Self::quick_ready) afterwards.
    pub fn arm(&self, want_read: bool, want_write: bool) {
        let Some(seg) = self.seg() else { return };
        if want_read && self.sb().rx_ring.load(Relaxed) {
            seg.ring(self.rx_dir())
                .ctrl()
                .flags
                .reader_waiting
                .store(1, SeqCst);
        }
        if want_write && self.sb().tx_ring.load(Relaxed) {
            seg.ring(self.tx_dir())
                .ctrl()
                .flags
                .writer_waiting
                .store(1, SeqCst);
        }
        fence(SeqCst);
    }

    /// Whether the program shut our read side.
    pub fn reads_shut(&self) -> bool {
        self.sb().shut_rd.load(Relaxed)
    }

    /// Whether the peer can ring our doorbell for both directions (else a
    /// poll/epoll sleep must be bounded).
    pub fn bells_work(&self) -> bool {
        // After the kernel's SHUT_RD (made while our reads were plain) the
        // peer's doorbells fail.
        self.sb().rx_ring.load(Relaxed) && !self.sb().shut_rd.load(Relaxed)
    }

    /// SO_ERROR: the pending error, cleared by reading it (the peer's
    /// ECONNRESET, once). `None`: ask the kernel.
    pub fn take_error(&self, fd: RawFd) -> Option<i32> {
        // A killed peer says so only on the socket: this call is rare, look.
        if !self.sb().sock_eof.load(Acquire) {
            self.peer_hung_up(fd);
        }
        if self.take_pending_reset(fd) {
            return Some(libc::ECONNRESET);
        }
        // The kernel's error is ours to report only while it may be about
        // the program's bytes (plain ones the peer left unread), and only
        // once.
        if self.kernel_err_not_ours() {
            let _ = rustix::net::sockopt::socket_error(sock(fd));
            return Some(0);
        }
        None
    }

    /// SIOCOUTQ: bytes written and not yet read by the peer. `None`: our
    /// direction is still a plain socket; ask the kernel.
    pub fn bytes_unread_by_peer(&self, fd: RawFd) -> Option<usize> {
        if !self.sb().tx_ring.load(Acquire) {
            // Only our own bytes (HELLO) queued: none of the program's.
            return (self.sb().plain_written.load(Relaxed) == 0).then_some(0);
        }
        let ring = self.seg()?.ring(self.tx_dir());
        let f = &ring.ctrl().flags;
        // A peer that closed or died took its queue with it. (A killed one
        // says so only on the socket: this call is rare, so look.)
        if self.sb().sock_eof.load(Acquire)
            || f.rd_closed.load(Acquire) == RD_RELEASED
            || self.peer_hung_up(fd)
        {
            return Some(0);
        }
        // Plain bytes it has not read yet are queued before the ring's.
        let plain_left = self.plain_left().unwrap_or(0);
        Some(ring.capacity() - ring.writable().unwrap_or(0) + plain_left as usize)
    }

    /// Bytes of ours that went over the socket before the switch.
    pub fn plain_bytes_sent(&self) -> u64 {
        self.sb().plain_written.load(Acquire)
    }

    /// Our plain bytes (sent before the switch) the peer has not read.
    fn plain_left(&self) -> Option<u64> {
        let f = &self.seg()?.ring(self.tx_dir()).ctrl().flags;
        let plain = self.sb().plain_written.load(Relaxed);
        Some(plain - f.plain_read.load(Acquire).min(plain))
    }

    /// Monotonic counters for edge-triggered epoll: input progress (bytes
    /// the peer wrote, EOF) and output progress (bytes the peer consumed,
    /// its read side closing).
    pub fn progress_counters(&self) -> (u64, u64) {
        let Some(seg) = self.seg() else {
            return (0, 0);
        };
        let rx = seg.ring(self.rx_dir());
        let tx = seg.ring(self.tx_dir());
        let eof = u64::from(self.sb().sock_eof.load(Relaxed)) << 61;
        let shut = u64::from(seg.header().shut_seq.load(Relaxed)) << 32;
        let seq_in = rx
            .head()
            .wrapping_add(u64::from(rx.ctrl().flags.wr_closed.load(Relaxed) != 0) << 60)
            .wrapping_add(shut)
            | eof;
        let seq_out = tx
            .tail()
            .wrapping_add(u64::from(tx.ctrl().flags.rd_closed.load(Relaxed) != 0) << 60)
            .wrapping_add(shut)
            | eof;
        (seq_in, seq_out)
    }

    /// Bytes readable now (FIONREAD / SIOCINQ). `None`: ask the kernel.
    pub fn bytes_readable(&self, fd: RawFd) -> Option<usize> {
        self.progress(fd);
        if self.sb().state.load(Acquire) == PLAIN {
            return None;
        }
        let seg = self.seg();
        // Plain bytes left before the switch point, and whether the ring's
        // bytes follow them (the point is known: the peer may have written
        // past it already).
        let (plain, ring_too) = if self.sb().rx_ring.load(Acquire) {
            (0, true)
        } else {
            let k = rustix::io::ioctl_fionread(sock(fd)).unwrap_or(0) as usize;
            if self.sb().state.load(Acquire) == PENDING {
                return Some(0);
            }
            let rx = self.lock_rx();
            let limit = rx.limit.or_else(|| {
                seg.and_then(|s| protocol::switch_point(&s.ring(self.rx_dir()).ctrl().flags))
            });
            match limit {
                Some(l) => (k.min((l - rx.plain_read.min(l)) as usize), true),
                None => (k, false),
            }
        };
        let ring = match (ring_too, seg) {
            (true, Some(seg)) => seg.ring(self.rx_dir()).readable().unwrap_or(0),
            _ => 0,
        };
        Some(plain + ring)
    }
}

/// Consumer side, after freeing space (or going away): wakes every writer
/// sleeping on the `space_seq` futex. The bump comes first, so that a
/// writer about to sleep on the old value returns at once. (Public for the
/// fuzz harness's honest peer.)
pub fn wake_space_sleepers(f: &RingFlags) {
    f.space_seq.fetch_add(1, SeqCst);
    let _ = rustix::thread::futex::wake(
        &f.space_seq,
        rustix::thread::futex::Flags::empty(),
        i32::MAX as u32,
    );
}

/// A "full at" marker: 0, or the reader's position when a send found no
/// room, plus one. It holds while that position is unchanged; once the
/// reader has moved it is cleared.
fn marker_holds(m: &AtomicU64, pos: impl FnOnce() -> u64) -> bool {
    let v = m.load(Relaxed);
    if v == 0 {
        return false;
    }
    if v == pos().wrapping_add(1) {
        return true;
    }
    m.store(0, Relaxed);
    false
}

/// The socket for one call. Every entry point takes the descriptor the
/// application used: with dup() a connection has several, and any of them
/// may be closed while the others live on.
fn sock(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: `fd` is the application's descriptor for the duration of its
    // call (closing it concurrently is the application's bug, as with the
    // kernel, and at worst makes our syscalls fail with EBADF).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// The kernel's readiness of a socket, now (a zero-timeout poll for
/// IN|OUT|RDHUP; HUP and ERR come whatever is asked).
pub fn kernel_view(fd: RawFd) -> PollFlags {
    let sock = sock(fd);
    let mut p = [PollFd::new(
        &sock,
        PollFlags::IN | PollFlags::OUT | PollFlags::RDHUP,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut p, Some(&zero)) {
        Ok(1) => p[0].revents(),
        _ => PollFlags::empty(),
    }
}

/// What a call that moved `done` bytes before meeting `e` returns, as the
/// kernel does: the partial count, the error left for the next call.
fn partial(done: usize, e: Errno) -> Result<usize, Errno> {
    if done > 0 { Ok(done) } else { Err(e) }
}

/// Spins until `ready`, for at most `budget` ns (a per-connection value
/// adapted by the caller: see [`Conn::spin`]); true if it became ready.
fn spin_until(budget: u64, mut ready: impl FnMut() -> bool) -> bool {
    if budget == 0 {
        return ready();
    }
    let start = sys::now_ns();
    let backoff = crossbeam_utils::Backoff::new();
    loop {
        for _ in 0..16 {
            if ready() {
                return true;
            }
            backoff.snooze();
        }
        if sys::now_ns() - start >= budget {
            return false;
        }
    }
}

/// A [`CarrierRecv`] that takes the next control byte and drops whatever
/// ancillary data came with it (the kernel's read() drops it too).
fn discard_carrier(fd: RawFd, peek: bool) -> Result<bool, Errno> {
    let f = if peek {
        RecvFlags::DONTWAIT | RecvFlags::PEEK
    } else {
        RecvFlags::DONTWAIT
    };
    let mut b = [0u8; 1];
    match rustix::net::recv(sock(fd), &mut b, f)? {
        (_, 1) if b[0] == CARRIER => Ok(true),
        (_, 1) if b[0] == 0 => Ok(false),
        _ => Err(Errno::IO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::{AsRawFd, OwnedFd};
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

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

    fn send(c: &Conn, b: &[u8]) -> Result<usize, Errno> {
        c.send(c.fd(), &[IoSlice::new(b)], SendOpts::default())
            .unwrap()
    }

    fn send_nb(c: &Conn, b: &[u8]) -> Result<usize, Errno> {
        let o = SendOpts {
            dontwait: true,
            nosignal: true,
            creds_only: false,
            raw: (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32,
        };
        c.send(c.fd(), &[IoSlice::new(b)], o).unwrap()
    }

    fn recv(c: &Conn, n: usize, o: RecvOpts) -> Result<Vec<u8>, Errno> {
        let mut v = vec![0u8; n];
        let k = c.recv(c.fd(), &mut [IoSliceMut::new(&mut v)], o).unwrap()?;
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
    fn recv_all(c: &Conn, n: usize) -> Vec<u8> {
        let o = RecvOpts {
            waitall: true,
            ..RecvOpts::default()
        };
        recv(c, n, o).unwrap()
    }

    #[test]
    fn plain_bytes_then_ring_in_both_directions() {
        let (a, b) = pair();
        let client = Conn::client(a.as_raw_fd(), false).unwrap();
        // The client writes before the server ever looks: plain bytes.
        assert_eq!(send(&client, b"early ").unwrap(), 6);
        let server = Conn::server(b.as_raw_fd(), false, uid()).unwrap();
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
        let client = Conn::client(a.as_raw_fd(), false).unwrap();
        let server = Conn::server(b.as_raw_fd(), false, uid()).unwrap();
        assert_eq!(recv(&client, 1, nb()), Err(Errno::AGAIN)); // only HELLO so far
        send(&client, b"abcdef").unwrap();
        let peek = RecvOpts {
            peek: true,
            ..RecvOpts::default()
        };
        assert_eq!(recv(&server, 3, peek).unwrap(), b"abc");
        assert_eq!(recv(&server, 3, nb()).unwrap(), b"abc");
        assert_eq!(server.bytes_readable(server.fd()), Some(3));
        assert_eq!(client.shutdown(client.fd(), libc::SHUT_WR), Some(Ok(())));
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
        let client = Conn::client(a.as_raw_fd(), true).unwrap();
        let server = Conn::server(b.as_raw_fd(), true, uid()).unwrap();
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
        let client = Conn::client(a.as_raw_fd(), false).unwrap();
        rustix::net::send(&b, b"+OK hi", SendFlags::empty()).unwrap();
        assert!(
            client
                .recv(
                    client.fd(),
                    &mut [IoSliceMut::new(&mut [0u8; 8])],
                    RecvOpts::default()
                )
                .is_none()
        );
        assert!(client.is_plain());
        let mut buf = [0u8; 8];
        let (_, n) = rustix::net::recv(&a, &mut buf, RecvFlags::empty()).unwrap();
        assert_eq!(&buf[..n], b"+OK hi", "nothing consumed");
    }

    #[test]
    fn a_short_lookalike_of_hello_is_data() {
        let (a, b) = pair();
        let client = Conn::client(a.as_raw_fd(), false).unwrap();
        rustix::net::send(&b, &wire::HELLO_MAGIC[..5], SendFlags::empty()).unwrap();
        assert!(
            client
                .recv(client.fd(), &mut [IoSliceMut::new(&mut [0u8; 8])], nb())
                .is_none()
        );
        assert!(client.is_plain());
    }

    #[test]
    fn corrupt_indices_reset_the_connection() {
        let (a, b) = pair();
        let client = Conn::client(a.as_raw_fd(), false).unwrap();
        let server = Conn::server(b.as_raw_fd(), false, uid()).unwrap();
        send(&client, b"").unwrap();
        assert_eq!(recv(&client, 1, nb()), Err(Errno::AGAIN));
        send(&client, b"ok").unwrap();
        assert_eq!(recv_all(&server, 2), b"ok");
        // Confirmed: the server's writes switch to the s2c ring.
        server.progress(server.fd());
        // A hostile peer scribbles over the s2c head.
        let seg = server.seg().unwrap();
        seg.ring(Dir::ServerToClient)
            .ctrl()
            .head
            .store(u64::MAX / 3, SeqCst);
        assert_eq!(recv(&client, 10, nb()), Err(Errno::CONNRESET));
        assert_eq!(send(&client, b"z"), Err(Errno::CONNRESET));
        assert!(client.readiness(client.fd(), None).unwrap().err);
    }
}
