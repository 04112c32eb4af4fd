//! One accelerated connection: negotiation, the per-direction switch from the
//! socket to the ring, and the kernel's stream semantics on top of the rings
//! (docs/DESIGN.md).
//!
//! Each direction switches separately. Until its writer publishes `switch_at`
//! (the count of plain bytes it sent), a direction is an ordinary socket
//! stream. The reader consumes exactly that many plain bytes, then reads the
//! ring. After the switch the socket carries only one-byte doorbells in that
//! direction; it stays open for the connection's life as readiness source,
//! liveness signal and fallback.
//!
//! The rooms: [`state`] (the phase), `negotiate` (HELLO, confirm, switch,
//! exec), `bells` (doorbells and wake-ups), `rx` and `tx` (the stream),
//! `anc` (ancillary data), `close` (shutdown, close, exit, the peer's end),
//! `query` (readiness, ioctl and sockopt answers), `handover` (exec),
//! `listing` (what the registry says of it, for `tsss stat`).
//!
//! Every entry point takes the descriptor the application used, as a
//! `BorrowedFd` made at the FFI edge: with dup() a connection has several,
//! and any of them may be closed while the others live on.

mod anc;
mod bells;
mod close;
mod handover;
mod listing;
mod negotiate;
pub mod offers;
pub mod posts;
mod query;
mod rx;
pub mod spin;
pub mod state;
#[cfg(test)]
mod tests;
mod tx;

pub use anc::{CarrierRecv, CarrierSend, ControlRecv, NameFrom};
pub use bells::wake_space_sleepers;
pub use listing::plain_from_start;
pub use query::Ready;

use crate::os::time::now_ns;
use crate::shm::layout::Dir;
use crate::shm::ring::{Consumer, Producer, Ring};
use crate::shm::segment::Segment;
use crate::shm::side::{ShmGuard, Side, SideBlock};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};
use crate::wire;
use crate::{config, registry};
use rustix::fd::{AsRawFd, BorrowedFd, RawFd};
use rustix::io::Errno;
use state::Phase;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What an accelerated connection made of a call.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Not (or no longer) accelerated: the caller makes the real call and
    /// the kernel answers.
    Kernel,
    /// Answered here, with the kernel's semantics.
    Done(Result<T, Errno>),
}

impl<T> Outcome<T> {
    /// The result, if answered here.
    pub fn done(self) -> Option<Result<T, Errno>> {
        match self {
            Outcome::Kernel => None,
            Outcome::Done(r) => Some(r),
        }
    }
}

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

impl RecvOpts {
    /// From a recv(2) call's MSG_* flags.
    pub fn from_flags(flags: i32) -> RecvOpts {
        RecvOpts {
            peek: flags & libc::MSG_PEEK != 0,
            waitall: flags & libc::MSG_WAITALL != 0,
            dontwait: flags & libc::MSG_DONTWAIT != 0,
        }
    }
}

impl SendOpts {
    /// From a send(2) call's MSG_* flags.
    pub fn from_flags(flags: i32) -> SendOpts {
        SendOpts {
            dontwait: flags & libc::MSG_DONTWAIT != 0,
            nosignal: flags & libc::MSG_NOSIGNAL != 0,
            creds_only: false,
            raw: flags as u32,
        }
    }
}

/// Plain-phase state of the incoming direction, guarded by the rx lock.
#[derive(Default, Clone, Copy, PartialEq)]
struct RxState {
    /// Plain bytes consumed in this direction (after HELLO for s2c).
    plain_read: u64,
    /// The writer's published `switch_at`, once seen.
    limit: Option<u64>,
    /// See `SideBlock::plain_known`.
    plain_known: u64,
}

impl RxState {
    /// Plain bytes left before `limit`, the switch point; `None`: read
    /// past it (only a broken peer's switch point can be behind us).
    fn left_before(&self, limit: u64) -> Option<u64> {
        limit.checked_sub(self.plain_read)
    }
}

