//! Model check of the doorbell and switch protocols with loom:
//! `RUSTFLAGS="--cfg loom" cargo test --release --test loom` (make test runs it).
//!
//! Each model runs the real `Ring` and `protocol` code on loom's atomics and
//! explores every interleaving (and every allowed memory-order outcome).
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use loom::thread;
use std::io::{IoSlice, IoSliceMut};
use std::ptr::NonNull;
use tsss_core::shm::layout::RingCtrl;
use tsss_core::shm::layout::{
    CLIENT_ATTACHED, CLIENT_NONE, CLIENT_REFUSED, SERVER_CONFIRMED, SERVER_WITHDRAWN,
};
use tsss_core::shm::protocol::{
    announce_waiting, negotiate, publish_record, publish_switch, switch_point, take_waiter,
};
use tsss_core::shm::ring::{DstCursor, Ring, SrcCursor};

const CAP: usize = 4;

/// Ring storage shared by the model's threads.
struct Shared {
    ctrl: RingCtrl,
    data: NonNull<u8>,
}

// SAFETY: the data area is only touched through Ring, whose protocol the
// model checks; loom itself only tracks the atomics.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn new() -> Arc<Shared> {
        let data = Box::leak(vec![0u8; CAP].into_boxed_slice());
        Arc::new(Shared {
            ctrl: RingCtrl::new(),
            data: NonNull::new(data.as_mut_ptr()).unwrap(),
        })
    }
    fn ring(&self) -> Ring<'_> {
        // SAFETY: `data` is a leaked CAP-byte buffer, CAP a power of two.
        unsafe { Ring::new(&self.ctrl, self.data, CAP) }
    }
}

fn push(r: &Ring<'_>, b: &[u8]) -> usize {
    let s = [IoSlice::new(b)];
    r.producer().push(&mut SrcCursor::new(&s)).unwrap()
}

fn pop(r: &Ring<'_>, n: usize) -> usize {
    let mut v = vec![0u8; n];
    let mut d = [IoSliceMut::new(&mut v)];
    r.consumer()
        .pop(&mut DstCursor::new(&mut d), false)
        .unwrap()
}

/// A reader that decides to sleep on an empty ring is always rung, or the
/// data it waited for is already visible to its re-check.
#[test]
fn data_doorbell_is_never_lost() {
    loom::model(|| {
        let s = Shared::new();
        let bell = Arc::new(AtomicU32::new(0));
        let (s2, bell2) = (s.clone(), bell.clone());
        let writer = thread::spawn(move || {
            let r = s2.ring();
            assert_eq!(push(&r, b"x"), 1);
            if take_waiter(&r.flags().reader_waiting) {
                bell2.fetch_add(1, SeqCst);
            }
        });
        let r = s.ring();
        let mut slept = false;
        if pop(&r, 1) == 0 {
            announce_waiting(&r.flags().reader_waiting);
            slept = pop(&r, 1) == 0;
        }
        writer.join().unwrap();
        if slept {
            assert_eq!(
                bell.load(SeqCst),
                1,
                "reader sleeps with data in the ring and no doorbell"
            );
        }
    });
}

/// A writer that decides to sleep on a full ring is always woken, or sees
/// the space its re-check was looking for.
#[test]
fn space_wakeup_is_never_lost() {
    loom::model(|| {
        let s = Shared::new();
        assert_eq!(push(&s.ring(), b"abcd"), CAP);
        let woken = Arc::new(AtomicU32::new(0));
        let (s2, woken2) = (s.clone(), woken.clone());
        let reader = thread::spawn(move || {
            let r = s2.ring();
            assert_eq!(pop(&r, 2), 2);
            if take_waiter(&r.flags().writer_sleeping) {
                woken2.fetch_add(1, SeqCst);
            }
        });
        let r = s.ring();
        let mut slept = false;
        if push(&r, b"e") == 0 {
            announce_waiting(&r.flags().writer_sleeping);
            slept = push(&r, b"e") == 0;
        }
        reader.join().unwrap();
        if slept {
            assert_eq!(
                woken.load(SeqCst),
                1,
                "writer sleeps on free space with no wake-up"
            );
        }
    });
}

