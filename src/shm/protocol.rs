//! Every operation on a shared flag word of the segment, as small
//! functions shared by `conn` and the loom model check (`tests/loom.rs`).
//! `conn` never touches a flag word any other way.
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
//!
//! Ends: `wr_closed` and `rd_closed` are written once by their side and
//! read with Acquire; every value is the peer's to choose, so any non-zero
//! one means closed, and only the exact reset/released value adds to it.

use super::layout::{ANC_SLOTS, AncQueue, RD_RELEASED, RD_SHUT, RingFlags, SWITCHED, SegHeader};
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::sync::{AtomicU32, fence};

/// `wr_closed` value of a side that closed with unread data (ECONNRESET).
const CLOSED_RESET: u32 = 2;

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

/// A cheap first look (no fence, no write): whether anyone asked to be
/// woken; [`take_waiter`] decides.
pub fn someone_waits(flag: &AtomicU32) -> bool {
    flag.load(Relaxed) != 0
}

/// Takes a request to be woken without the fence of [`take_waiter`]:
/// for a side that changed no index (an end of the connection).
pub fn take_waiter_now(flag: &AtomicU32) -> bool {
    flag.swap(0, SeqCst) != 0
}

/// Withdraws a request to be woken (a closing side wants no more bells).
pub fn stop_waiting(flag: &AtomicU32) {
    flag.store(0, SeqCst);
}

/// The value a writer about to sleep on `space_seq` waits on; read before
/// it announces itself, so a bump after the announcement ends the sleep.
pub fn space_seq(f: &RingFlags) -> u32 {
    f.space_seq.load(SeqCst)
}

/// Consumer side, after freeing space (or going away): bumps `space_seq`
/// before the futex wake, so that a writer about to sleep on the old value
/// returns at once.
pub fn bump_space_seq(f: &RingFlags) {
    f.space_seq.fetch_add(1, SeqCst);
}

/// Either side, at each shutdown(2): the kernel wakes both sockets on
/// each, an edge for edge-triggered epoll even when nothing else changed.
pub fn bump_shut_seq(h: &SegHeader) {
    h.shut_seq.fetch_add(1, Release);
}

pub fn shut_seq(h: &SegHeader) -> u32 {
    h.shut_seq.load(Relaxed)
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

/// Reader, before the switch: tells the writer how many of its plain bytes
/// it has read (the writer's SIOCOUTQ).
pub fn publish_plain_read(f: &RingFlags, n: u64) {
    f.plain_read.store(n, Release);
}

/// Writer: the reader's count of plain bytes read.
pub fn plain_read(f: &RingFlags) -> u64 {
    f.plain_read.load(Acquire)
}

/// How a direction's writer ended it, as its `wr_closed` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterEnd {
    Open,
    /// Shut down or closed: EOF once the ring is read.
    Eof,
    /// Closed with our bytes unread: ECONNRESET once the ring is read.
    Reset,
}

/// Writer: ends its direction (`reset`: it closed with unread data).
pub fn end_writes(f: &RingFlags, reset: bool) {
    f.wr_closed
        .store(if reset { CLOSED_RESET } else { 1 }, SeqCst);
}

pub fn writer_end(f: &RingFlags) -> WriterEnd {
    match f.wr_closed.load(Acquire) {
        0 => WriterEnd::Open,
        CLOSED_RESET => WriterEnd::Reset,
        _ => WriterEnd::Eof,
    }
}

/// How a direction's reader ended it, as its `rd_closed` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderEnd {
    Open,
    /// shutdown(SHUT_RD): the writer gets EPIPE; its bytes stay queued.
    Shut,
    /// The reader's socket is (about to be) released: what it left unread
    /// is discarded.
    Released,
}

/// Reader: ends its direction.
pub fn end_reads(f: &RingFlags, how: ReaderEnd) {
    let v = match how {
        ReaderEnd::Open => 0,
        ReaderEnd::Shut => RD_SHUT,
        ReaderEnd::Released => RD_RELEASED,
    };
    f.rd_closed.store(v, SeqCst);
}

pub fn reader_end(f: &RingFlags) -> ReaderEnd {
    match f.rd_closed.load(Acquire) {
        0 => ReaderEnd::Open,
        RD_RELEASED => ReaderEnd::Released,
        _ => ReaderEnd::Shut,
    }
}

/// The negotiation word now.
pub fn negotiation(word: &AtomicU32) -> u32 {
    word.load(Acquire)
}

/// Moves the negotiation word from `from` to `to` unless the other side
/// moved it first; returns the value it holds afterwards either way.
pub fn negotiate(word: &AtomicU32, from: u32, to: u32) -> u32 {
    match word.compare_exchange(from, to, SeqCst, SeqCst) {
        Ok(_) => to,
        Err(now) => now,
    }
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
