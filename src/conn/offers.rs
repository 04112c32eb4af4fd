//! Whether an accepting server offers a new connection a segment.
//!
//! Setting one up costs both ends tens of microseconds (a segment to
//! create, attach and detach, and the HELLO's wake-up): more than a
//! connection that closes within a few milliseconds gains. A listener
//! whose connections keep closing that soon (per-request connections:
//! php-fpm behind nginx, `pgbench -C`) stops offering, so its clients cost
//! what a client of a plain server costs. One connection in [`PROBE`]
//! is still offered; one that lives longer starts the offers again.
//! `TSSS_OFFER=always` offers every connection.
//! (docs/DESIGN.md, "Negotiation".)

use crate::config;
use rustix::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// A connection closed this soon after its accept was short.
pub const SHORT_NS: u64 = 2_000_000;
/// This many short ones in a row stop the offers.
pub const SHORT_RUN: u32 = 8;
/// While stopped, one connection in this many is offered.
pub const PROBE: u32 = 32;

/// Per listening descriptor (modulo the table's size; a collision only
/// mixes two listeners' histories): the short connections in a row (low
/// 16 bits) and the connections not offered since (high 16).
static LISTENERS: [AtomicU32; 1024] = [const { AtomicU32::new(0) }; 1024];

fn slot(listener: RawFd) -> &'static AtomicU32 {
    &LISTENERS[listener.unsigned_abs() as usize % LISTENERS.len()]
}

/// Whether a connection accepted on `listener` is offered a segment.
pub fn offer(listener: RawFd) -> bool {
    if config::offer_always() {
        return true;
    }
    let s = slot(listener);
    let v = s.load(Relaxed);
    if v & 0xffff < SHORT_RUN {
        return true;
    }
    let skipped = s.fetch_add(1 << 16, Relaxed) >> 16;
    skipped % PROBE == PROBE - 1
}

/// A connection accepted on `listener` closed `lifetime_ns` after its
/// accept (its last process let it go).
pub fn closed(listener: RawFd, lifetime_ns: u64) {
    let s = slot(listener);
    let _ = s.fetch_update(Relaxed, Relaxed, |v| {
        Some(if lifetime_ns < SHORT_NS {
            (v & !0xffff) | ((v & 0xffff) + 1).min(0xffff)
        } else {
            0
        })
    });
}

/// Why a connection was not offered (for the log).
pub fn why_not() -> String {
    format!(
        "the last {SHORT_RUN}+ connections on this listener closed within {} ms of their \
         accept: not offered (1 in {PROBE} is; TSSS_OFFER=always offers all)",
        SHORT_NS / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_connections_stop_the_offers_and_a_long_one_starts_them() {
        let l = 700;
        for _ in 0..SHORT_RUN {
            assert!(offer(l));
            closed(l, SHORT_NS - 1);
        }
        let offered = (0..PROBE * 4).filter(|_| offer(l)).count();
        assert_eq!(offered, 4, "one in {PROBE} is a probe");
        closed(l, SHORT_NS);
        assert!(offer(l) && offer(l));
    }
}
