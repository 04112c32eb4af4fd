//! The ends of a connection: shutdown(2), the last close of a process,
//! exit, and how the peer's end (a close, a reset, a kill) is told.

use super::state::Phase;
use super::{Conn, Outcome};
use crate::os::poll::kernel_view;
use crate::os::time::now_ns;
use crate::shm::protocol::{self, ReaderEnd, WriterEnd};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use rustix::event::PollFlags;
use rustix::fd::BorrowedFd;
use rustix::io::Errno;

impl Conn {
    /// `shutdown(2)`.
    pub fn shutdown(&self, fd: BorrowedFd<'_>, how: i32) -> Outcome<()> {
        let (rd, wr) = match how {
            libc::SHUT_RD => (true, false),
            libc::SHUT_WR => (false, true),
            libc::SHUT_RDWR => (true, true),
            _ => return Outcome::Done(Err(Errno::INVAL)),
        };
        if let Some(g) = self.gate() {
            return g;
        }
        let seg = self.seg();
        if let Some(seg) = seg {
            protocol::bump_shut_seq(seg.header());
        }
        let mut real = false;
        if wr {
            let mut tx = self.lock_tx();
            self.progress_tx(fd, &mut tx);
            if let (true, Some(seg)) = (self.sb().tx_ring.load(Relaxed), seg) {
                let f = self.tx_ring(seg).flags();
                protocol::end_writes(f, false);
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
                let ring = self.rx_ring(seg);
                protocol::end_reads(ring.flags(), ReaderEnd::Shut);
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
            if let Err(e) = rustix::net::shutdown(fd, how) {
                return Outcome::Done(Err(e));
            }
        }
        self.changed();
        Outcome::Done(Ok(()))
    }

    /// This process drops its last descriptor of the connection. Marks our
    /// side closed in the segment if no other process shares it; the real
    /// close that follows gives the peer EOF/HUP on the socket as well.
    pub fn close(&self, fd: BorrowedFd<'_>) {
        // A plain connection never used a ring: the socket says it all.
        if self.closed.swap(true, AcqRel) || self.is_plain() {
            return;
        }
        if self.phase() == Phase::Offered && self.sb().sharers.load(Acquire) <= 1 {
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
        self.report_lifetime();
        let tx = self.tx_ring(seg);
        let rx = self.rx_ring(seg);
        // Closing with unread data resets the peer, as in the kernel: ring
        // bytes, or plain ones (the kernel resets the peer for those too,
        // but our end of stream in the ring must say so as well).
        let plain_unread = !self.sb().rx_ring.load(Acquire)
            && match protocol::switch_point(rx.flags()) {
                Some(l) => l > self.sb().plain_read.load(Acquire),
                None => rustix::io::ioctl_fionread(fd).unwrap_or(0) > 0,
            };
        let unread = plain_unread || rx.readable().map_or(true, |n| n > 0);
        if !self.sb().tx_ring.load(Acquire) && protocol::switch_point(tx.flags()).is_none() {
            // We never wrote to the ring: say where our plain bytes end, so
            // that the peer's reads go on to the ring's end of stream (and
            // its reset) once they are read.
            protocol::publish_switch(tx.flags(), self.sb().plain_written.load(Acquire));
        }
        protocol::end_writes(tx.flags(), unread);
        self.data_bell(fd, tx.flags());
        protocol::end_reads(rx.flags(), ReaderEnd::Released);
        self.wake_writers(fd, &rx);
        // Unread doorbells in our socket would make the kernel reset the
        // peer on close: stop asking for them, then drain. Before our reads
        // reached the ring, only if every plain byte was read: what follows
        // the switch point on the socket is control bytes.
        // Our read side is shut first, so that a doorbell the peer sends
        // from now on is refused (EPIPE to it) rather than left unread.
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Read);
        let plain_done = || {
            protocol::switch_point(rx.flags())
                .is_some_and(|l| self.sb().plain_read.load(Acquire) == l)
        };
        if self.sb().rx_ring.load(Acquire) || plain_done() {
            protocol::stop_waiting(&rx.flags().reader_waiting);
            protocol::stop_waiting(&tx.flags().writer_waiting);
            self.drain_bells(fd);
        }
    }

    /// The process is in exit() with the connection open: the kernel
    /// releases the socket once the exit handlers and the stdio flush are
    /// done. Our reads are over, so the peer's writes fail from now on, as
    /// they will then; our own writes (that flush) still go out, so our
    /// direction is left to the socket's EOF. A process that still shares
    /// the connection keeps it whole.
    pub fn process_exiting(&self, fd: BorrowedFd<'_>) {
        if self.closed.swap(true, AcqRel) || self.is_plain() {
            return;
        }
        let Some(seg) = self.seg() else { return };
        if self.sb().sharers.fetch_sub(1, SeqCst) > 1 {
            return;
        }
        self.report_lifetime();
        let rx = self.rx_ring(seg);
        protocol::end_reads(rx.flags(), ReaderEnd::Released);
        self.wake_writers(fd, &rx);
    }

    /// Reports the peer's reset, once: true if this call does. The kernel
    /// may hold the same error (the peer left plain bytes or doorbells of
    /// ours unread): it is taken too, so that it is not reported twice.
    fn take_reset(&self, fd: BorrowedFd<'_>) -> bool {
        if self.sb().reset_taken.swap(true, AcqRel) {
            return false;
        }
        let _ = rustix::net::sockopt::socket_error(fd);
        true
    }

    /// Reports a pending reset of the peer's, once: true if this call does.
    pub(super) fn take_pending_reset(&self, fd: BorrowedFd<'_>) -> bool {
        self.reset_pending() && self.take_reset(fd)
    }

    /// Whether a reset the kernel holds for our socket is not the
    /// program's to see: ours was reported already, or the peer had read
    /// every plain byte of ours, so the kernel's is about doorbells.
    pub(super) fn kernel_err_not_ours(&self) -> bool {
        self.sb().reset_taken.load(Acquire)
            || (self.sb().tx_ring.load(Acquire) && self.plain_left() == Some(0))
    }

    /// The peer closed with our data unread and we have not said so yet.
    pub(super) fn reset_pending(&self) -> bool {
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
            && protocol::writer_end(self.rx_ring(s).flags()) == WriterEnd::Reset)
            // ...or gone without a close of its own (killed, or exited with
            // the fd open) and our ring bytes unread: the kernel resets a
            // socket whose peer went away with data in its queue.
            || (self.sb().sock_eof.load(Relaxed)
                && self.sb().tx_ring.load(Relaxed)
                && self.tx_ring(s).readable().unwrap_or(0) > 0)
    }

