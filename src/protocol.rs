//! The two race-prone steps of the shared-memory protocol, as small
//! functions shared by `conn` and the loom model check (`tests/loom.rs`).
//!
//! Doorbell (Dekker): the waiter announces itself, then re-checks the ring;
//! the other side publishes its index, then looks for a waiter. With SeqCst
//! on both sides at least one of them sees the other, so a waiter never
//! sleeps through data (or space) that was published before it slept.
//!
//! Ancillary record: the writer publishes it before the message's bytes,
//! so a reader that loads the ring head first and the record queue second
//! never reads a message's first byte without its record.
//!
//! Switch: a writer publishes how many plain bytes it sent before its first
//! control byte; a reader that peeked socket bytes *before* reading an
//! unpublished offset knows they are all data.
//!
//! Negotiation word: each side moves it with a compare-and-swap, so a
//! confirmation and a refusal (or withdrawal) racing each other have
//! exactly one winner, seen alike by both sides.

use crate::layout::{ANC_SLOTS, AncQueue, RingFlags, SWITCHED};
use crate::sync::Ordering::{Relaxed, Release, SeqCst};
use crate::sync::{AtomicU32, fence};

/// Waiter side: "wake me". The caller re-checks the ring afterwards and
/// sleeps only if it still has to.
pub fn announce_waiting(flag: &AtomicU32) {
    flag.store(1, SeqCst);
    fence(SeqCst);
}

/// Publisher side, after storing its index: whether a waiter asked to be
/// woken (and it is now our job to ring exactly once).
pub fn take_waiter(flag: &AtomicU32) -> bool {
    fence(SeqCst);
    flag.load(Relaxed) != 0 && flag.swap(0, SeqCst) != 0
}

/// Moves the negotiation word from `from` to `to` unless the other side
/// moved it first; returns the value it holds afterwards either way.
pub fn negotiate(word: &AtomicU32, from: u32, to: u32) -> u32 {
    match word.compare_exchange(from, to, SeqCst, SeqCst) {
        Ok(_) => to,
        Err(now) => now,
    }
}

/// Writer: publishes the plain byte count. Must happen before the first
/// control byte goes out on the socket.
pub fn publish_switch(f: &RingFlags, plain_bytes: u64) {
    f.switch_at.store(plain_bytes | SWITCHED, SeqCst);
}

/// Reader: the published plain byte count, if any. Call it *after* peeking
/// the socket: bytes peeked while it returns `None` are all data.
pub fn switch_point(f: &RingFlags) -> Option<u64> {
    fence(SeqCst);
    let v = f.switch_at.load(SeqCst);
    (v & SWITCHED != 0).then_some(v & !SWITCHED)
}

/// Writer: publishes the record of a message whose first byte goes to ring
/// index `offset` (the caller checked that a slot is free). Before the data.
pub fn publish_record(q: &AncQueue, offset: u64, len: u64) {
    let h = q.head.load(Relaxed);
    let r = &q.recs[(h % ANC_SLOTS as u64) as usize];
    r.offset.store(offset, Relaxed);
    r.len.store(len, Relaxed);
    q.head.store(h.wrapping_add(1), Release);
}
