//! A single-producer single-consumer byte ring over memory shared with a
//! possibly hostile peer.
//!
//! Indices count bytes since the switch and never wrap in practice (u64);
//! positions are `index & (cap - 1)`, so every access stays inside the data
//! area whatever the peer stores. A fill level outside `0..=cap` means the
//! peer corrupted the header: the caller gets [`Corrupt`] and ends the
//! connection, it never reads or writes out of bounds.
//!
//! [`Ring`] answers queries from anyone; the two roles that move bytes,
//! [`Producer`] and [`Consumer`], are one each per ring: a connection makes
//! them only while it holds its side's tx or rx lock (see `conn`).

use super::copy::{self, copy};
use super::layout::{RingCtrl, RingFlags};
use crate::sync::AtomicU64;
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// Writes of at least this many bytes prefetch the lines ahead of them
/// (smaller ones measured no gain: the line they fill is the one the
/// consumer reads next, and 64 B ping-pong got 10% slower).
const PREFETCH_MIN: usize = 128;
/// Larger writes measured no gain: they move at copy bandwidth.
const PREFETCH_MAX: usize = 4096;
/// How far ahead of the write; 2 KiB and more measured worse at 256 B.
const PREFETCH_AHEAD: u64 = 512;

/// The shared indices broke the ring invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt;

/// One direction's ring: control words plus `cap` data bytes.
pub struct Ring<'a> {
    ctrl: &'a RingCtrl,
    /// `cap` bytes, written by the producer between `head` and `tail + cap`
    /// and read by the consumer between `tail` and `head` (positions
    /// masked: never out of bounds, whatever the peer stores).
    data: NonNull<u8>,
    /// A power of two.
    cap: u64,
    _data: PhantomData<&'a [u8]>,
}

impl<'a> Ring<'a> {
    /// # Safety
    /// `data` is valid for reads and writes of `cap` bytes for `'a` (other
    /// processes may write it concurrently), and `cap` is a power of two.
    pub unsafe fn new(ctrl: &'a RingCtrl, data: NonNull<u8>, cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        Ring {
            ctrl,
            data,
            cap: cap as u64,
            _data: PhantomData,
        }
    }

    /// The direction's flag words; every operation on them is in
    /// `shm::protocol`.
    pub fn flags(&self) -> &'a RingFlags {
        &self.ctrl.flags
    }

    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    fn fill(&self, head: u64, tail: u64) -> Result<u64, Corrupt> {
        let n = head.wrapping_sub(tail);
        if n > self.cap { Err(Corrupt) } else { Ok(n) }
    }

    /// Bytes the consumer can read now.
    pub fn readable(&self) -> Result<usize, Corrupt> {
        let tail = self.ctrl.tail.load(Relaxed);
        let head = self.ctrl.head.load(Acquire);
        self.fill(head, tail).map(|n| n as usize)
    }

    /// Bytes the producer can write now.
    pub fn writable(&self) -> Result<usize, Corrupt> {
        let head = self.ctrl.head.load(Relaxed);
        let tail = self.ctrl.tail.load(Acquire);
        self.fill(head, tail).map(|n| (self.cap - n) as usize)
    }

    /// Total bytes ever written (for edge-triggered readiness, statistics).
    pub fn head(&self) -> u64 {
        self.ctrl.head.load(Acquire)
    }

    /// Total bytes ever consumed (for edge-triggered readiness, statistics).
    pub fn tail(&self) -> u64 {
        self.ctrl.tail.load(Acquire)
    }

    /// The producer role: the caller is the one producer for as long as
    /// it lives (it holds its side's tx lock).
    pub fn producer(&self) -> Producer<'_, 'a> {
        Producer {
            ring: self,
            tail_cache: None,
        }
    }

    /// The consumer role: the caller is the one consumer for as long as
    /// it lives (it holds its side's rx lock).
    pub fn consumer(&self) -> Consumer<'_, 'a> {
        Consumer {
            ring: self,
            head_cache: None,
        }
    }

    /// Producer, after writing `len` bytes that end at index `end`: asks
    /// for the lines that as many bytes [`PREFETCH_AHEAD`] on will fill,
    /// in a writable state. The consumer read them one lap ago and still
    /// caches them; without the hint each of our stores waits for its
    /// line, and the next atomic operation (the tx lock's release) stalls
    /// until they all have. (Wrapping arithmetic: `end` comes from shared
    /// memory.)
    #[inline(never)]
    fn prefetch_ahead(&self, end: u64, len: usize) {
        let first = end.wrapping_add(PREFETCH_AHEAD - (len as u64).min(PREFETCH_AHEAD));
        let first = first.wrapping_add(63) & !63;
        let span = end.wrapping_add(PREFETCH_AHEAD).wrapping_sub(first);
        let mut off = 0;
        while off < span.min(PREFETCH_AHEAD) {
            let pos = (first.wrapping_add(off) & (self.cap - 1)) as usize;
            // SAFETY: pos < cap, inside the data area.
            copy::prefetch_for_write(unsafe { self.data.as_ptr().add(pos) });
            off += 64;
        }
    }

    /// Copies `want` bytes between the ring at index `at` and the caller,
    /// one contiguous piece at a time: `f(ring_ptr, len)` returns how many
    /// it moved (fewer ends the copy).
    fn pieces(&self, at: u64, want: usize, mut f: impl FnMut(*mut u8, usize) -> usize) -> usize {
        let mut done = 0;
        while done < want {
            let pos = (at.wrapping_add(done as u64) & (self.cap - 1)) as usize;
            let contiguous = (self.cap as usize - pos).min(want - done);
            // SAFETY: pos + contiguous <= cap, inside the data area.
            let p = unsafe { self.data.as_ptr().add(pos) };
            let n = f(p, contiguous).min(contiguous);
            done += n;
            if n < contiguous {
                break;
            }
        }
        done
    }
}

