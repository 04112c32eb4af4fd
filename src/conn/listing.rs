//! What the registry lists for a connection (`tsss stat`): its entry at
//! connect, accept and exec, and each step of the negotiation that
//! changes it. Never called on the read and write paths.

use super::state::Phase;
use super::{Conn, Role};
use crate::registry::{self, Event, SegmentInfo};
use crate::sync::Ordering::{Acquire, Relaxed};
use rustix::fd::{AsRawFd, BorrowedFd};

/// A Unix stream connection this process connected or accepted on `fd`
/// that tsss leaves plain from the start: one log line, and its registry
/// entry with the reason.
pub fn plain_from_start(fd: BorrowedFd<'_>, role: Role, why: core::fmt::Arguments<'_>) {
    crate::log!(crate::log::INFO, "fd {}: plain: {why}", fd.as_raw_fd());
    registry::connection_event(fd, Event::Plain(role, why));
}

impl Conn {
    /// Lists a new connection (at connect or accept) as it stands;
    /// `peer`: its credentials, if the caller read them.
    pub fn list(&self, fd: BorrowedFd<'_>, peer: Option<registry::PeerCred>) {
        registry::connection_event_with(fd, self.registry_event(), peer);
    }

    /// What the registry should say of this connection now: for a new
    /// one, and for one a new program image adopted across exec.
    pub fn registry_event(&self) -> Event<'static> {
        let switched = self.sb().tx_ring.load(Acquire) || self.sb().rx_ring.load(Acquire);
        match (self.phase(), self.segment_info()) {
            (Phase::Attached, Some(s)) if switched => Event::Accelerated(self.role, s),
            (Phase::Offered | Phase::Attached, Some(s)) => Event::Attached(self.role, s),
            _ => Event::Negotiating(self.role),
        }
    }

    /// Updates this connection's entry (in the slot of the descriptor it
    /// was made on), if it has one.
    pub(super) fn listed(&self, ev: Event<'_>) {
        registry::changed(self.fd, ev);
    }

    /// The client mapped the segment; still negotiating.
    pub(super) fn listed_attached(&self) {
        if let Some(s) = self.segment_info() {
            self.listed(Event::Attached(self.role, s));
        }
    }

    /// Our writes switched to the ring.
    pub(super) fn listed_accelerated(&self) {
        if let Some(s) = self.segment_info() {
            self.listed(Event::Accelerated(self.role, s));
        }
    }

    /// The segment, as our side block names it (`None` before there is
    /// one).
    fn segment_info(&self) -> Option<SegmentInfo> {
        let b = self.sb();
        let caps = b.seg_caps.load(Acquire);
        (caps != 0).then(|| SegmentInfo {
            shmid: b.seg_shmid.load(Relaxed) as i32,
            nonce: b.seg_nonce.load(Relaxed),
            cap_c2s: (caps >> 32) as u32,
            cap_s2c: caps as u32,
        })
    }
}
