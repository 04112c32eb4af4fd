//! What the connection says to readiness and to the rare queries
//! (FIONREAD, SIOCOUTQ, SO_ERROR), from ring state and, while a direction
//! is plain, from the kernel's view of the socket.

use super::state::Phase;
use super::{Conn, RxGuard};
use crate::os::poll::kernel_view;
use crate::shm::protocol::{self, ReaderEnd, WriterEnd};
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use rustix::event::PollFlags;
use rustix::fd::BorrowedFd;

/// Poll-style readiness of an accelerated connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    pub rdhup: bool,
    pub hup: bool,
    pub err: bool,
}

// poll(2) and epoll(7) give each event the same bit.
const _: () = assert!(
    libc::EPOLLIN == libc::POLLIN as i32
        && libc::EPOLLRDNORM == libc::POLLRDNORM as i32
        && libc::EPOLLOUT == libc::POLLOUT as i32
        && libc::EPOLLWRNORM == libc::POLLWRNORM as i32
        && libc::EPOLLRDHUP == libc::POLLRDHUP as i32
        && libc::EPOLLHUP == libc::POLLHUP as i32
        && libc::EPOLLERR == libc::POLLERR as i32
);

impl Ready {
    /// The events to report to a caller that asked for `wanted` (poll or
    /// epoll bits): hang-up and error whether asked for or not.
    pub fn bits(&self, wanted: u32) -> u32 {
        const IN: u32 = (libc::POLLIN | libc::POLLRDNORM) as u32;
        const OUT: u32 = (libc::POLLOUT | libc::POLLWRNORM) as u32;
        let mut b = 0;
        if self.readable {
            b |= wanted & IN;
        }
        if self.writable {
            b |= wanted & OUT;
        }
        if self.rdhup {
            b |= wanted & libc::POLLRDHUP as u32;
        }
        if self.hup {
            b |= libc::POLLHUP as u32;
        }
        if self.err {
            b |= libc::POLLERR as u32;
        }
        b
    }
}

/// Edge counters for edge-triggered epoll: a ring index, plus bumps that
/// make other events edges too (the peer's end of its direction, our
/// socket's end of input, each shutdown of either side).
const EDGE_END: u64 = 1 << 60;
const EDGE_EOF: u64 = 1 << 61;
const EDGE_SHUT_SHIFT: u32 = 32;