/// The one writer of a ring.
pub struct Producer<'r, 'a> {
    ring: &'r Ring<'a>,
    /// Process-local copy of the consumer's `tail` (rtrb's cached remote
    /// index): re-read from shared memory only when it says full, so the
    /// hot path does not pull the peer's cache line on every call. It can
    /// only lag the real index, which errs on the safe side.
    tail_cache: Option<&'r AtomicU64>,
}

impl<'r, 'a> Producer<'r, 'a> {
    /// Uses `cache` as the cached tail.
    pub fn with_cache(mut self, cache: &'r AtomicU64) -> Self {
        self.tail_cache = Some(cache);
        self
    }

    /// Free bytes, from a fresh look at the consumer's tail.
    fn free_now(&self, head: u64) -> Result<usize, Corrupt> {
        let tail = self.ring.ctrl.tail.load(Acquire);
        let used = self.ring.fill(head, tail)?;
        if let Some(c) = self.tail_cache {
            c.store(tail, Relaxed);
        }
        Ok((self.ring.cap - used) as usize)
    }

    /// Copies as much of `src` as fits and publishes it.
    pub fn push(&self, src: &mut SrcCursor<'_, '_>) -> Result<usize, Corrupt> {
        self.push_whole(src, 1)
    }

    /// [`push`](Self::push), but copies nothing unless the first
    /// `min(remaining, atomic)` bytes fit: like the kernel's socket buffer,
    /// which appends a write in whole chunks, so that small writes of
    /// concurrent writers never interleave.
    #[inline]
    pub fn push_whole(&self, src: &mut SrcCursor<'_, '_>, atomic: usize) -> Result<usize, Corrupt> {
        let ring = self.ring;
        let head = ring.ctrl.head.load(Relaxed);
        let cached = self.tail_cache.map(|c| c.load(Relaxed));
        let free = match cached.and_then(|t| ring.fill(head, t).ok()) {
            Some(used) if (ring.cap - used) as usize >= src.remaining() => {
                (ring.cap - used) as usize
            }
            _ => self.free_now(head)?,
        };
        let want = free.min(src.remaining());
        if want == 0 || want < src.remaining().min(atomic) {
            return Ok(0);
        }
        ring.pieces(head, want, |dst, n| src.take_into(dst, n));
        if (PREFETCH_MIN..PREFETCH_MAX).contains(&want) {
            ring.prefetch_ahead(head.wrapping_add(want as u64), want);
        }
        ring.ctrl
            .head
            .store(head.wrapping_add(want as u64), Release);
        Ok(want)
    }

