//! The incoming stream: plain bytes up to the peer's switch point, then the
//! ring, with the kernel's read semantics (MSG_PEEK, MSG_WAITALL, EOF,
//! ECONNRESET, SO_RCVTIMEO, EINTR).

use super::anc::{CarrierRecv, discard_carrier};
use super::spin::{Spun, spin_until};
use super::state::Phase;
use super::{Conn, Outcome, RecvOpts, RxGuard, partial};
use crate::shm::layout::CARRIER;
use crate::shm::protocol::{self, WriterEnd};
use crate::shm::ring::{DstCursor, Ring, total_len};
use crate::shm::segment::Segment;
use crate::sync::Ordering::{Acquire, Relaxed};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use rustix::net::RecvFlags;
use std::io::IoSliceMut;

/// What one non-blocking pass over the incoming direction found.
pub(super) enum Step {
    /// Data, and the call must end here (after a message with ancillary
    /// data, as the kernel's does).
    Stop,
    Data,
    Eof,
    Empty,
}

impl Conn {
    /// `recv`-family semantics. Ancillary data reached on the way is
    /// discarded, as the kernel does for read().
    pub fn recv(
        &self,
        fd: BorrowedFd<'_>,
        bufs: &mut [IoSliceMut<'_>],
        o: RecvOpts,
    ) -> Outcome<usize> {
        self.recv_with(fd, &mut |peek| discard_carrier(fd, peek), bufs, o)
    }

    /// [`recv`](Self::recv) for recvmsg: `carrier` receives the ancillary
    /// data of a message the read reaches.
    pub(super) fn recv_with(
        &self,
        fd: BorrowedFd<'_>,
        carrier: &mut CarrierRecv<'_>,
        bufs: &mut [IoSliceMut<'_>],
        o: RecvOpts,
    ) -> Outcome<usize> {
        let mut dst = DstCursor::new(bufs);
        let nonblock = o.dontwait || self.nonblocking();
        let total = dst.remaining();
        loop {
            if let Some(g) = self.gate() {
                // Went plain in another call: what was read so far is ours.
                return match (g, dst.filled()) {
                    (Outcome::Kernel, n) if n > 0 => Outcome::Done(Ok(n)),
                    (g, _) => g,
                };
            }
            if dst.remaining() == 0 && dst.filled() > 0 {
                return Outcome::Done(Ok(dst.filled()));
            }
            let step = if dst.remaining() == 0 {
                // recv(len 0) waits like a read, then returns 0.
                let mut b = [0u8; 1];
                let mut probe = [IoSliceMut::new(&mut b)];
                let mut probe = DstCursor::new(&mut probe);
                self.rx_locked_step(fd, carrier, &mut probe, true)
                    .map(|s| match s {
                        Some(Step::Data | Step::Stop) => Some(Step::Eof),
                        other => other,
                    })
            } else {
                self.rx_locked_step(fd, carrier, &mut dst, o.peek)
            };
            let step = match step {
                // Went plain meanwhile: the gate answers.
                Ok(None) => continue,
                Ok(Some(s)) => s,
                Err(e) => return Outcome::Done(partial(dst.filled(), e)),
            };
            match step {
                Step::Eof | Step::Stop => return Outcome::Done(Ok(dst.filled())),
                Step::Data
                    if dst.remaining() == 0 || dst.filled() >= self.read_target(fd, o, total) =>
                {
                    return Outcome::Done(Ok(dst.filled()));
                }
                Step::Data => continue,
                Step::Empty => {}
            }
            if nonblock {
                return Outcome::Done(partial(dst.filled(), Errno::AGAIN));
            }
            if let Err(e) = self.wait_rx(fd) {
                return Outcome::Done(partial(dst.filled(), e));
            }
        }
    }

    /// How many bytes a read of `total` returns once it has them, as the
    /// kernel's sock_rcvlowat() says: a peek returns what there is;
    /// MSG_WAITALL waits for all; else SO_RCVLOWAT, read from the socket
    /// the first time it matters. Below it, a read that cannot block looks
    /// once more before it returns what it has, as the kernel's does (that
    /// look takes a pending reset, which the next call then no longer gets).
    fn read_target(&self, fd: BorrowedFd<'_>, o: RecvOpts, total: usize) -> usize {
        if o.peek {
            return 1;
        }
        if o.waitall {
            return total;
        }
        let b = self.sb();
        let mut lowat = b.rcvlowat.load(Relaxed);
        if lowat == 0 {
            lowat = crate::os::net::rcvlowat(fd);
            b.rcvlowat.store(lowat, Relaxed);
        }
        (lowat as usize).clamp(1, total.max(1))
    }

    /// One pass under the rx lock, after any negotiation step that is due;
    /// `None` if the connection went plain.
    fn rx_locked_step(
        &self,
        fd: BorrowedFd<'_>,
        carrier: &mut CarrierRecv<'_>,
        dst: &mut DstCursor<'_, '_>,
        peek: bool,
    ) -> Result<Option<Step>, Errno> {
        let mut rx = self.lock_rx();
        self.progress_rx(fd, &mut rx);
        match self.phase() {
            Phase::Pending => Ok(Some(Step::Empty)),
            Phase::Plain => Ok(None),
            _ => self.rx_step(fd, carrier, &mut rx, dst, peek).map(Some),
        }
    }

    /// One non-blocking pass: plain bytes below the limit, then the ring.
    pub(super) fn rx_step(
        &self,
        fd: BorrowedFd<'_>,
        carrier: &mut CarrierRecv<'_>,
        rx: &mut RxGuard<'_>,
        dst: &mut DstCursor<'_, '_>,
        peek: bool,
    ) -> Result<Step, Errno> {
        let seg = self.seg().ok_or(Errno::CONNRESET)?;
        let start = dst.filled();
        if !self.sb().rx_ring.load(Relaxed)
            && let Some(step) = self.rx_plain(fd, seg, rx, dst, peek)?
        {
            return Ok(step);
        }
        self.rx_ring_step(fd, seg, rx, carrier, dst, peek, start)
    }

    /// The plain phase of a pass: socket bytes up to the peer's switch
    /// point. `None`: the ring phase began (the caller goes on there).
    fn rx_plain(
        &self,
        fd: BorrowedFd<'_>,
        seg: &Segment,
        rx: &mut RxGuard<'_>,
        dst: &mut DstCursor<'_, '_>,
        peek: bool,
    ) -> Result<Option<Step>, Errno> {
        let start = dst.filled();
        let data_or =
            |dst: &DstCursor<'_, '_>, s: Step| if dst.filled() > start { Step::Data } else { s };
        loop {
            self.progress_rx(fd, rx);
            if self.sb().rx_ring.load(Relaxed) {
                return Ok(None);
            }
            if dst.remaining() == 0 || (peek && dst.filled() > start) {
                return Ok(Some(Step::Data));
            }
            let known = rx.limit;
            let cap = match known {
                Some(l) => match rx.left_before(l) {
                    Some(k) => k as usize,
                    None => return Err(self.broken()),
                },
                None => usize::MAX,
            };
            let (want, got) = plain_recv(fd, dst, cap, known.is_some(), peek);
            let mut n = match got {
                Ok(0) | Err(Errno::AGAIN) => {
                    self.progress_rx(fd, rx);
                    if rx.limit.is_some() && rx.limit != known {
                        continue;
                    }
                    if got.is_err() {
                        return Ok(Some(data_or(dst, Step::Empty)));
                    }
                    self.socket_eof(fd);
                    return Ok(Some(data_or(dst, Step::Eof)));
                }
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                // The kernel resets us when the peer went away with bytes
                // of ours unread; if we never sent it data, those were only
                // our control bytes, and the program would have seen EOF.
                Err(Errno::CONNRESET) if self.sent_nothing(seg) => {
                    return Ok(Some(data_or(dst, Step::Eof)));
                }
                Err(e) => return Err(e),
            };
            if known.is_none() {
                n = self.take_peeked(fd, seg, rx, dst, n, peek)?;
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
                self.peek_ring_start(rx, seg, dst)
                    .map_err(|_| self.broken())?;
            }
            if peek || (rx.limit.is_none() && n < want) {
                return Ok(Some(data_or(dst, Step::Empty)));
            }
        }
    }

    /// After peeking `n` plain bytes with the switch point unknown: bytes
    /// seen before it is published are data, because the writer publishes
    /// before it sends any control byte. Counts those below it (now that
    /// it may be known) and, unless `peek`, takes them off the socket.
    fn take_peeked(
        &self,
        fd: BorrowedFd<'_>,
        seg: &Segment,
        rx: &mut RxGuard<'_>,
        dst: &mut DstCursor<'_, '_>,
        mut n: usize,
        peek: bool,
    ) -> Result<usize, Errno> {
        if let Some(l) = protocol::switch_point(self.rx_ring(seg).flags()) {
            rx.limit = Some(l);
            let Some(k) = rx.left_before(l) else {
                return Err(self.broken());
            };
            n = n.min(k as usize);
        }
        if !peek && n > 0 {
            let cur = dst.current();
            match rustix::net::recv(fd, &mut cur[..n], RecvFlags::DONTWAIT) {
                Ok((_, k)) if k == n => {}
                _ => return Err(self.broken()),
            }
        }
        Ok(n)
    }

    /// The ring phase of a pass: the ring's bytes, up to the end of the
    /// next message with ancillary data; at an empty ring, the peer's end
    /// of stream if it ended it (unless the pass, begun with `start` bytes
    /// in `dst`, has data to return first).
    #[allow(clippy::too_many_arguments)]
    fn rx_ring_step(
        &self,
        fd: BorrowedFd<'_>,
        seg: &Segment,
        rx: &RxGuard<'_>,
        carrier: &mut CarrierRecv<'_>,
        dst: &mut DstCursor<'_, '_>,
        peek: bool,
        start: usize,
    ) -> Result<Step, Errno> {
        let ring = self.rx_ring(seg);
        let mut passcred = None;
        // Twice at most: an end of stream seen with bytes still readable
        // reads them first.
        for _ in 0..2 {
            if let Some(step) =
                self.rx_records_pass(fd, seg, rx, carrier, dst, peek, &mut passcred)?
            {
                return Ok(step);
            }
            if dst.filled() > start || dst.remaining() == 0 {
                return Ok(Step::Data);
            }
            match self.rx_ring_end(fd, &ring)? {
                Some(step) => return Ok(step),
                None => continue,
            }
        }
        Ok(if dst.filled() > start {
            Step::Data
        } else {
            Step::Empty
        })
    }

    /// At an empty ring: the peer's end of stream (EOF, or its reset, once
    /// the queue is empty as with the kernel), or `Some(Empty)` to wait;
    /// `None`: bytes came meanwhile, read them first.
    fn rx_ring_end(&self, fd: BorrowedFd<'_>, ring: &Ring<'_>) -> Result<Option<Step>, Errno> {
        let end = protocol::writer_end(ring.flags());
        if end != WriterEnd::Open || self.sb().shut_rd.load(Acquire) {
            return self.rx_at_end(fd, ring, end != WriterEnd::Reset);
        }
        self.drain_bells(fd);
        if self.phase() == Phase::Broken {
            return Err(Errno::CONNRESET);
        }
        if self.sb().sock_eof.load(Acquire) {
            // The peer is gone without a close of its own (killed): had
            // it left our bytes unread, the kernel would say so once.
            return self.rx_at_end(fd, ring, false);
        }
        Ok(Some(Step::Empty))
    }

    /// The end of the stream: bytes that came meanwhile first (`None`),
    /// then a pending reset, once, else EOF. `look`: a peer that shut its
    /// writes and was then killed with our bytes unread resets too, so
    /// look at the socket first (a cold path).
    fn rx_at_end(
        &self,
        fd: BorrowedFd<'_>,
        ring: &Ring<'_>,
        look: bool,
    ) -> Result<Option<Step>, Errno> {
        if ring.readable().map_err(|_| self.broken())? > 0 {
            return Ok(None);
        }
        if look && !self.sb().sock_eof.load(Acquire) {
            self.drain_bells(fd);
        }
        if self.take_pending_reset(fd) {
            return Err(Errno::CONNRESET);
        }
        Ok(Some(Step::Eof))
    }

    /// Whether no byte of ours awaits the peer: none ever sent on the
    /// socket, none unread in our ring.
    fn sent_nothing(&self, seg: &Segment) -> bool {
        self.sb().plain_written.load(Relaxed) == 0 && self.tx_ring(seg).readable().unwrap_or(0) == 0
    }

    pub(super) fn rx_quick_ready(&self, ring: &Ring<'_>) -> bool {
        ring.readable().map_or(true, |n| n > 0)
            || protocol::writer_end(ring.flags()) != WriterEnd::Open
            || self.sb().shut_rd.load(Relaxed)
            || self.sb().sock_eof.load(Relaxed)
    }

    /// Blocks until the incoming direction may have progressed: spins on the
    /// ring briefly, then sleeps in a blocking one-byte MSG_PEEK on the real
    /// socket, which honours SO_RCVTIMEO and SA_RESTART exactly as the
    /// kernel would for this very read.
    pub(super) fn wait_rx(&self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        let ring_phase = self.sb().rx_ring.load(Acquire);
        let seg = self.seg();
        if let (true, Some(seg)) = (ring_phase, seg) {
            let ring = self.rx_ring(seg);
            if self.spin.spin(|| self.rx_quick_ready(&ring)) {
                return Ok(());
            }
            protocol::announce_waiting(&ring.flags().reader_waiting);
            if self.rx_quick_ready(&ring) {
                return Ok(());
            }
        }
        let mut b = [0u8; 1];
        match rustix::net::recv(fd, &mut b, RecvFlags::PEEK) {
            // A carrier heads the socket, so this peek will not wait again.
            Ok((_, 1)) if b[0] == CARRIER && ring_phase => match seg {
                Some(seg) => self.wait_carrier_data(&self.rx_ring(seg)),
                None => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(e @ (Errno::AGAIN | Errno::INTR)) => Err(e),
            // Errors surface from the next pass.
            Err(_) => Ok(()),
        }
    }

    /// A carrier heads the socket: its record and bytes follow at once
    /// (the writer sends it first). The writer is usually a few
    /// instructions from publishing: a short spin, then yields, then naps
    /// that give it 100 ms; ones that never come are a broken peer, not a
    /// reason to spin.
    fn wait_carrier_data(&self, ring: &Ring<'_>) -> Result<(), Errno> {
        if spin_until(20_000, || self.rx_quick_ready(ring)) == Spun::Caught {
            return Ok(());
        }
        for i in 0..200 {
            if self.rx_quick_ready(ring) {
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
}

/// One plain-phase receive into `dst`, at most `cap` bytes. With the
/// switch point unknown (`!known`) or for a peek it only peeks; returns
/// how many bytes were asked for and what the kernel said.
fn plain_recv(
    fd: BorrowedFd<'_>,
    dst: &mut DstCursor<'_, '_>,
    cap: usize,
    known: bool,
    peek: bool,
) -> (usize, Result<usize, Errno>) {
    let flags = if known && !peek {
        RecvFlags::DONTWAIT
    } else {
        RecvFlags::DONTWAIT | RecvFlags::PEEK
    };
    if peek && dst.at_start() {
        // A peek cannot go on where it left off: one vectored call over
        // all the buffers, as the kernel's peek fills them.
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
        let want = total_len(&v);
        let r = rustix::net::recvmsg(fd, &mut v, &mut Default::default(), flags);
        return (want, r.map(|m| m.bytes));
    }
    let cur = dst.current();
    let want = cur.len().min(cap);
    (
        want,
        rustix::net::recv(fd, &mut cur[..want], flags).map(|(_, n)| n),
    )
}

impl Conn {
    /// splice(2) out of the connection into `out` (a pipe): peeks up to
    /// `n` bytes, writes them, then consumes exactly what `out` took, so
    /// that a full pipe loses nothing.
    pub fn splice_to(
        &self,
        fd: BorrowedFd<'_>,
        out: BorrowedFd<'_>,
        n: usize,
        nonblock: bool,
    ) -> Outcome<usize> {
        let mut buf = vec![0u8; n.min(1 << 16)];
        let peek = RecvOpts {
            peek: true,
            dontwait: nonblock,
            ..RecvOpts::default()
        };
        let got = match self.recv(fd, &mut [IoSliceMut::new(&mut buf)], peek) {
            Outcome::Done(Ok(0)) => return Outcome::Done(Ok(0)),
            Outcome::Done(Ok(k)) => k,
            other => return other,
        };
        let w = match rustix::io::write(out, &buf[..got]) {
            Ok(0) => return Outcome::Done(Ok(0)),
            Ok(w) => w,
            Err(e) => return Outcome::Done(Err(e)),
        };
        let take = RecvOpts {
            dontwait: true,
            ..RecvOpts::default()
        };
        let _ = self.recv(fd, &mut [IoSliceMut::new(&mut buf[..w])], take);
        Outcome::Done(Ok(w))
    }
}