/// Plain-phase state of the outgoing direction, guarded by the tx lock.
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
    /// Whether a wait spins first, from what its spins found.
    spin: spin::SpinPolicy,
    /// The socket's inode: names the connection across dup2 and exec.
    ino: AtomicU64,
    /// Epoll watches of this process parked on us (see [`posts`]).
    parked: AtomicU32,
    /// Server: the listening descriptor it was accepted on (-1: none, or
    /// not accepted in this process) and when (`offers`).
    listener: RawFd,
    born_ns: u64,
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
            plain_known: b.plain_known.load(Relaxed),
        }
    }
    fn store(&self, b: &SideBlock) {
        b.plain_read.store(self.plain_read, Relaxed);
        b.limit_plus1
            .store(self.limit.map_or(0, |l| l + 1), Relaxed);
        b.plain_known.store(self.plain_known, Relaxed);
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
/// release only if it changed (in the ring phase it never does). The
/// ring's producer (tx) or consumer (rx) role exists only through it.
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

impl Locked<'_, TxState> {
    /// The outgoing ring's one producer, for as long as the tx lock is
    /// held, with our cached copy of the consumer's index.
    fn producer<'r, 's>(&'r self, ring: &'r Ring<'s>, cache: &'r AtomicU64) -> Producer<'r, 's> {
        ring.producer().with_cache(cache)
    }
}

impl Locked<'_, RxState> {
    /// The incoming ring's one consumer, for as long as the rx lock is held.
    fn consumer<'r, 's>(&'r self, ring: &'r Ring<'s>) -> Consumer<'r, 's> {
        ring.consumer()
    }
}

/// A pending client peeks for HELLO from its write path this often.
const HELLO_PEEK_NS: u64 = 200_000;

impl Conn {
    /// A client socket that connected with the marker bound; HELLO may
    /// follow. Errors only if the side block cannot be made (then stay plain).
    pub fn client(fd: BorrowedFd<'_>, nonblock: bool) -> Result<Conn, String> {
        Self::new(fd, Role::Client, Phase::Pending, nonblock)
    }

    /// A server socket whose peer carries the marker: creates the segment and
    /// sends HELLO. On error the connection stays plain; the reason is returned
    /// for the log.
    /// `listener`: the descriptor it was accepted on (see `offers`).
    pub fn server(
        fd: BorrowedFd<'_>,
        nonblock: bool,
        peer_uid: u32,
        listener: RawFd,
    ) -> Result<Conn, String> {
        let cap = config::ring_size();
        let me = rustix::process::geteuid().as_raw();
        let grant = (peer_uid != me).then_some(peer_uid);
        let mut c = Self::new(fd, Role::Server, Phase::Offered, nonblock)?;
        c.listener = listener;
        c.born_ns = now_ns();
        let (seg, hello) =
            Segment::create(cap, cap, grant).map_err(|e| format!("cannot create segment: {e}"))?;
        c.offer(fd, &hello)?;
        c.remember_segment(&hello);
        let _ = c.seg.set(seg);
        crate::log!(
            crate::log::DEBUG,
            "fd {}: offered shmid {} ({} KiB per direction)",
            c.fd,
            hello.shmid,
            cap >> 10
        );
        Ok(c)
    }

    fn new(fd: BorrowedFd<'_>, role: Role, phase: Phase, nonblock: bool) -> Result<Conn, String> {
        let side = Side::new().map_err(|e| format!("cannot map side state: {e}"))?;
        side.block().state.store(phase as u8, Release);
        side.block().nonblock.store(nonblock, Release);
        if PEEK_OFF_SEEN.load(Relaxed) {
            take_peek_off(fd, side.block());
        }
        Ok(Conn {
            fd: fd.as_raw_fd(),
            role,
            side,
            seg: OnceLock::new(),
            // Not at the first write: a server that has not even
            // accepted yet has sent nothing (a wasted peek per connect).
            next_hello_peek: AtomicU64::new(now_ns() + HELLO_PEEK_NS),
            next_live_check: AtomicU64::new(0),
            tx_ops: AtomicU32::new(0),
            tx_tail_cache: AtomicU64::new(0),
            full_at: AtomicU64::new(0),
            aliases: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            spin: spin::SpinPolicy::default(),
            ino: AtomicU64::new(rustix::fs::fstat(fd).map_or(0, |st| st.st_ino)),
            parked: AtomicU32::new(0),
            listener: -1,
            born_ns: 0,
        })
    }

