//! The outgoing stream: plain sends until our switch, then the ring, with
//! the kernel's write semantics (atomic small writes, EAGAIN, EPIPE and
//! SIGPIPE, SO_SNDTIMEO, EINTR by SA_RESTART). `send` and sendfile/splice
//! share one loop: push, ring the reader, and at a full ring wait (or
//! answer EAGAIN).

use super::anc::CarrierSend;
use super::state::Phase;
use super::{Conn, Outcome, Role, SendOpts, TxGuard, marker_holds, partial};
use crate::os::proc::{all_handlers_restart, raise_sigpipe};
use crate::os::time::{Deadline, now_ns};
use crate::shm::layout::{ANC_CREDS_ONLY, ANC_SLOTS};
use crate::shm::protocol::{self, ReaderEnd};
use crate::shm::ring::{Corrupt, Producer, Ring, SrcCursor};
use crate::shm::segment::Segment;
use crate::signals;
use crate::sync::Ordering::{Acquire, Relaxed};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use rustix::net::SendFlags;
use std::io::IoSlice;

/// A blocked writer re-checks liveness at least this often.
const WRITER_NAP_NS: u64 = 100_000_000;
/// How often a writer polls the socket for a dead peer.
const LIVENESS_NS: u64 = 20_000_000;
/// Writes up to this size go into the ring whole or not at all (capped at
/// half the ring), as the kernel appends a Unix stream write in whole
/// buffers of about 32 KiB: concurrent small writers (threads, processes,
/// a signal handler) never interleave inside one write.
const ATOMIC_WRITE: usize = 32 << 10;

/// What one push into the ring did.
enum Pushed {
    /// Moved this many bytes; more to come.
    Some(usize),
    /// Moved this many bytes, and the source is done (all sent, or the
    /// input file at its end).
    Last(usize),
}

/// Why a push failed.
enum PushError {
    Corrupt,
    Input(Errno),
}

impl From<Corrupt> for PushError {
    fn from(_: Corrupt) -> Self {
        PushError::Corrupt
    }
}

