//! Doorbells: the one-byte wake-ups on the socket, and the futex a blocked
//! writer sleeps on (docs/DESIGN.md, "Doorbells").
//!
//! Readers and poll/epoll waiters set a `*_waiting` flag, re-check the
//! ring and sleep on the socket; the other side takes the flag and sends
//! one byte. Blocked writers sleep on the `space_seq` futex instead, so
//! that draining doorbells on the socket can never steal their wake-up.

use super::Conn;
use super::anc::CarrierRecv;
use crate::shm::layout::{CARRIER, RingFlags};
use crate::shm::protocol;
use crate::shm::ring::Ring;
use crate::sync::Ordering::{Acquire, Release};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

/// Consumer side, after freeing space (or going away): wakes every writer
/// sleeping on the `space_seq` futex. The bump comes first, so that a
/// writer about to sleep on the old value returns at once. (Public for the
/// fuzz harness's honest peer.)
pub fn wake_space_sleepers(f: &RingFlags) {
    protocol::bump_space_seq(f);
    let _ = rustix::thread::futex::wake(
        &f.space_seq,
        rustix::thread::futex::Flags::empty(),
        i32::MAX as u32,
    );
}

impl Conn {
    /// One control byte to the peer; only once our direction is switched, so
    /// it can never land in the application's stream.
    pub(super) fn bell(&self, fd: BorrowedFd<'_>) {
        if self.sb().tx_ring.load(Acquire) {
            let _ = rustix::net::send(fd, &[0u8], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        }
    }

    /// After producing: wake a reader that declared itself waiting.
    pub(super) fn data_bell(&self, fd: BorrowedFd<'_>, f: &RingFlags) {
        if protocol::take_waiter(&f.reader_waiting) {
            self.bell(fd);
        }
    }

    /// After consuming: wake writers waiting for space (a blocked one on
    /// its futex; a poller once half the ring is free).
    pub(super) fn space_bell(&self, fd: BorrowedFd<'_>, ring: &Ring<'_>) {
        let f = ring.flags();
        if protocol::take_waiter(&f.writer_sleeping) {
            wake_space_sleepers(f);
        }
        if protocol::someone_waits(&f.writer_waiting)
            && ring.writable().is_ok_and(|n| n >= ring.capacity() / 2)
            && protocol::take_waiter(&f.writer_waiting)
        {
            self.bell(fd);
        }
    }

    /// Our reads end (shutdown, close, exit): writers waiting for room must
    /// look again, to find EPIPE.
    pub(super) fn wake_writers(&self, fd: BorrowedFd<'_>, ring: &Ring<'_>) {
        let f = ring.flags();
        wake_space_sleepers(f);
        if protocol::take_waiter_now(&f.writer_waiting) {
            self.bell(fd);
        }
    }

    /// Rx ring phase, rx lock held: reads and discards control bytes, and
    /// looks at what follows them (more, or the peer's EOF).
    pub(super) fn drain_bells(&self, fd: BorrowedFd<'_>) {
        self.take_bells(fd, true);
    }

    /// [`drain_bells`](Self::drain_bells) for a poll/epoll wake-up whose
    /// kernel view shows no hang-up: one look, so two system calls for a
    /// doorbell, not three. What a short peek did not show (a doorbell
    /// since) stays on the socket, which the next poll reports at once.
    /// A read at an empty ring keeps the thorough look: its EAGAIN must not
    /// hide a killed peer's end.
    pub(super) fn take_bells_once(&self, fd: BorrowedFd<'_>) {
        self.take_bells(fd, false);
    }

    fn take_bells(&self, fd: BorrowedFd<'_>, thorough: bool) {
        let mut buf = [0u8; 64];
        loop {
            // Peek first: a carrier of ancillary data (non-zero) must stay
            // until the read that reaches its message takes it.
            let n = match rustix::net::recv(fd, &mut buf, RecvFlags::DONTWAIT | RecvFlags::PEEK) {
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
                let _ = rustix::net::recv(fd, &mut buf[..bells], RecvFlags::DONTWAIT);
                // It may have been a parked watch's wake-up.
                self.changed();
            }
            if bells < n && buf[bells] != CARRIER {
                // Neither doorbell nor carrier: bytes written behind our
                // back (a broken peer, or a process without tsss sharing
                // the socket). Dropping them would lose data silently.
                self.broken();
                return;
            }
            // All taken: look again, for more or for the EOF behind them
            // (a peer that rang, then died), unless the peek saw the
            // whole queue and one look is enough.
            if bells < n || (!thorough && n < buf.len()) {
                return;
            }
        }
    }

    /// Takes the carrier of the ancillary data that came with the message
    /// a read just reached. Doorbells are rare in a busy stream, so the
    /// carrier is usually the first byte: one recvmsg; a doorbell taken
    /// instead is harmless, and we try again.
    pub(super) fn take_carrier(
        &self,
        fd: BorrowedFd<'_>,
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
}