    /// The connection's spin policy (for poll and epoll waits).
    pub fn spin_policy(&self) -> &spin::SpinPolicy {
        &self.spin
    }

    /// Whether a spin on the rings can see what a poll or epoll wait wants
    /// (input, room to write): not while that direction still runs over
    /// the socket. A burst of new connections, each with its first request
    /// plain, paid a full spin per connection.
    pub fn ring_can_answer(&self, want_read: bool, want_write: bool) -> bool {
        (want_read && self.sb().rx_ring.load(Relaxed))
            || (want_write && self.sb().tx_ring.load(Relaxed))
    }

    fn sb(&self) -> &SideBlock {
        self.side.block()
    }

    /// The connection's phase. The byte is ours (shared only with our fork
    /// children): one we never wrote fails closed, as a broken connection.
    fn phase(&self) -> Phase {
        Phase::decode(self.sb().state.load(Acquire)).unwrap_or(Phase::Broken)
    }

    fn set_phase(&self, p: Phase) {
        self.sb().state.store(p as u8, Release);
        self.changed();
    }

    /// Moves the phase from `from` to `to`; false if it was not `from`.
    fn advance_phase(&self, from: Phase, to: Phase) -> bool {
        self.sb()
            .state
            .compare_exchange(from as u8, to as u8, AcqRel, Relaxed)
            .is_ok_and(|_| {
                self.changed();
                true
            })
    }

    /// Where every call that acts on the connection starts: `Some` answer
    /// for a plain one (the kernel's) or a broken one (ECONNRESET).
    fn gate<T>(&self) -> Option<Outcome<T>> {
        match self.phase() {
            Phase::Plain => Some(Outcome::Kernel),
            Phase::Broken => Some(Outcome::Done(Err(Errno::CONNRESET))),
            _ => None,
        }
    }

    /// The segment, for a direction past its switch. A failed re-attach
    /// marks the connection broken: never fall back to the bare socket,
    /// whose stream is past the switch.
    fn seg_or_reset<T>(&self) -> Result<&Segment, Outcome<T>> {
        self.seg().ok_or_else(|| match self.phase() {
            Phase::Plain => Outcome::Kernel,
            _ => Outcome::Done(Err(Errno::CONNRESET)),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// A client whose server has not offered yet (nor shown it never
    /// will): the socket's own readiness is the right one until then.
    pub fn awaits_offer(&self) -> bool {
        self.role == Role::Client && self.phase() == Phase::Pending
    }

    /// No longer accelerated: the caller should forget this connection and
    /// pass every call to the kernel.
    pub fn is_plain(&self) -> bool {
        self.phase() == Phase::Plain
    }

    /// Both directions run over the ring.
    pub fn is_accelerated(&self) -> bool {
        self.sb().rx_ring.load(Acquire) && self.sb().tx_ring.load(Acquire)
    }

    pub fn set_nonblocking(&self, on: bool) {
        self.sb().nonblock.store(on, Relaxed);
    }

    /// After a setsockopt(SO_RCVLOWAT): the next read that needs the value
    /// asks the kernel (as it clamped it).
    pub fn forget_rcvlowat(&self) {
        self.sb().rcvlowat.store(0, Relaxed);
    }

    /// setsockopt(SO_PEEK_OFF) on a connection of ours: kept in the side
    /// block, never given to the kernel, whose offset would move with our
    /// own peeks at doorbells (and hide them). Peeks over the ring start
    /// at the first unread byte whatever it holds.
    pub fn set_peek_off(&self, v: i32) {
        store_peek_off(self.sb(), v);
    }

    /// What getsockopt(SO_PEEK_OFF) answers: the program's last value.
    pub fn peek_off(&self) -> i32 {
        (self.sb().peek_off_plus1.load(Relaxed) - 1) as i32
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

    /// Our incoming and outgoing rings in `seg`.
    fn rx_ring<'s>(&self, seg: &'s Segment) -> Ring<'s> {
        seg.ring(self.rx_dir())
    }

    fn tx_ring<'s>(&self, seg: &'s Segment) -> Ring<'s> {
        seg.ring(self.tx_dir())
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
        self.set_phase(Phase::Plain);
        crate::log!(crate::log::INFO, "fd {}: plain: {}", self.fd, why);
        self.listed(registry::Event::FellBack(self.role, why));
    }