    /// Lets `fill(ptr, len)` write up to `max` bytes straight into free
    /// ring space (e.g. a read(2) from a file: one copy), then publishes
    /// what it wrote. `fill` returns how many bytes it wrote (fewer ends the
    /// call). Errors from `fill` pass through once nothing was written.
    ///
    /// # Safety
    /// `fill` writes at most `len` bytes at `ptr`, and reads nothing there.
    pub unsafe fn push_with<E>(
        &self,
        max: usize,
        mut fill: impl FnMut(*mut u8, usize) -> Result<usize, E>,
    ) -> Result<Result<usize, E>, Corrupt> {
        let ring = self.ring;
        let head = ring.ctrl.head.load(Relaxed);
        let want = self.free_now(head)?.min(max);
        let mut first_err = None;
        let done = ring.pieces(head, want, |dst, n| match fill(dst, n) {
            Ok(k) => k,
            Err(e) => {
                first_err = Some(e);
                0
            }
        });
        if let (0, Some(e)) = (done, first_err) {
            return Ok(Err(e));
        }
        if done > 0 {
            ring.ctrl
                .head
                .store(head.wrapping_add(done as u64), Release);
        }
        Ok(Ok(done))
    }

    /// Reads up to `max` bytes from `fd` (at `*off`, advanced, or its file
    /// position) straight into free ring space, and publishes them: the
    /// file-to-socket copy of sendfile and splice. Returns how many, and
    /// whether the input is at its end (a read returned 0; else a short
    /// count means the ring is full).
    pub fn push_from_fd(
        &self,
        fd: rustix::fd::BorrowedFd<'_>,
        mut off: Option<&mut i64>,
        max: usize,
    ) -> Result<Result<(usize, bool), rustix::io::Errno>, Corrupt> {
        let mut eof = false;
        // SAFETY: read_into writes at most `len` bytes at `p` and reads none.
        let r = unsafe {
            self.push_with(max, |p, len| {
                let r = crate::os::fd::read_into(fd, p, len, off.as_deref_mut());
                eof |= r == Ok(0);
                r
            })
        }?;
        Ok(r.map(|n| (n, eof)))
    }
}

/// The one reader of a ring.
pub struct Consumer<'r, 'a> {
    ring: &'r Ring<'a>,
    /// Process-local copy of the producer's `head`, re-read only when it
    /// says there is not enough to read; it can only lag the real index.
    head_cache: Option<&'r AtomicU64>,
}

impl<'r> Consumer<'r, '_> {
    /// Uses `cache` as the cached head.
    pub fn with_cache(mut self, cache: &'r AtomicU64) -> Self {
        self.head_cache = Some(cache);
        self
    }

    /// Copies up to `dst.remaining()` bytes out; consumes them unless
    /// `peek`.
    pub fn pop(&self, dst: &mut DstCursor<'_, '_>, peek: bool) -> Result<usize, Corrupt> {
        self.pop_max(dst, usize::MAX, peek)
    }

    /// [`pop`](Self::pop), taking at most `max` bytes.
    pub fn pop_max(
        &self,
        dst: &mut DstCursor<'_, '_>,
        max: usize,
        peek: bool,
    ) -> Result<usize, Corrupt> {
        let ring = self.ring;
        let tail = ring.ctrl.tail.load(Relaxed);
        let cached = self.head_cache.map(|c| c.load(Relaxed));
        let head = match cached {
            Some(h)
                if ring
                    .fill(h, tail)
                    .is_ok_and(|n| n as usize >= dst.remaining()) =>
            {
                h
            }
            _ => {
                let head = ring.ctrl.head.load(Acquire);
                if let Some(c) = self.head_cache {
                    c.store(head, Relaxed);
                }
                head
            }
        };
        self.pop_from(dst, tail, head, max, peek)
    }

    /// [`pop`](Self::pop) from indices the caller already loaded (`tail`
    /// ours, `head` with Acquire), validated here, taking at most `max`.
    pub fn pop_from(
        &self,
        dst: &mut DstCursor<'_, '_>,
        tail: u64,
        head: u64,
        max: usize,
        peek: bool,
    ) -> Result<usize, Corrupt> {
        let ring = self.ring;
        let avail = ring.fill(head, tail)? as usize;
        let want = avail.min(dst.remaining()).min(max);
        if want == 0 {
            return Ok(0);
        }
        ring.pieces(tail, want, |src, n| dst.put_from(src, n));
        if !peek {
            ring.ctrl
                .tail
                .store(tail.wrapping_add(want as u64), Release);
        }
        Ok(want)
    }
}