impl Conn {
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
    pub fn readiness(&self, fd: BorrowedFd<'_>, kernel: Option<PollFlags>) -> Option<Ready> {
        let mut k = kernel.unwrap_or(PollFlags::empty());
        let before = self.negotiation_snapshot();
        if kernel.is_some_and(|k| k.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR))
            && let Some(mut rx) = self.try_lock_rx()
        {
            self.progress_rx(fd, &mut rx);
            if self.sb().rx_ring.load(Relaxed) && self.phase() != Phase::Plain {
                // One look suffices unless the socket says the peer is
                // gone: then also its EOF or reset behind the doorbells.
                if k.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                    self.drain_bells(fd);
                } else {
                    self.take_bells_once(fd);
                }
            }
        }
        // Our switch, once made, has nothing more to do: no lock then.
        if !self.sb().tx_ring.load(Relaxed)
            && let Some(mut tx) = self.try_lock_tx()
        {
            self.progress_tx(fd, &mut tx);
        }
        let after = self.negotiation_snapshot();
        // Negotiation consumed socket bytes (HELLO) or changed which
        // directions the kernel speaks for: its earlier view is stale.
        if kernel.is_some() && before != after && self.needs_kernel() {
            k = kernel_view(fd);
        }
        let (phase, rx_ring, tx_ring) = after;
        match phase {
            Phase::Plain => return None,
            Phase::Broken => {
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
        let known_gone = self.sb().sock_eof.load(Acquire);
        let gone = known_gone || (kernel.is_some() && self.kernel_says_gone(k));
        if gone && !known_gone {
            self.sb().sock_eof.store(true, Release);
        }
        let seg = self.seg();
        // The kernel's RCV_SHUTDOWN / SEND_SHUTDOWN of our socket.
        let mut rcv_shut = self.sb().shut_rd.load(Relaxed) || gone || k.contains(PollFlags::RDHUP);
        let mut snd_shut = self.sb().shut_wr.load(Relaxed) || gone;
        if let Some(seg) = seg {
            // The peer's shutdowns, said in the segment, count at once, as
            // the kernel's do, even before our reads reach the ring.
            rcv_shut |= protocol::writer_end(self.rx_ring(seg).flags()) != WriterEnd::Open;
            snd_shut |= protocol::reader_end(self.tx_ring(seg).flags()) != ReaderEnd::Open;
        }
        let reset = self.reset_pending();
        let readable = match (rx_ring, seg) {
            (true, Some(seg)) => {
                self.rx_quick_ready(&self.rx_ring(seg)) || gone || reset || rcv_shut
            }
            // HELLO still unread (pending client) is not data.
            _ => {
                phase != Phase::Pending
                    && (rcv_shut || k.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR))
            }
        };
        let writable = match (tx_ring, seg) {
            (true, Some(seg)) => self.tx_poll_ready(&self.tx_ring(seg)) || gone,
            _ => k.contains(PollFlags::OUT),
        };
        Some(Ready {
            readable,
            writable,
            rdhup: rcv_shut,
            hup: k.contains(PollFlags::HUP) || (rcv_shut && snd_shut),
            // Once our direction runs over the ring and the peer read our
            // plain bytes, a kernel error (its release with our bytes
            // unread) can only be about doorbells: the application's
            // errors are emulated.
            err: reset || (k.contains(PollFlags::ERR) && !self.kernel_err_not_ours()),
        })
    }

    /// The phase and which directions run over the ring.
    fn negotiation_snapshot(&self) -> (Phase, bool, bool) {
        (
            self.phase(),
            self.sb().rx_ring.load(Acquire),
            self.sb().tx_ring.load(Acquire),
        )
    }

    /// Ring-only readiness for spinning (atomics, no syscalls). False when
    /// unsure.
    pub fn quick_ready(&self, want_read: bool, want_write: bool) -> bool {
        let Some(seg) = self.seg() else {
            return false;
        };
        (want_read && self.sb().rx_ring.load(Relaxed) && self.rx_quick_ready(&self.rx_ring(seg)))
            || (want_write
                && self.sb().tx_ring.load(Relaxed)
                && self.tx_poll_ready(&self.tx_ring(seg)))
    }

    /// Before a poll/epoll sleep: ask the peer for doorbells. The caller
    /// re-checks [`quick_ready`](Self::quick_ready) afterwards.
    pub fn arm(&self, want_read: bool, want_write: bool) {
        let Some(seg) = self.seg() else { return };
        if want_read && self.sb().rx_ring.load(Relaxed) {
            protocol::announce_waiting(&self.rx_ring(seg).flags().reader_waiting);
        }
        if want_write && self.sb().tx_ring.load(Relaxed) {
            protocol::announce_waiting(&self.tx_ring(seg).flags().writer_waiting);
        }
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
    pub fn take_error(&self, fd: BorrowedFd<'_>) -> Option<i32> {
        // Nothing of ours on the socket yet but an unread HELLO: the
        // kernel's error (a refused non-blocking connect) is the
        // program's. nginx asks after every connect.
        if self.awaits_offer() {
            return None;
        }
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
            let _ = rustix::net::sockopt::socket_error(fd);
            return Some(0);
        }
        None
    }

    /// SIOCOUTQ: bytes written and not yet read by the peer. `None`: our
    /// direction is still a plain socket; ask the kernel.
    pub fn bytes_unread_by_peer(&self, fd: BorrowedFd<'_>) -> Option<usize> {
        if !self.sb().tx_ring.load(Acquire) {
            // Only our own bytes (HELLO) queued: none of the program's.
            return (self.sb().plain_written.load(Relaxed) == 0).then_some(0);
        }
        let ring = self.tx_ring(self.seg()?);
        // A peer that closed or died took its queue with it. (A killed one
        // says so only on the socket: this call is rare, so look.)
        if self.sb().sock_eof.load(Acquire)
            || protocol::reader_end(ring.flags()) == ReaderEnd::Released
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
    pub(super) fn plain_left(&self) -> Option<u64> {
        let f = self.tx_ring(self.seg()?).flags();
        let plain = self.sb().plain_written.load(Relaxed);
        Some(plain - protocol::plain_read(f).min(plain))
    }

    /// Monotonic counters for edge-triggered epoll: input progress (bytes
    /// the peer wrote, EOF) and output progress (bytes the peer consumed,
    /// its read side closing).
    pub fn progress_counters(&self) -> (u64, u64) {
        let Some(seg) = self.seg() else {
            return (0, 0);
        };
        let (rx, tx) = (self.rx_ring(seg), self.tx_ring(seg));
        let eof = if self.sb().sock_eof.load(Relaxed) {
            EDGE_EOF
        } else {
            0
        };
        let shut = u64::from(protocol::shut_seq(seg.header())) << EDGE_SHUT_SHIFT;
        let ended = |yes: bool| if yes { EDGE_END } else { 0 };
        let seq_in = rx
            .head()
            .wrapping_add(ended(protocol::writer_end(rx.flags()) != WriterEnd::Open))
            .wrapping_add(shut)
            | eof;
        let seq_out = tx
            .tail()
            .wrapping_add(ended(protocol::reader_end(tx.flags()) != ReaderEnd::Open))
            .wrapping_add(shut)
            | eof;
        (seq_in, seq_out)
    }

    /// Bytes readable now (FIONREAD / SIOCINQ). `None`: ask the kernel.
    pub fn bytes_readable(&self, fd: BorrowedFd<'_>) -> Option<usize> {
        self.progress(fd);
        if self.phase() == Phase::Plain {
            return None;
        }
        let seg = self.seg();
        // Plain bytes left before the switch point, and whether the ring's
        // bytes follow them (the point is known: the peer may have written
        // past it already).
        let (plain, ring_too) = if self.sb().rx_ring.load(Acquire) {
            (0, true)
        } else {
            let k = rustix::io::ioctl_fionread(fd).unwrap_or(0) as usize;
            if self.phase() == Phase::Pending {
                return Some(0);
            }
            let rx: RxGuard<'_> = self.lock_rx();
            let limit = rx
                .limit
                .or_else(|| seg.and_then(|s| protocol::switch_point(self.rx_ring(s).flags())));
            match limit {
                Some(l) => (k.min(rx.left_before(l).unwrap_or(0) as usize), true),
                None => (k, false),
            }
        };
        let ring = match (ring_too, seg) {
            (true, Some(seg)) => self.rx_ring(seg).readable().unwrap_or(0),
            _ => 0,
        };
        Some(plain + ring)
    }
}
