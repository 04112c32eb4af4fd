//! The states a connection's shared bytes can name, decoded strictly: an
//! unknown value is rejected, never taken for another state.

use crate::shm::layout::{
    CLIENT_ATTACHED, CLIENT_NONE, CLIENT_REFUSED, SERVER_CONFIRMED, SERVER_WITHDRAWN,
};

/// Where one side of a connection stands (the side block's `state` byte,
/// shared with our fork children).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Client: waiting for the server's first bytes (HELLO or data).
    Pending = 0,
    /// Server: HELLO sent, not confirmed yet.
    Offered = 1,
    /// Segment mapped on this side; each direction switches on its own.
    Attached = 2,
    /// Not accelerated: every call passes straight to the kernel.
    Plain = 3,
    /// The shared header was corrupted: every call fails.
    Broken = 4,
}

impl Phase {
    pub fn decode(v: u8) -> Option<Phase> {
        Some(match v {
            0 => Phase::Pending,
            1 => Phase::Offered,
            2 => Phase::Attached,
            3 => Phase::Plain,
            4 => Phase::Broken,
            _ => return None,
        })
    }
}

/// The negotiation word of the segment (`SegHeader::client_state`), which
/// the peer writes too (see `shm::layout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// The client has not attached.
    None,
    /// The client attached; its writes still go to the socket.
    Attached,
    /// The client will stay plain.
    Refused,
    /// The server confirmed: both switch their writes.
    Confirmed,
    /// The server withdrew its offer: both stay plain.
    Withdrawn,
}

impl Negotiation {
    pub fn decode(v: u32) -> Option<Negotiation> {
        Some(match v {
            CLIENT_NONE => Negotiation::None,
            CLIENT_ATTACHED => Negotiation::Attached,
            CLIENT_REFUSED => Negotiation::Refused,
            SERVER_CONFIRMED => Negotiation::Confirmed,
            SERVER_WITHDRAWN => Negotiation::Withdrawn,
            _ => return None,
        })
    }

    pub fn word(self) -> u32 {
        match self {
            Negotiation::None => CLIENT_NONE,
            Negotiation::Attached => CLIENT_ATTACHED,
            Negotiation::Refused => CLIENT_REFUSED,
            Negotiation::Confirmed => SERVER_CONFIRMED,
            Negotiation::Withdrawn => SERVER_WITHDRAWN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict() {
        for v in 0..=255u8 {
            match Phase::decode(v) {
                Some(p) => assert_eq!(p as u8, v),
                None => assert!(v > 4),
            }
        }
        for v in [0, 1, 2, 3, 4] {
            assert_eq!(Negotiation::decode(v).map(Negotiation::word), Some(v));
        }
        assert_eq!(Negotiation::decode(5), None);
        assert_eq!(Negotiation::decode(u32::MAX), None);
    }
}
