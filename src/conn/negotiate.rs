//! Negotiation: HELLO, the client's attach, the server's confirmation, the
//! switch of each direction, and what an exec does to an unfinished one
//! (docs/DESIGN.md, "Negotiation").

use super::state::{Negotiation, Phase};
use super::{Conn, Role, RxState, TxState};
use crate::os::poll::kernel_view;
use crate::shm::layout::{Dir, HDR_SIZE};
use crate::shm::protocol;
use crate::shm::segment::{Segment, sweep_orphans};
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::wire::{self, FirstBytes, HELLO_LEN};
use rustix::event::PollFlags;
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use rustix::net::RecvFlags;

/// The negotiation word of `seg` as it is now (`None`: a value no honest
/// peer writes).
fn negotiation(seg: &Segment) -> Option<Negotiation> {
    Negotiation::decode(protocol::negotiation(&seg.header().client_state))
}

/// Moves the negotiation word from `from` to `to` unless the peer moved it
/// first; what it holds afterwards.
fn negotiate(seg: &Segment, from: Negotiation, to: Negotiation) -> Option<Negotiation> {
    Negotiation::decode(protocol::negotiate(
        &seg.header().client_state,
        from.word(),
        to.word(),
    ))
}

impl Conn {
    /// Client, rx lock held: looks at the first bytes from the server.
    /// `take`: use the offer; else a HELLO found is consumed and refused
    /// (before an exec).
    pub(super) fn resolve_hello(&self, fd: BorrowedFd<'_>, rx: &mut RxState, take: bool) {
        if self.phase() != Phase::Pending {
            return;
        }
        let Some(hello) = self.take_hello(fd) else {
            return;
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
        if let Some(why) = refuse {
            // Tell the server, which would otherwise keep its offer open.
            let _ = negotiate(&seg, Negotiation::None, Negotiation::Refused);
            return self.go_plain(format_args!("{why}"));
        }
        if negotiate(&seg, Negotiation::None, Negotiation::Attached) != Some(Negotiation::Attached)
        {
            return self.go_plain(format_args!(
                "the server withdrew its offer of segment {}",
                hello.shmid
            ));
        }
        self.remember_segment(&hello);
        let _ = self.seg.set(seg);
        rx.plain_read = 0;
        rx.plain_known = 0;
        self.set_phase(Phase::Attached);
        super::ATTACHES.fetch_add(1, Release);
        if crate::readiness::epoll::pending::any() {
            // It may still be in a kernel epoll that another thread sleeps
            // in: the server's first ring write rings, which wakes it.
            if let Some(seg) = self.seg.get() {
                protocol::announce_waiting(&self.rx_ring(seg).flags().reader_waiting);
            }
        }
        self.listed_attached();
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

    /// Client: the server's first bytes, if they are a HELLO, taken off the
    /// socket and validated. Anything else ends the negotiation (plain)
    /// and returns `None`, as does a socket with nothing yet.
    fn take_hello(&self, fd: BorrowedFd<'_>) -> Option<wire::Hello> {
        let mut buf = [0u8; HELLO_LEN];
        let n = match rustix::net::recv(fd, &mut buf, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((_, n)) => n,
            Err(Errno::AGAIN | Errno::INTR) => return None,
            Err(e) => {
                self.go_plain(format_args!("socket error before HELLO: {e}"));
                return None;
            }
        };
        if n == 0 {
            // It may have died between creating a segment and marking it.
            sweep_orphans();
            self.go_plain(format_args!("peer closed before offering"));
            return None;
        }
        let hello = match wire::classify_first_bytes(&buf[..n]) {
            FirstBytes::Plain => {
                self.go_plain(format_args!(
                    "server does not run tsss (first bytes are application data)"
                ));
                return None;
            }
            FirstBytes::Hello(h) => h,
        };
        // HELLO is not application data whatever happens next: consume it.
        if !matches!(
            rustix::net::recv(fd, &mut buf, RecvFlags::DONTWAIT),
            Ok((_, HELLO_LEN))
        ) {
            self.set_phase(Phase::Broken);
            return None;
        }
        match hello {
            Ok(h) => Some(h),
            Err(e) => {
                self.go_plain(format_args!("invalid HELLO ({e})"));
                None
            }
        }
    }

    /// Tx lock held: switches our writes to the ring once allowed: both
    /// sides' once the server confirmed the client's attach.
    pub(super) fn progress_tx(&self, fd: BorrowedFd<'_>, tx: &mut TxState) {
        if self.sb().tx_ring.load(Relaxed) || self.sb().shut_wr.load(Relaxed) {
            return;
        }
        let Some(seg) = self.seg() else { return };
        let due = match self.role {
            Role::Client => self.client_switch_due(seg),
            Role::Server => self.server_confirm(seg),
        };
        if !due {
            return;
        }
        let flags = self.tx_ring(seg).flags();
        if self.sb().plain_eagain.load(Relaxed) && !kernel_view(fd).contains(PollFlags::OUT) {
            let read = protocol::plain_read(flags);
            self.sb().plain_full.store(read.wrapping_add(1), Relaxed);
        }
        // Published before any control byte goes out on the socket.
        protocol::publish_switch(flags, tx.plain_written);
        self.sb().tx_ring.store(true, Release);
        self.changed();
        // Wakes a reader sleeping on the socket so it sees the switch.
        self.bell(fd);
    }

    /// Client, attached: whether the server has confirmed (our switch is
    /// due); a withdrawn offer ends the negotiation.
    fn client_switch_due(&self, seg: &Segment) -> bool {
        // A broken connection never switches.
        if self.phase() != Phase::Attached {
            return false;
        }
        match negotiation(seg) {
            Some(Negotiation::Confirmed) => {
                crate::log!(
                    crate::log::INFO,
                    "fd {}: accelerated (client, shmid {}, rings {}+{} KiB)",
                    self.fd,
                    seg.shmid(),
                    seg.cap(Dir::ClientToServer) >> 10,
                    seg.cap(Dir::ServerToClient) >> 10
                );
                self.listed_accelerated();
                true
            }
            Some(Negotiation::Withdrawn) => {
                self.go_plain(format_args!(
                    "the server withdrew its offer (an exec before it confirmed)"
                ));
                false
            }
            _ => false,
        }
    }

    /// Server: confirms a client that attached (then our switch is due);
    /// one that refused ends the negotiation.
    fn server_confirm(&self, seg: &Segment) -> bool {
        if self.phase() == Phase::Offered {
            let now = match negotiation(seg) {
                Some(Negotiation::None) => return false,
                Some(Negotiation::Attached) => {
                    negotiate(seg, Negotiation::Attached, Negotiation::Confirmed)
                }
                Some(Negotiation::Refused) => Some(Negotiation::Refused),
                // Only we confirm or withdraw: the peer's forgery.
                _ => None,
            };
            match now {
                Some(Negotiation::Confirmed) => {}
                Some(Negotiation::Refused) => {
                    self.go_plain(format_args!("the client refused the offer"));
                    return false;
                }
                _ => {
                    self.go_plain(format_args!("invalid negotiation word"));
                    return false;
                }
            }
            if self.advance_phase(Phase::Offered, Phase::Attached) {
                crate::log!(
                    crate::log::INFO,
                    "fd {}: accelerated (server, shmid {})",
                    self.fd,
                    seg.shmid()
                );
                self.listed_accelerated();
            }
        }
        self.phase() == Phase::Attached
    }

    /// Before an exec or spawn hands this connection to a new program,
    /// which may not run tsss or may read it with stdio (glibc's internal
    /// reads cannot be intercepted): a negotiation not yet confirmed ends
    /// now, both sides plain; a confirmed one is finished, so that the new
    /// image adopts a connection in a settled state. Returns whether the
    /// connection is still ours to hand over (false: plain now).
    pub fn settle_for_exec(&self, fd: BorrowedFd<'_>) -> bool {
        let mut rx = self.lock_rx();
        let mut tx = self.lock_tx();
        match (self.phase(), self.role) {
            (Phase::Plain, _) => return false,
            (Phase::Broken, _) => return true,
            // No offer yet (the server has not accepted): the new image
            // takes HELLO, if it calls into tsss at all.
            (Phase::Pending, Role::Client) => self.resolve_hello(fd, &mut rx, false),
            (Phase::Attached, Role::Client) if !self.sb().tx_ring.load(Acquire) => {
                let Some(seg) = self.seg() else { return false };
                match negotiate(seg, Negotiation::Attached, Negotiation::Refused) {
                    Some(Negotiation::Refused) => self.go_plain(format_args!(
                        "exec before the server confirmed: the new program gets a plain socket"
                    )),
                    Some(Negotiation::Confirmed) => self.progress_tx(fd, &mut tx),
                    _ => self.go_plain(format_args!("the server withdrew its offer")),
                }
            }
            (Phase::Offered, Role::Server) => {
                if let Some(seg) = self.seg() {
                    self.withdraw(seg);
                }
            }
            _ => {}
        }
        self.phase() != Phase::Plain
    }

    /// Server, tx lock held, before an exec: withdraws an offer not yet
    /// confirmed (the client may attach meanwhile: try again).
    fn withdraw(&self, seg: &Segment) {
        let now = loop {
            match negotiation(seg) {
                Some(v @ (Negotiation::None | Negotiation::Attached)) => {
                    if negotiate(seg, v, Negotiation::Withdrawn) == Some(Negotiation::Withdrawn) {
                        break Negotiation::Withdrawn;
                    }
                }
                Some(v) => break v,
                // Only a hostile peer writes anything else.
                None => break Negotiation::Refused,
            }
        };
        match now {
            Negotiation::Withdrawn | Negotiation::Refused => self.go_plain(format_args!(
                "exec before the client's attach was confirmed: the new program gets a plain socket"
            )),
            // Only we confirm: a peer's forgery.
            _ => self.go_plain(format_args!("invalid negotiation word")),
        }
    }

    /// Rx lock held: counts `n` plain bytes read, and tells the peer's
    /// SIOCOUTQ.
    pub(super) fn read_plain(&self, rx: &mut RxState, n: u64) {
        rx.plain_read += n;
        rx.plain_known = rx.plain_known.saturating_sub(n);
        if let Some(seg) = self.seg() {
            protocol::publish_plain_read(self.rx_ring(seg).flags(), rx.plain_read);
        }
    }

    /// Tx lock held: counts a plain send's bytes, and whether the kernel's
    /// buffer was full (see `SideBlock::plain_full`).
    pub(super) fn sent_plain(&self, tx: &mut TxState, r: &Result<usize, Errno>) {
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
    pub(super) fn progress_rx(&self, fd: BorrowedFd<'_>, rx: &mut RxState) {
        if self.sb().rx_ring.load(Relaxed) {
            return;
        }
        if self.role == Role::Client && self.phase() == Phase::Pending {
            self.resolve_hello(fd, rx, true);
        }
        let Some(seg) = self.seg() else { return };
        if rx.limit.is_none() {
            rx.limit = protocol::switch_point(self.rx_ring(seg).flags());
        }
        if rx.limit == Some(rx.plain_read) {
            self.sb().rx_ring.store(true, Release);
            self.changed();
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
    pub fn progress(&self, fd: BorrowedFd<'_>) {
        if let Some(mut rx) = self.try_lock_rx() {
            self.progress_rx(fd, &mut rx);
        }
        if let Some(mut tx) = self.try_lock_tx() {
            self.progress_tx(fd, &mut tx);
        }
    }

    /// Stores where the segment is, for the other processes of our side.
    pub(super) fn remember_segment(&self, h: &wire::Hello) {
        let b = self.sb();
        b.seg_shmid.store(h.shmid as u64, Relaxed);
        b.seg_nonce.store(h.nonce, Relaxed);
        b.seg_caps
            .store(u64::from(h.cap_c2s) << 32 | u64::from(h.cap_s2c), Release);
    }

    /// This process's mapping of the segment, attaching it if another
    /// process of our side made or attached it.
    #[inline]
    pub(super) fn seg(&self) -> Option<&Segment> {
        match self.seg.get() {
            Some(s) => Some(s),
            None => self.seg_slow(),
        }
    }

    /// The segment is not mapped in this process yet: attach it if the
    /// side block names one.
    #[cold]
    fn seg_slow(&self) -> Option<&Segment> {
        if !matches!(self.phase(), Phase::Offered | Phase::Attached) {
            return None;
        }
        let b = self.sb();
        let caps = b.seg_caps.load(Acquire);
        if caps == 0 {
            return None;
        }
        let h = wire::Hello {
            version: wire::PROTO_VERSION,
            hdr_size: HDR_SIZE as u32,
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
                if self.phase() == Phase::Offered {
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
                    self.set_phase(Phase::Broken);
                }
                None
            }
        }
    }
}