impl Conn {
    /// `send`-family semantics.
    pub fn send(&self, fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>], o: SendOpts) -> Outcome<usize> {
        self.send_with(fd, None, bufs, o)
    }

    /// [`send`](Self::send) for a sendmsg with ancillary data once our
    /// direction runs over the ring: `carrier` sends it on the socket (the
    /// kernel validates it and moves the descriptors), and a record in the
    /// segment ties it to the message's first byte.
    pub(super) fn send_with(
        &self,
        fd: BorrowedFd<'_>,
        carrier: Option<&mut CarrierSend<'_>>,
        bufs: &[IoSlice<'_>],
        o: SendOpts,
    ) -> Outcome<usize> {
        if let Some(g) = self.gate() {
            return g;
        }
        let mut tx = self.lock_tx();
        // Negotiation steps only until our direction runs over the ring.
        if !self.sb().tx_ring.load(Relaxed)
            && let Some(done) = self.send_negotiating(fd, &mut tx, bufs, o)
        {
            return done;
        }
        let seg = match self.seg_or_reset() {
            Ok(s) => s,
            Err(o) => return o,
        };
        let ring = self.tx_ring(seg);
        let mut src = SrcCursor::new(bufs);
        let nonblock = o.dontwait || self.nonblocking();
        let sigpipe = !o.nosignal;
        if src.remaining() == 0 {
            // The kernel checks only that the socket may still send.
            let gone = self.sb().shut_wr.load(Relaxed)
                || protocol::reader_end(ring.flags()) != ReaderEnd::Open
                || self.sb().sock_eof.load(Relaxed)
                || self.peer_hung_up(fd);
            return Outcome::Done(if gone {
                self.fail(Errno::PIPE, 0, sigpipe)
            } else {
                Ok(0)
            });
        }
        if let Some(r) = self.refuse_when_full(fd, &ring, nonblock, sigpipe) {
            return Outcome::Done(r);
        }
        let mut sndtimeo = None;
        if let Some(carrier) = carrier {
            tx = match self.send_record(fd, tx, seg, carrier, &src, o, &mut sndtimeo) {
                Ok(tx) => tx,
                Err(e) => return Outcome::Done(self.fail(e, 0, sigpipe)),
            };
        }
        let atomic = ATOMIC_WRITE.min(ring.capacity() / 2);
        Outcome::Done(
            self.tx_loop(fd, tx, &ring, nonblock, sigpipe, &mut sndtimeo, |p| {
                let n = p.push_whole(&mut src, atomic)?;
                Ok(if src.remaining() == 0 {
                    Pushed::Last(n)
                } else {
                    Pushed::Some(n)
                })
            }),
        )
    }

    /// Tx lock held, our direction not on the ring yet: runs the
    /// negotiation step that is due, then, if we still write plain, sends
    /// to the kernel. `None`: we switched; the ring takes the bytes.
    fn send_negotiating(
        &self,
        fd: BorrowedFd<'_>,
        tx: &mut TxGuard<'_>,
        bufs: &[IoSlice<'_>],
        o: SendOpts,
    ) -> Option<Outcome<usize>> {
        if self.role == Role::Client && self.phase() == Phase::Pending && self.hello_peek_due() {
            if let Some(mut rx) = self.try_lock_rx() {
                self.resolve_hello(fd, &mut rx, true);
            }
            if self.phase() == Phase::Plain {
                return Some(Outcome::Kernel);
            }
        }
        self.progress_tx(fd, tx);
        if self.sb().tx_ring.load(Relaxed) {
            return None;
        }
        let flags = SendFlags::from_bits_retain(o.raw);
        let r = rustix::net::sendmsg(fd, bufs, &mut Default::default(), flags);
        self.sent_plain(tx, &r);
        Some(Outcome::Done(r))
    }

    /// A failed write's result: the partial count, else the error, with
    /// SIGPIPE for EPIPE as the kernel raises it.
    fn fail(&self, e: Errno, sent: usize, sigpipe: bool) -> Result<usize, Errno> {
        if sent == 0 && e == Errno::PIPE && sigpipe {
            raise_sigpipe();
        }
        partial(sent, e)
    }

    /// Full since the last EAGAIN, with nothing read since? Then nothing
    /// fits, as in the kernel: a non-blocking write answers at once.
    /// Checked before a carrier can go out (it must never go without its
    /// message).
    fn refuse_when_full(
        &self,
        fd: BorrowedFd<'_>,
        ring: &Ring<'_>,
        nonblock: bool,
        sigpipe: bool,
    ) -> Option<Result<usize, Errno>> {
        if !nonblock || !self.still_full(ring) {
            return None;
        }
        Some(match self.tx_error(fd, ring) {
            Some(e) => self.fail(e, 0, sigpipe),
            None => Err(Errno::AGAIN),
        })
    }

    /// Sends the carrier of a message with ancillary data and publishes its
    /// record, once there is room for the record and at least the message's
    /// first atomic piece: the carrier must never go out without its
    /// message. Returns the tx lock (released while waiting for room).
    #[allow(clippy::too_many_arguments)]
    fn send_record<'c>(
        &'c self,
        fd: BorrowedFd<'_>,
        mut tx: TxGuard<'c>,
        seg: &Segment,
        carrier: &mut CarrierSend<'_>,
        src: &SrcCursor<'_, '_>,
        o: SendOpts,
        sndtimeo: &mut Option<Deadline>,
    ) -> Result<TxGuard<'c>, Errno> {
        let ring = self.tx_ring(seg);
        let anc = &seg.header().anc[self.tx_dir() as usize];
        let nonblock = o.dontwait || self.nonblocking();
        loop {
            if let Some(e) = self.tx_error(fd, &ring) {
                return Err(e);
            }
            let used = anc.head.load(Relaxed).wrapping_sub(anc.tail.load(Acquire));
            if used > ANC_SLOTS as u64 {
                return Err(self.broken());
            }
            let Ok(free) = ring.writable() else {
                return Err(self.broken());
            };
            let room = free >= src.remaining().min(ATOMIC_WRITE.min(ring.capacity() / 2));
            if used < ANC_SLOTS as u64 && room {
                break;
            }
            if nonblock {
                return Err(Errno::AGAIN);
            }
            // Never sleep holding the lock: a signal handler (or another
            // thread) writing to this socket would wait for us. The reader
            // frees records as it reads, and then wakes a sleeping writer
            // (`space_bell`), as it does when it frees room.
            drop(tx);
            let want = src.remaining().min(ATOMIC_WRITE.min(ring.capacity() / 2));
            self.wait_tx(fd, &ring, sndtimeo, || {
                let used = anc.head.load(Relaxed).wrapping_sub(anc.tail.load(Acquire));
                (used < ANC_SLOTS as u64 && ring.writable().map_or(true, |n| n >= want))
                    || self.tx_peer_ended(&ring)
            })?;
            tx = self.lock_tx();
        }
        // The carrier wakes a reader sleeping on the socket: it answers the
        // request to be woken made so far. It goes out before the data, so
        // a reader it wakes may find the ring empty and ask again: the
        // doorbell after the data answers that.
        let _ = protocol::take_waiter(&ring.flags().reader_waiting);
        carrier()?;
        let len = ring.writable().unwrap_or(0).min(src.remaining()) as u64;
        let creds = if o.creds_only { ANC_CREDS_ONLY } else { 0 };
        protocol::publish_record(anc, ring.head(), len | creds);
        Ok(tx)
    }

    /// sendfile(2)/splice(2) into the connection once our direction runs
    /// over the ring: up to `count` bytes go from `in_fd` (at `*off`, or its
    /// file position) straight into the ring. `Kernel`: the direction is
    /// still a plain socket; the caller uses the real call through
    /// [`send_plain_with`](Self::send_plain_with).
    pub fn send_from_fd(
        &self,
        fd: BorrowedFd<'_>,
        in_fd: BorrowedFd<'_>,
        mut off: Option<&mut i64>,
        count: usize,
        nonblock_call: bool,
    ) -> Outcome<usize> {
        if let Some(g) = self.gate() {
            return g;
        }
        let tx = self.lock_tx();
        if !self.sb().tx_ring.load(Relaxed) {
            return Outcome::Kernel;
        }
        let seg = match self.seg_or_reset() {
            Ok(s) => s,
            Err(o) => return o,
        };
        let ring = self.tx_ring(seg);
        let nonblock = nonblock_call || self.nonblocking();
        if let Some(r) = self.refuse_when_full(fd, &ring, nonblock, true) {
            return Outcome::Done(r);
        }
        let mut left = count;
        Outcome::Done(self.tx_loop(fd, tx, &ring, nonblock, true, &mut None, |p| {
            let (n, input_eof) = p
                .push_from_fd(in_fd, off.as_deref_mut(), left)?
                .map_err(PushError::Input)?;
            left -= n;
            Ok(if left == 0 || input_eof {
                Pushed::Last(n)
            } else {
                Pushed::Some(n)
            })
        }))
    }

    /// The loop of every write once our direction runs over the ring:
    /// push, ring a waiting reader, and at a full ring answer EAGAIN
    /// (non-blocking) or wait for room without the lock.
    #[allow(clippy::too_many_arguments)]
    fn tx_loop<'c>(
        &'c self,
        fd: BorrowedFd<'_>,
        mut tx: TxGuard<'c>,
        ring: &Ring<'_>,
        nonblock: bool,
        sigpipe: bool,
        sndtimeo: &mut Option<Deadline>,
        mut push: impl FnMut(&Producer<'_, '_>) -> Result<Pushed, PushError>,
    ) -> Result<usize, Errno> {
        let mut sent = 0;
        loop {
            if let Some(e) = self.tx_error(fd, ring) {
                return self.fail(e, sent, sigpipe);
            }
            let pushed = push(&tx.producer(ring, &self.tx_tail_cache));
            let (n, last) = match pushed {
                Ok(Pushed::Some(n)) => (n, false),
                Ok(Pushed::Last(n)) => (n, true),
                Err(PushError::Corrupt) => return self.fail(self.broken(), sent, sigpipe),
                Err(PushError::Input(e)) => return partial(sent, e),
            };
            if n > 0 {
                sent += n;
                self.data_bell(fd, ring.flags());
            }
            if last {
                return Ok(sent);
            }
            if n > 0 {
                continue;
            }
            if nonblock {
                // The read position the failed push saw (it refreshed the
                // cache), never a later one: a marker naming a position the
                // reader reached after the push would answer EAGAIN for
                // ever once the ring is empty.
                self.full_at
                    .store(self.tx_tail_cache.load(Relaxed).wrapping_add(1), Relaxed);
                return partial(sent, Errno::AGAIN);
            }
            drop(tx);
            if let Err(e) = self.wait_tx(fd, ring, sndtimeo, || self.tx_quick_ready(ring)) {
                return self.fail(e, sent, sigpipe);
            }
            tx = self.lock_tx();
        }
    }

    /// Runs `f`, a real send that carries ancillary data (or sendfile,
    /// splice), while our direction is still a plain socket, counting its
    /// bytes; `None` once the direction runs over the ring.
    pub fn send_plain_with(
        &self,
        f: impl FnOnce() -> Result<usize, Errno>,
    ) -> Option<Result<usize, Errno>> {
        if self.phase() == Phase::Broken {
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

    /// Why a write must fail now (EPIPE), if it must.
    #[inline]
    fn tx_error(&self, fd: BorrowedFd<'_>, ring: &Ring<'_>) -> Option<Errno> {
        // EPIPE even when the peer left our data unread: a Unix stream send
        // never reports the pending ECONNRESET (reads, poll and SO_ERROR
        // do), so it stays pending for them.
        let fail = || Some(Errno::PIPE);
        if self.sb().shut_wr.load(Relaxed)
            || protocol::reader_end(ring.flags()) != ReaderEnd::Open
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
        self.tx_liveness(fd)
    }

    /// Every 64th write: a look at the socket at most every LIVENESS_NS.
    #[cold]
    fn tx_liveness(&self, fd: BorrowedFd<'_>) -> Option<Errno> {
        let now = now_ns();
        if now >= self.next_live_check.load(Relaxed) {
            self.next_live_check.store(now + LIVENESS_NS, Relaxed);
            if self.peer_hung_up(fd) {
                return Some(Errno::PIPE);
            }
        }
        None
    }

    /// Whether the kernel's buffer was full when we switched to the ring
    /// and the peer has not read since (see `SideBlock::plain_full`).
    pub(super) fn plain_still_full(&self, ring: &Ring<'_>) -> bool {
        marker_holds(&self.sb().plain_full, || protocol::plain_read(ring.flags()))
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
    pub(super) fn tx_poll_ready(&self, ring: &Ring<'_>) -> bool {
        (ring.writable().map_or(true, |n| n >= ring.capacity() / 2) && !self.plain_still_full(ring))
            || protocol::reader_end(ring.flags()) == ReaderEnd::Released
            || self.sb().sock_eof.load(Relaxed)
    }

    fn tx_quick_ready(&self, ring: &Ring<'_>) -> bool {
        ring.writable().map_or(true, |n| n >= ring.capacity() / 2) || self.tx_peer_ended(ring)
    }

    /// The reader is gone or going: a waiting writer must look again (to
    /// find EPIPE).
    fn tx_peer_ended(&self, ring: &Ring<'_>) -> bool {
        protocol::reader_end(ring.flags()) != ReaderEnd::Open || self.sb().sock_eof.load(Relaxed)
    }

    /// Blocks until `ready` (room in the ring, or in its record queue; or
    /// the peer is gone) or a signal interrupts, on a shared futex with a
    /// bounded nap so that a killed peer is noticed.
    ///
    /// `sndtimeo` holds SO_SNDTIMEO's end once known (read on the first wait
    /// of a call, so the fast path never pays for it); past it: EAGAIN.
    fn wait_tx(
        &self,
        fd: BorrowedFd<'_>,
        ring: &Ring<'_>,
        sndtimeo: &mut Option<Deadline>,
        ready: impl Fn() -> bool,
    ) -> Result<(), Errno> {
        if sndtimeo.is_some_and(|d| d.expired()) {
            return Err(Errno::AGAIN);
        }
        // Spin first: a fast reader usually frees room within it, and then
        // this wait costs no syscall at all.
        if self.spin.spin(&ready) {
            return Ok(());
        }
        let end = *sndtimeo.get_or_insert_with(|| {
            rustix::net::sockopt::socket_timeout(fd, rustix::net::sockopt::Timeout::Send)
                .ok()
                .flatten()
                .map_or(Deadline::NEVER, Deadline::after)
        });
        if end.expired() {
            return Err(Errno::AGAIN);
        }
        let f = ring.flags();
        let seq = protocol::space_seq(f);
        protocol::announce_waiting(&f.writer_sleeping);
        if ready() {
            return Ok(());
        }
        let left = end
            .remaining_ns()
            .map_or(WRITER_NAP_NS, |n| n.clamp(1, WRITER_NAP_NS));
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
                if !end.is_never()
                    || !signals::handler_ran(mark).unwrap_or_else(all_handlers_restart) =>
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
}