    /// Our socket reads end of input: the peer's release, or only a
    /// shutdown (ours, or its SHUT_WR while it wrote plain)? A peer that
    /// writes to the ring never shuts the socket's writes: from it, end of
    /// input is its release (or a broken peer: its doorbells cannot reach
    /// us any more, so our reads must end too).
    pub(super) fn socket_eof(&self, fd: BorrowedFd<'_>) {
        let on_ring = self
            .seg()
            .is_some_and(|s| protocol::switch_point(self.rx_ring(s).flags()).is_some());
        if on_ring && !self.sb().shut_rd.load(Acquire) {
            self.sb().sock_eof.store(true, Release);
        } else {
            self.peer_hung_up(fd);
        }
    }

    pub(super) fn peer_hung_up(&self, fd: BorrowedFd<'_>) -> bool {
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
    pub(super) fn kernel_says_gone(&self, k: PollFlags) -> bool {
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
        let rcv_other =
            b.shut_rd.load(Acquire) || protocol::switch_point(self.rx_ring(seg).flags()).is_none();
        let snd_other = (b.shut_wr.load(Acquire) && !b.tx_ring.load(Acquire))
            || protocol::reader_end(self.tx_ring(seg).flags()) == ReaderEnd::Shut;
        !rcv_other || !snd_other
    }
}

impl Conn {
    /// The server side's last process lets the connection go: how long it
    /// lived, for the offers of its listener (`offers`).
    fn report_lifetime(&self) {
        if self.listener >= 0 {
            super::offers::closed(self.listener, now_ns().saturating_sub(self.born_ns));
        }
    }
}