/// The plain-to-ring switch never hands a control byte to the application:
/// the writer sends 2 data bytes, publishes the switch, then sends one
/// control byte; the reader peeks, then reads the switch point, then
/// consumes only bytes below it. The socket is a FIFO (modelled as its
/// length; syscalls are full barriers).
#[test]
fn switch_never_leaks_a_control_byte() {
    loom::model(|| {
        let s = Shared::new();
        let sock_len = Arc::new(AtomicU64::new(0));
        let (s2, sock2) = (s.clone(), sock_len.clone());
        let writer = thread::spawn(move || {
            sock2.fetch_add(1, SeqCst);
            sock2.fetch_add(1, SeqCst);
            publish_switch(&s2.ctrl.flags, 2);
            sock2.fetch_add(1, SeqCst); // the doorbell
        });
        let peeked = sock_len.load(SeqCst);
        let consumed = match switch_point(&s.ctrl.flags) {
            Some(limit) => peeked.min(limit),
            None => peeked,
        };
        assert!(
            consumed <= 2,
            "consumed {consumed} bytes as data, but only 2 were data"
        );
        writer.join().unwrap();
    });
}

/// Ancillary data: the writer publishes a record, then the message's
/// bytes; a reader that loads the ring head first and the record queue
/// second never reads a message's first byte without seeing its record.
#[test]
fn ancillary_record_is_seen_with_its_data() {
    use tsss_core::shm::layout::AncQueue;
    struct Both {
        s: Arc<Shared>,
        q: AncQueue,
    }
    // SAFETY: as for Shared; AncQueue holds only atomics.
    unsafe impl Send for Both {}
    // SAFETY: as above.
    unsafe impl Sync for Both {}
    loom::model(|| {
        let b = Arc::new(Both {
            s: Shared::new(),
            q: AncQueue::new(),
        });
        let b2 = b.clone();
        let reader = thread::spawn(move || {
            let head = b2.s.ring().head();
            let records = b2.q.head.load(loom::sync::atomic::Ordering::Acquire);
            if head > 0 {
                assert_eq!(
                    records, 1,
                    "read a message's byte without its ancillary record"
                );
            }
        });
        publish_record(&b.q, 0, 1);
        assert_eq!(push(&b.s.ring(), b"m"), 1);
        reader.join().unwrap();
    });
}

/// The negotiation word: a client that refuses (before an exec) racing a
/// server that confirms, and a server that withdraws racing a client that
/// attaches. Exactly one move wins, and both sides read the same outcome:
/// never one side switched while the other stays plain.
#[test]
fn negotiation_has_one_winner() {
    loom::model(|| {
        let w = Arc::new(AtomicU32::new(CLIENT_ATTACHED));
        let w2 = w.clone();
        let server = thread::spawn(move || negotiate(&w2, CLIENT_ATTACHED, SERVER_CONFIRMED));
        let client = negotiate(&w, CLIENT_ATTACHED, CLIENT_REFUSED);
        let server = server.join().unwrap();
        assert_eq!(client, server, "both sides see the same outcome");
        assert!(client == SERVER_CONFIRMED || client == CLIENT_REFUSED);
        assert_eq!(w.load(SeqCst), client);
    });
    loom::model(|| {
        let w = Arc::new(AtomicU32::new(CLIENT_NONE));
        let w2 = w.clone();
        // The server withdraws from whatever it finds unfinished.
        let server = thread::spawn(move || {
            loop {
                let v = w2.load(SeqCst);
                if v != CLIENT_NONE && v != CLIENT_ATTACHED {
                    break v;
                }
                if negotiate(&w2, v, SERVER_WITHDRAWN) == SERVER_WITHDRAWN {
                    break SERVER_WITHDRAWN;
                }
            }
        });
        let client = negotiate(&w, CLIENT_NONE, CLIENT_ATTACHED);
        let server = server.join().unwrap();
        assert_eq!(server, SERVER_WITHDRAWN, "a withdrawal always ends it");
        // A client that attached first sees the withdrawal at its next look;
        // one that came second never attached.
        assert!(client == CLIENT_ATTACHED || client == SERVER_WITHDRAWN);
        assert_eq!(w.load(SeqCst), SERVER_WITHDRAWN);
    });
}