/// The bytes a list of buffers holds (saturating: a caller's iovecs are
/// not trusted to add up).
pub fn total_len<B: std::ops::Deref<Target = [u8]>>(bufs: &[B]) -> usize {
    bufs.iter().fold(0, |t, b| t.saturating_add(b.len()))
}

/// Moves a cursor's (buffer, offset) position `n` bytes on, over buffers
/// whose lengths `len` gives; true if it stopped inside a buffer (false:
/// at a buffer boundary).
#[inline]
fn step(idx: &mut usize, off: &mut usize, mut n: usize, len: impl Fn(usize) -> usize) -> bool {
    while n > 0 {
        let left = len(*idx) - *off;
        if n < left {
            *off += n;
            return true;
        }
        n -= left;
        *idx += 1;
        *off = 0;
    }
    false
}

/// Reads from a list of caller buffers in order.
pub struct SrcCursor<'s, 'b> {
    bufs: &'s [IoSlice<'b>],
    idx: usize,
    off: usize,
    remaining: usize,
}

impl<'s, 'b> SrcCursor<'s, 'b> {
    pub fn new(bufs: &'s [IoSlice<'b>]) -> Self {
        let remaining = total_len(bufs);
        SrcCursor {
            bufs,
            idx: 0,
            off: 0,
            remaining,
        }
    }

    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The buffers not yet consumed, when the cursor sits on a buffer
    /// boundary (the common case); `None` in the middle of one.
    pub fn rest(&self) -> Option<&'s [IoSlice<'b>]> {
        (self.off == 0).then(|| &self.bufs[self.idx..])
    }

    /// The unconsumed part of the current buffer.
    pub fn current(&self) -> &'b [u8] {
        let mut i = self.idx;
        while i < self.bufs.len() {
            let b: &'b [u8] = slice_of(&self.bufs[i]);
            let off = if i == self.idx { self.off } else { 0 };
            if off < b.len() {
                return &b[off..];
            }
            i += 1;
        }
        &[]
    }

    pub fn advance(&mut self, n: usize) {
        self.remaining -= n;
        let bufs = self.bufs;
        if step(&mut self.idx, &mut self.off, n, |i| bufs[i].len()) {
            return;
        }
        while self.idx < self.bufs.len() && self.bufs[self.idx].len() == self.off {
            self.idx += 1;
            self.off = 0;
        }
    }

    /// Copies up to `n` bytes to `dst`; returns how many.
    fn take_into(&mut self, dst: *mut u8, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let cur = self.current();
            let k = cur.len().min(n - done);
            // SAFETY: the caller guarantees dst has room for n bytes; cur
            // holds k readable bytes; caller memory never overlaps the ring.
            unsafe { copy(dst.add(done), cur.as_ptr(), k) };
            self.advance(k);
            done += k;
        }
        done
    }
}

fn slice_of<'b>(s: &IoSlice<'b>) -> &'b [u8] {
    // SAFETY: an IoSlice<'b> is a shared borrow of 'b bytes; this only
    // re-expresses that lifetime, which Deref shortens to the IoSlice's.
    unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) }
}