    /// The peer corrupted the shared header: every call fails from now on.
    fn broken(&self) -> Errno {
        if self.sb().state.swap(Phase::Broken as u8, AcqRel) != Phase::Broken as u8 {
            self.changed();
            crate::log!(
                crate::log::INFO,
                "fd {}: shared segment corrupted by the peer; connection reset",
                self.fd
            );
        }
        Errno::CONNRESET
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
        self.sb()
            .sharers
            .fetch_add(1, crate::sync::Ordering::SeqCst);
    }

    /// Takes back a [`before_fork`](Self::before_fork) made for a new
    /// image that never ran (exec or spawn failed).
    pub fn undo_fork(&self) {
        self.sb()
            .sharers
            .fetch_sub(1, crate::sync::Ordering::SeqCst);
    }

    /// A pending client's write path looks for HELLO at most this often;
    /// true when it is time to look.
    fn hello_peek_due(&self) -> bool {
        let now = now_ns();
        if now < self.next_hello_peek.load(Relaxed) {
            return false;
        }
        self.next_hello_peek.store(now + HELLO_PEEK_NS, Relaxed);
        true
    }

    /// Sends HELLO, the first bytes the server ever sends.
    fn offer(&self, fd: BorrowedFd<'_>, hello: &wire::Hello) -> Result<(), String> {
        use rustix::net::SendFlags;
        match rustix::net::send(
            fd,
            &hello.encode(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(wire::HELLO_LEN) => Ok(()),
            // A fresh socket's buffer is empty, so 40 bytes never split.
            Ok(n) => Err(format!("HELLO send was short ({n} bytes)")),
            Err(e) => Err(format!("cannot send HELLO: {e}")),
        }
    }
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

/// What a call that moved `done` bytes before meeting `e` returns, as the
/// kernel does: the partial count, the error left for the next call.
fn partial(done: usize, e: Errno) -> Result<usize, Errno> {
    if done > 0 { Ok(done) } else { Err(e) }
}

/// Clients of this process that attached so far: an epoll wait moves the
/// kernel registrations of those that attached in a call of their own
/// (a read that took the HELLO) into the emulation.
static ATTACHES: AtomicU64 = AtomicU64::new(0);

/// How many clients of this process attached so far.
pub fn attaches() -> u64 {
    ATTACHES.load(Acquire)
}

/// Set once the program sets SO_PEEK_OFF on a socket that is not (yet) a
/// connection of ours: new connections then look at the kernel's value.
static PEEK_OFF_SEEN: AtomicBool = AtomicBool::new(false);

/// setsockopt(SO_PEEK_OFF) on a socket that is not a connection of ours.
pub fn peek_off_set_elsewhere() {
    PEEK_OFF_SEEN.store(true, Relaxed);
}

/// The side block keeps SO_PEEK_OFF plus one, so that its zero means off.
fn store_peek_off(b: &SideBlock, v: i32) {
    b.peek_off_plus1.store(i64::from(v) + 1, Relaxed);
}

/// A socket that got SO_PEEK_OFF before it became ours (set before
/// connect): the value moves to the side block and the kernel's is turned
/// off (see [`Conn::set_peek_off`]).
fn take_peek_off(fd: BorrowedFd<'_>, b: &SideBlock) {
    let v = crate::os::net::peek_off(fd);
    if v >= 0 && crate::os::net::clear_peek_off(fd).is_ok() {
        store_peek_off(b, v);
    }
}