/// Writes into a list of caller buffers in order.
pub struct DstCursor<'s, 'b> {
    bufs: &'s mut [IoSliceMut<'b>],
    idx: usize,
    off: usize,
    remaining: usize,
    filled: usize,
}

impl<'s, 'b> DstCursor<'s, 'b> {
    pub fn new(bufs: &'s mut [IoSliceMut<'b>]) -> Self {
        let remaining = total_len(bufs);
        DstCursor {
            bufs,
            idx: 0,
            off: 0,
            remaining,
            filled: 0,
        }
    }

    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Bytes written so far.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// Whether nothing has been written yet (so the whole buffer list can be
    /// handed to one recvmsg).
    pub fn at_start(&self) -> bool {
        self.filled == 0
    }

    pub fn bufs_mut(&mut self) -> &mut [IoSliceMut<'b>] {
        self.bufs
    }

    /// The writable rest of the current buffer.
    pub fn current(&mut self) -> &mut [u8] {
        while self.idx < self.bufs.len() && self.bufs[self.idx].len() == self.off {
            self.idx += 1;
            self.off = 0;
        }
        if self.idx == self.bufs.len() {
            return &mut [];
        }
        let off = self.off;
        &mut self.bufs[self.idx][off..]
    }

    /// Records that `n` bytes were written at the cursor by someone else.
    pub fn advance(&mut self, n: usize) {
        self.remaining -= n;
        self.filled += n;
        let bufs = &*self.bufs;
        step(&mut self.idx, &mut self.off, n, |i| bufs[i].len());
    }

    /// Copies `n` readable bytes at `src`; returns how many fit.
    fn put_from(&mut self, src: *const u8, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let cur = self.current();
            let k = cur.len().min(n - done);
            if k == 0 {
                break;
            }
            // SAFETY: cur has k writable bytes, src has n readable ones;
            // caller memory never overlaps the ring.
            unsafe { copy(cur.as_mut_ptr(), src.add(done), k) };
            self.advance(k);
            done += k;
        }
        done
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shm::layout::RingCtrl;

    struct Heap {
        ctrl: RingCtrl,
        data: Vec<u8>,
    }

    impl Heap {
        fn new(cap: usize) -> Self {
            Heap {
                ctrl: RingCtrl::new(),
                data: vec![0; cap],
            }
        }
        fn ring(&mut self) -> Ring<'_> {
            let cap = self.data.len();
            let p = NonNull::new(self.data.as_mut_ptr()).unwrap();
            // SAFETY: the Vec outlives the ring and holds cap bytes.
            unsafe { Ring::new(&self.ctrl, p, cap) }
        }
    }

    fn push(r: &Ring<'_>, b: &[u8]) -> usize {
        let s = [IoSlice::new(b)];
        r.producer().push(&mut SrcCursor::new(&s)).unwrap()
    }

    fn pop(r: &Ring<'_>, n: usize, peek: bool) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let got = {
            let mut d = [IoSliceMut::new(&mut v)];
            r.consumer().pop(&mut DstCursor::new(&mut d), peek).unwrap()
        };
        v.truncate(got);
        v
    }

    #[test]
    fn empty_and_full() {
        let mut h = Heap::new(16);
        let r = h.ring();
        assert_eq!(r.readable(), Ok(0));
        assert_eq!(r.writable(), Ok(16));
        assert_eq!(pop(&r, 8, false), b"");
        assert_eq!(push(&r, &[1; 20]), 16);
        assert_eq!(r.writable(), Ok(0));
        assert_eq!(push(&r, &[2; 1]), 0);
        assert_eq!(pop(&r, 100, false), vec![1; 16]);
        assert_eq!(r.readable(), Ok(0));
    }

    #[test]
    fn wrap_around_keeps_order() {
        let mut h = Heap::new(16);
        let r = h.ring();
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..100 {
            let n = 1 + round % 13;
            let chunk: Vec<u8> = (0..n).map(|i| next.wrapping_add(i as u8)).collect();
            let w = push(&r, &chunk);
            next = next.wrapping_add(w as u8);
            for b in pop(&r, 1 + round % 7, false) {
                assert_eq!(b, expect);
                expect = expect.wrapping_add(1);
            }
        }
    }

    #[test]
    fn peek_does_not_consume() {
        let mut h = Heap::new(16);
        let r = h.ring();
        push(&r, b"hello");
        assert_eq!(pop(&r, 3, true), b"hel");
        assert_eq!(pop(&r, 10, false), b"hello");
    }

    #[test]
    fn scatter_gather() {
        let mut h = Heap::new(16);
        let r = h.ring();
        push(&r, b"0123456789");
        let src = [
            IoSlice::new(b"ab"),
            IoSlice::new(b""),
            IoSlice::new(b"cdefgh"),
        ];
        assert_eq!(r.producer().push(&mut SrcCursor::new(&src)).unwrap(), 6);
        let (mut a, mut b, mut c) = ([0u8; 3], [0u8; 0], [0u8; 20]);
        let mut d = [
            IoSliceMut::new(&mut a),
            IoSliceMut::new(&mut b),
            IoSliceMut::new(&mut c),
        ];
        assert_eq!(
            r.consumer()
                .pop(&mut DstCursor::new(&mut d), false)
                .unwrap(),
            16
        );
        assert_eq!(&a, b"012");
        assert_eq!(&c[..13], b"3456789abcdef");
    }

    #[test]
    fn corrupt_indices_are_detected() {
        let mut h = Heap::new(16);
        h.ctrl.head.store(100, Relaxed);
        h.ctrl.tail.store(10, Relaxed);
        let r = h.ring();
        assert_eq!(r.readable(), Err(Corrupt));
        assert_eq!(r.writable(), Err(Corrupt));
        let mut v = [0u8; 4];
        let mut d = [IoSliceMut::new(&mut v)];
        assert_eq!(
            r.consumer().pop(&mut DstCursor::new(&mut d), false),
            Err(Corrupt)
        );
        let s = [IoSlice::new(b"x")];
        assert_eq!(r.producer().push(&mut SrcCursor::new(&s)), Err(Corrupt));
        // tail ahead of head is just as wrong.
        h.ctrl.head.store(5, Relaxed);
        let r = h.ring();
        assert_eq!(r.readable(), Err(Corrupt));
    }

    proptest::proptest! {
        /// Arbitrary header words never cause an out-of-bounds access (the
        /// data Vec is exactly cap bytes, so an overrun would be caught by
        /// the allocator checks under miri/ASan) nor a panic.
        #[test]
        fn hostile_indices_stay_in_bounds(head: u64, tail: u64, n in 0usize..64, peek: bool) {
            let mut h = Heap::new(32);
            h.ctrl.head.store(head, Relaxed);
            h.ctrl.tail.store(tail, Relaxed);
            let r = h.ring();
            let mut v = vec![0u8; n];
            let mut d = [IoSliceMut::new(&mut v)];
            let res = r.consumer().pop(&mut DstCursor::new(&mut d), peek);
            proptest::prop_assert_eq!(res.is_err(), head.wrapping_sub(tail) > 32);
            let src = vec![7u8; n];
            let s = [IoSlice::new(&src)];
            let _ = r.producer().push(&mut SrcCursor::new(&s));
        }

        /// A model check of the byte stream: any interleaving of pushes and
        /// pops delivers exactly the bytes pushed, in order.
        #[test]
        fn stream_is_preserved(ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 0usize..40), 1..200)) {
            let mut h = Heap::new(64);
            let r = h.ring();
            let (mut sent, mut got) = (Vec::new(), Vec::new());
            let mut k = 0u8;
            for (is_push, n) in ops {
                if is_push {
                    let chunk: Vec<u8> = (0..n).map(|i| k.wrapping_add(i as u8)).collect();
                    let w = push(&r, &chunk);
                    sent.extend_from_slice(&chunk[..w]);
                    k = k.wrapping_add(w as u8);
                } else {
                    got.extend(pop(&r, n, false));
                }
            }
            got.extend(pop(&r, 64, false));
            proptest::prop_assert_eq!(sent, got);
        }
    }
}
