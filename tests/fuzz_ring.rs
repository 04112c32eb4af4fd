//! Adversarial fuzzing of the byte ring (`tsss_core::shm::ring`) over ordinary
//! memory, through its public API only.
//!
//! The peer shares the ring's control words and data and may store anything
//! there at any time. Between the victim's operations the adversary writes
//! boundary values (0, 1, cap±1, u64::MAX, values next to the victim's own
//! indices), huge and random ones into head, tail and the victim's cached
//! copies of them (process-local in tsss, but filled from shared words), or
//! scribbles over the data. The victim then runs `readable`, `writable`,
//! `push`, `push_with`, `pop`, `pop_max` or `pop_from`, and each result is
//! checked against what the words it found allow:
//! - an error exactly when the fill level `head - tail` exceeds the
//!   capacity, never a panic;
//! - counts within the caller's buffers, the `max` asked for and the
//!   capacity; the bytes delivered are the ring's bytes at the positions the
//!   indices name, the caller's bytes past the count stay untouched, and the
//!   index moves by exactly the count;
//! - writes only at the positions the indices name; the guard zones around
//!   the data never change (under miri the data area is exactly `cap` bytes
//!   instead, so a stray access is reported as undefined behaviour);
//! - every operation returns (watchdog, see `fuzz_support`).
//!
//! `hostile_race` runs a thread that rewrites head and tail nonstop while the
//! victim works, for the bounds and termination properties.
//!
//! `cargo test --release --test fuzz_ring`; `make miri` runs this file under
//! miri with fewer cases. Seeds, case counts and replay: `fuzz_support`.

mod fuzz_support;

use fuzz_support::{MARK, Plan, Progress, Rng};
use std::io::{IoSlice, IoSliceMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use tsss_core::shm::layout::RingCtrl;
use tsss_core::shm::ring::{Consumer, Corrupt, DstCursor, Producer, Ring, SrcCursor};

/// Bytes of [`MARK`] on each side of the data area.
const GUARD: usize = if cfg!(miri) { 0 } else { 64 };

fn cases(release: u64, debug: u64, miri: u64) -> u64 {
    if cfg!(miri) {
        miri
    } else if cfg!(debug_assertions) {
        debug
    } else {
        release
    }
}

/// One ring's memory: control words and `cap` data bytes between guards.
struct Mem {
    ctrl: RingCtrl,
    buf: Vec<u8>,
    cap: usize,
    /// The producer's cached tail and the consumer's cached head.
    tail_cache: AtomicU64,
    head_cache: AtomicU64,
}

impl Mem {
    fn new(cap: usize, rng: &mut Rng) -> Mem {
        let mut buf = vec![MARK; cap + 2 * GUARD];
        for b in &mut buf[GUARD..GUARD + cap] {
            *b = rng.data_byte();
        }
        Mem {
            ctrl: RingCtrl::new(),
            buf,
            cap,
            tail_cache: AtomicU64::new(0),
            head_cache: AtomicU64::new(0),
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[GUARD..GUARD + self.cap]
    }

    fn guards_intact(&self) -> bool {
        let (a, b) = (&self.buf[..GUARD], &self.buf[GUARD + self.cap..]);
        a.iter().chain(b).all(|&x| x == MARK)
    }

    /// The data area, freshly derived for each operation.
    fn data_ptr(&mut self) -> NonNull<u8> {
        NonNull::new(self.buf.as_mut_ptr().wrapping_add(GUARD)).unwrap()
    }

    fn head(&self) -> u64 {
        self.ctrl.head.load(Relaxed)
    }

    fn tail(&self) -> u64 {
        self.ctrl.tail.load(Relaxed)
    }

    fn near(&self) -> [u64; 4] {
        [
            self.head(),
            self.tail(),
            self.tail_cache.load(Relaxed),
            self.head_cache.load(Relaxed),
        ]
    }
}

/// A ring and the cached remote index its producer or consumer uses (the
/// roles are made per operation, as a connection makes them per lock).
struct Roles<'a> {
    ring: Ring<'a>,
    cache: Option<&'a AtomicU64>,
}

impl<'a> Roles<'a> {
    fn producer(&self) -> Producer<'_, 'a> {
        let p = self.ring.producer();
        match self.cache {
            Some(c) => p.with_cache(c),
            None => p,
        }
    }
    fn consumer(&self) -> Consumer<'_, 'a> {
        let c = self.ring.consumer();
        match self.cache {
            Some(k) => c.with_cache(k),
            None => c,
        }
    }
    fn push(&self, src: &mut SrcCursor<'_, '_>) -> Result<usize, Corrupt> {
        self.producer().push(src)
    }
    fn push_whole(&self, src: &mut SrcCursor<'_, '_>, atomic: usize) -> Result<usize, Corrupt> {
        self.producer().push_whole(src, atomic)
    }
    fn push_with<E>(
        &self,
        max: usize,
        fill: impl FnMut(*mut u8, usize) -> Result<usize, E>,
    ) -> Result<Result<usize, E>, Corrupt> {
        // SAFETY: every fill of this file writes at most `len` bytes at
        // `ptr` and reads none (it checks the range it is offered).
        unsafe { self.producer().push_with(max, fill) }
    }
    fn pop(&self, dst: &mut DstCursor<'_, '_>, peek: bool) -> Result<usize, Corrupt> {
        self.consumer().pop(dst, peek)
    }
    fn pop_max(
        &self,
        dst: &mut DstCursor<'_, '_>,
        max: usize,
        peek: bool,
    ) -> Result<usize, Corrupt> {
        self.consumer().pop_max(dst, max, peek)
    }
    fn pop_from(
        &self,
        dst: &mut DstCursor<'_, '_>,
        tail: u64,
        head: u64,
        max: usize,
        peek: bool,
    ) -> Result<usize, Corrupt> {
        self.consumer().pop_from(dst, tail, head, max, peek)
    }
}

impl<'a> std::ops::Deref for Roles<'a> {
    type Target = Ring<'a>;
    fn deref(&self) -> &Ring<'a> {
        &self.ring
    }
}

fn ring<'a>(
    ctrl: &'a RingCtrl,
    data: NonNull<u8>,
    cap: usize,
    cache: Option<&'a AtomicU64>,
) -> Roles<'a> {
    // SAFETY: `data` points at `cap` bytes of a Mem buffer that outlives
    // the ring (it is dropped at the end of each operation); cap is a power
    // of two.
    let ring = unsafe { Ring::new(ctrl, data, cap) };
    Roles { ring, cache }
}

/// Fill level the words `head`, `tail` describe, if valid.
fn fill(head: u64, tail: u64, cap: usize) -> Result<usize, Corrupt> {
    let n = head.wrapping_sub(tail);
    if n > cap as u64 {
        Err(Corrupt)
    } else {
        Ok(n as usize)
    }
}

fn pos(index: u64, i: usize, cap: usize) -> usize {
    (index.wrapping_add(i as u64) & (cap as u64 - 1)) as usize
}

fn pick_cap(rng: &mut Rng) -> usize {
    if cfg!(miri) {
        rng.pick(&[1, 2, 4, 8, 16, 64])
    } else if rng.one_in(16) {
        4096
    } else {
        rng.pick(&[1, 2, 4, 8, 16, 64, 256])
    }
}

/// The adversary's move: rewrite shared words (or data) of `m`.
fn adversary(m: &mut Mem, rng: &mut Rng, trace: bool) {
    let cap = m.cap as u64;
    let near = m.near();
    let what = rng.below(8);
    match what {
        0 | 1 => m.ctrl.head.store(rng.hostile(cap, &near), Relaxed),
        2 | 3 => m.ctrl.tail.store(rng.hostile(cap, &near), Relaxed),
        4 | 5 => {
            // A consistent pair somewhere in index space.
            let base = rng.hostile(cap, &near);
            m.ctrl.tail.store(base, Relaxed);
            m.ctrl
                .head
                .store(base.wrapping_add(rng.below(cap + 1)), Relaxed);
        }
        6 => {
            let c = if rng.coin() {
                &m.tail_cache
            } else {
                &m.head_cache
            };
            let v = match rng.below(3) {
                0 => m.tail(),
                1 => m.head(),
                _ => rng.hostile(cap, &near),
            };
            c.store(v, Relaxed);
        }
        _ => {
            for _ in 0..1 + rng.below(4) {
                let i = GUARD + rng.below(cap) as usize;
                m.buf[i] = rng.data_byte();
            }
        }
    }
    if trace {
        eprintln!(
            "  adversary {what}: head {:#x} tail {:#x} caches t {:#x} h {:#x}",
            m.head(),
            m.tail(),
            m.tail_cache.load(Relaxed),
            m.head_cache.load(Relaxed)
        );
    }
}

/// Caller buffers for a pop: `parts` lengths, all [`MARK`].
fn dst_bufs(parts: &[usize]) -> Vec<Vec<u8>> {
    parts.iter().map(|&n| vec![MARK; n]).collect()
}

fn victim_pop(m: &mut Mem, rng: &mut Rng, prog: &Progress, trace: bool) {
    let cap = m.cap;
    let total = rng.len_near(cap);
    let parts = rng.split(total);
    let peek = rng.one_in(4);
    let max = if rng.coin() {
        usize::MAX
    } else {
        rng.len_near(cap)
    };
    // 0: pop, 1: pop_max, 2: pop_from with the current words, 3: pop_from
    // with arbitrary ones (what the caller loaded may be anything).
    let kind = rng.below(4);
    let use_cache = kind < 2 && rng.coin();
    let (h0, t0, c0) = (m.head(), m.tail(), m.head_cache.load(Relaxed));
    let (ta, ha) = match kind {
        3 => {
            let near = m.near();
            (
                rng.hostile(cap as u64, &near),
                rng.hostile(cap as u64, &near),
            )
        }
        _ => (t0, h0),
    };
    let d0 = m.data().to_vec();
    let mut bufs = dst_bufs(&parts);
    let p = m.data_ptr();
    let (res, filled) = prog.op(|| {
        let r = ring(&m.ctrl, p, cap, use_cache.then_some(&m.head_cache));
        let mut iov: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut d = DstCursor::new(&mut iov);
        let res = match kind {
            0 if max == usize::MAX => r.pop(&mut d, peek),
            0 | 1 => r.pop_max(&mut d, max, peek),
            _ => r.pop_from(&mut d, ta, ha, max, peek),
        };
        (res, d.filled())
    });
    let flat: Vec<u8> = bufs.concat();
    let ctx = format!(
        "pop kind {kind} cap {cap} head {h0:#x} tail {t0:#x} cache {c0:#x} args ({ta:#x}, {ha:#x}) \
         dst {parts:?} max {max} peek {peek} cache {use_cache} -> {res:?}"
    );
    if trace {
        eprintln!("  victim {ctx}");
    }
    assert!(m.guards_intact(), "guard zone changed: {ctx}");
    assert!(m.data() == d0, "a pop wrote ring data: {ctx}");
    assert_eq!(m.head(), h0, "a pop stored head: {ctx}");
    let exact = kind >= 2 || !use_cache || c0 == h0;
    let expect = fill(ha, ta, cap);
    match res {
        Err(Corrupt) => {
            assert!(expect.is_err(), "error on valid indices: {ctx}");
            assert_eq!(m.tail(), t0, "tail moved on error: {ctx}");
            assert!(flat.iter().all(|&b| b == MARK), "wrote on error: {ctx}");
        }
        Ok(n) => {
            assert!(
                n <= total && n <= max && n <= cap,
                "count out of bounds: {ctx}"
            );
            assert_eq!(filled, n, "cursor disagrees with the count: {ctx}");
            if exact {
                let avail = expect.unwrap_or_else(|_| panic!("no error on corrupt indices: {ctx}"));
                assert_eq!(n, avail.min(total).min(max), "wrong count: {ctx}");
            }
            for (i, &b) in flat[..n].iter().enumerate() {
                assert_eq!(b, d0[pos(ta, i, cap)], "byte {i} is not the ring's: {ctx}");
            }
            assert!(
                flat[n..].iter().all(|&b| b == MARK),
                "wrote past the count: {ctx}"
            );
            let tail = if peek || n == 0 {
                t0
            } else {
                ta.wrapping_add(n as u64)
            };
            assert_eq!(m.tail(), tail, "tail not moved by the count: {ctx}");
        }
    }
}

fn victim_push(m: &mut Mem, rng: &mut Rng, prog: &Progress, trace: bool) {
    let cap = m.cap;
    let total = rng.len_near(cap);
    let src = rng.data(total);
    let parts = rng.split(total);
    let use_cache = rng.coin();
    // push_whole: nothing unless min(total, atomic) bytes fit.
    let atomic = match rng.below(4) {
        0 => None,
        1 => Some(1),
        2 => Some(usize::MAX),
        _ => Some(rng.len_near(cap)),
    };
    let (h0, t0, c0) = (m.head(), m.tail(), m.tail_cache.load(Relaxed));
    let d0 = m.data().to_vec();
    let mut slices = Vec::new();
    let mut at = 0;
    for &n in &parts {
        slices.push(&src[at..at + n]);
        at += n;
    }
    let iov: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
    let p = m.data_ptr();
    let res = prog.op(|| {
        let r = ring(&m.ctrl, p, cap, use_cache.then_some(&m.tail_cache));
        let mut src = SrcCursor::new(&iov);
        match atomic {
            None => r.push(&mut src),
            Some(a) => r.push_whole(&mut src, a),
        }
    });
    let ctx = format!(
        "push cap {cap} head {h0:#x} tail {t0:#x} cache {c0:#x} src {parts:?} \
         cache {use_cache} atomic {atomic:?} -> {res:?}"
    );
    if trace {
        eprintln!("  victim {ctx}");
    }
    assert!(m.guards_intact(), "guard zone changed: {ctx}");
    assert_eq!(m.tail(), t0, "a push stored tail: {ctx}");
    let expect = fill(h0, t0, cap);
    match res {
        Err(Corrupt) => {
            assert!(expect.is_err(), "error on valid indices: {ctx}");
            assert_eq!(m.head(), h0, "head moved on error: {ctx}");
            assert!(m.data() == d0, "wrote on error: {ctx}");
        }
        Ok(n) => {
            assert!(n <= total && n <= cap, "count out of bounds: {ctx}");
            assert_eq!(
                m.head(),
                h0.wrapping_add(n as u64),
                "head not moved by the count: {ctx}"
            );
            if n > 0 {
                let a = atomic.unwrap_or(1);
                assert!(n >= total.min(a), "pushed part of an atomic write: {ctx}");
            }
            if !use_cache || c0 == t0 {
                let used = expect.unwrap_or_else(|_| panic!("no error on corrupt indices: {ctx}"));
                let want = (cap - used).min(total);
                let want = if want < total.min(atomic.unwrap_or(1)) {
                    0
                } else {
                    want
                };
                assert_eq!(n, want, "wrong count: {ctx}");
            }
            let mut want = d0;
            for (i, &b) in src[..n].iter().enumerate() {
                want[pos(h0, i, cap)] = b;
            }
            assert!(m.data() == want, "ring data is not the pushed bytes: {ctx}");
        }
    }
}

/// What the `push_with` callback does on one call.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Fail,
    All,
    /// Writes and reports fewer bytes than offered.
    Short(usize),
    /// Writes all it was offered but claims more.
    Claim(usize),
}

fn victim_push_with(m: &mut Mem, rng: &mut Rng, prog: &Progress, trace: bool) {
    let cap = m.cap;
    let max = if rng.one_in(4) {
        usize::MAX
    } else {
        rng.len_near(cap)
    };
    let use_cache = rng.coin();
    let (h0, t0) = (m.head(), m.tail());
    let d0 = m.data().to_vec();
    let p = m.data_ptr();
    let base = p.as_ptr() as usize;
    // (offset, offered, behaviour, bytes written)
    let mut calls: Vec<(usize, usize, Fill, Vec<u8>)> = Vec::new();
    let mut script = Rng::new(rng.next());
    let res = prog.op(|| {
        let r = ring(&m.ctrl, p, cap, use_cache.then_some(&m.tail_cache));
        r.push_with(max, |ptr: *mut u8, len: usize| {
            let off = (ptr as usize).wrapping_sub(base);
            assert!(
                len >= 1 && off < cap && len <= cap - off,
                "push_with offered {len} bytes at offset {off} of a {cap}-byte ring"
            );
            let f = match script.below(8) {
                0 => Fill::Fail,
                1 if len > 1 => Fill::Short(script.below(len as u64) as usize),
                2 => Fill::Claim(len + 1 + script.below(3) as usize),
                _ => Fill::All,
            };
            let (wrote, ret) = match f {
                Fill::Fail => (0, Err(7u8)),
                Fill::All => (len, Ok(len)),
                Fill::Short(k) => (k, Ok(k)),
                Fill::Claim(k) => (len, Ok(k)),
            };
            let bytes = script.data(wrote);
            // SAFETY: the ring offered `len` writable bytes at `ptr`
            // (checked against the data area above); wrote <= len.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, wrote) };
            calls.push((off, len, f, bytes));
            ret
        })
    });
    let ctx = format!(
        "push_with cap {cap} head {h0:#x} tail {t0:#x} max {max} cache {use_cache} \
         calls {:?} -> {res:?}",
        calls.iter().map(|c| (c.0, c.1, c.2)).collect::<Vec<_>>()
    );
    if trace {
        eprintln!("  victim {ctx}");
    }
    assert!(m.guards_intact(), "guard zone changed: {ctx}");
    assert_eq!(m.tail(), t0, "push_with stored tail: {ctx}");
    let res = match (fill(h0, t0, cap), res) {
        (Err(_), Err(Corrupt)) => {
            assert!(
                calls.is_empty() && m.head() == h0 && m.data() == d0,
                "{ctx}"
            );
            return;
        }
        (Ok(used), Ok(r)) => (used, r),
        _ => panic!("error iff corrupt violated: {ctx}"),
    };
    // Replay the calls against the contract.
    let (used, got) = res;
    let want = (cap - used).min(max);
    let mut done = 0;
    let mut data = d0;
    let mut expect = None;
    for (k, (off, len, f, bytes)) in calls.iter().enumerate() {
        assert!(
            expect.is_none() && done < want,
            "called again after the end: {ctx}"
        );
        assert_eq!(
            *off,
            pos(h0, done, cap),
            "call {k} at the wrong place: {ctx}"
        );
        assert_eq!(
            *len,
            (cap - off).min(want - done),
            "call {k} wrong length: {ctx}"
        );
        for (i, &b) in bytes.iter().enumerate() {
            data[off + i] = b;
        }
        match *f {
            Fill::Fail if done == 0 => expect = Some(Err(7)),
            Fill::Fail => expect = Some(Ok(done)),
            Fill::All | Fill::Claim(_) => done += len,
            Fill::Short(n) => {
                done += n;
                expect = Some(Ok(done));
            }
        }
    }
    let expect = expect.unwrap_or(Ok(done));
    assert_eq!(got, expect, "wrong result: {ctx}");
    let moved = match got {
        Ok(n) => n as u64,
        Err(_) => 0,
    };
    assert_eq!(
        m.head(),
        h0.wrapping_add(moved),
        "head not moved by the count: {ctx}"
    );
    assert!(
        m.data() == data,
        "ring data is not what the callback wrote: {ctx}"
    );
}

fn victim_levels(m: &mut Mem, prog: &Progress, trace: bool) {
    let cap = m.cap;
    let (h0, t0) = (m.head(), m.tail());
    let p = m.data_ptr();
    let (r, w) = prog.op(|| {
        let r = ring(&m.ctrl, p, cap, None);
        (r.readable(), r.writable())
    });
    if trace {
        eprintln!("  victim levels head {h0:#x} tail {t0:#x} -> {r:?} {w:?}");
    }
    let f = fill(h0, t0, cap);
    assert_eq!(r, f, "readable, head {h0:#x} tail {t0:#x} cap {cap}");
    assert_eq!(
        w,
        f.map(|n| cap - n),
        "writable, head {h0:#x} tail {t0:#x} cap {cap}"
    );
}

fn sequential(plan: &Plan, prog: &Progress) {
    for (i, mut rng) in plan.cases() {
        prog.case(i);
        let cap = pick_cap(&mut rng);
        let mut m = Mem::new(cap, &mut rng);
        // Start from a consistent state somewhere in index space.
        let base = rng.hostile(cap as u64, &[]);
        m.ctrl.tail.store(base, Relaxed);
        m.ctrl
            .head
            .store(base.wrapping_add(rng.below(cap as u64 + 1)), Relaxed);
        if plan.trace {
            eprintln!("case {i}: cap {cap} head {:#x} tail {base:#x}", m.head());
        }
        let steps = 1 + rng.below(if cfg!(miri) { 12 } else { 40 });
        for _ in 0..steps {
            match rng.below(10) {
                0..=3 => adversary(&mut m, &mut rng, plan.trace),
                4 | 5 => victim_pop(&mut m, &mut rng, prog, plan.trace),
                6 | 7 => victim_push(&mut m, &mut rng, prog, plan.trace),
                8 => victim_push_with(&mut m, &mut rng, prog, plan.trace),
                _ => victim_levels(&mut m, prog, plan.trace),
            }
        }
    }
}

/// Between (and interleaved with) every operation: arbitrary header words,
/// exact model of each result.
#[test]
fn hostile_header_between_operations() {
    let n = cases(400_000, 20_000, 60);
    fuzz_support::run(
        "fuzz_ring",
        "hostile_header_between_operations",
        n,
        sequential,
    );
}

/// A thread rewrites head and tail nonstop while the victim pushes and
/// pops: counts stay in bounds, nothing outside the data area changes,
/// every call returns.
fn race(plan: &Plan, prog: &Progress) {
    for (i, mut rng) in plan.cases() {
        prog.case(i);
        let cap = pick_cap(&mut rng);
        let mut m = Mem::new(cap, &mut rng);
        let stop = AtomicBool::new(false);
        let ops = if cfg!(miri) { 20 } else { 300 };
        let mut adv_rng = Rng::new(rng.next());
        let Mem {
            ctrl,
            buf,
            tail_cache,
            head_cache,
            ..
        } = &mut m;
        let ctrl = &*ctrl;
        std::thread::scope(|s| {
            // Stops the scribbler however the victim's loop ends (a failed
            // assertion included: the scope would wait for it forever).
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Relaxed);
                }
            }
            let _stop = Stop(&stop);
            s.spawn(|| {
                let cap = cap as u64;
                while !stop.load(Relaxed) {
                    let near = [ctrl.head.load(Relaxed), ctrl.tail.load(Relaxed)];
                    let v = adv_rng.hostile(cap, &near);
                    match adv_rng.below(3) {
                        0 => ctrl.head.store(v, Relaxed),
                        1 => ctrl.tail.store(v, Relaxed),
                        _ => {
                            ctrl.tail.store(v, Relaxed);
                            ctrl.head
                                .store(v.wrapping_add(adv_rng.below(cap + 1)), Relaxed);
                        }
                    }
                    if adv_rng.one_in(8) {
                        std::thread::yield_now();
                    }
                }
            });
            let p = NonNull::new(buf.as_mut_ptr().wrapping_add(GUARD)).unwrap();
            let base = p.as_ptr() as usize;
            for _ in 0..ops {
                let cache = match rng.below(3) {
                    0 => Some(&*tail_cache),
                    1 => Some(&*head_cache),
                    _ => None,
                };
                let r = ring(ctrl, p, cap, cache);
                match rng.below(4) {
                    0 => {
                        let len = rng.len_near(cap);
                        let src = rng.data(len);
                        let res = prog.op(|| r.push(&mut SrcCursor::new(&[IoSlice::new(&src)])));
                        if let Ok(n) = res {
                            assert!(n <= src.len() && n <= cap, "push {n} of {}", src.len());
                        }
                    }
                    1 => {
                        let mut b = vec![MARK; rng.len_near(cap)];
                        let max = rng.len_near(cap);
                        let peek = rng.coin();
                        let res = prog.op(|| {
                            let mut iov = [IoSliceMut::new(&mut b)];
                            r.pop_max(&mut DstCursor::new(&mut iov), max, peek)
                        });
                        if let Ok(n) = res {
                            assert!(n <= b.len() && n <= max && n <= cap, "pop {n}");
                            assert!(b[..n].iter().all(|&x| x != MARK), "not ring bytes");
                            assert!(b[n..].iter().all(|&x| x == MARK), "wrote past count");
                        }
                    }
                    2 => {
                        let max = rng.len_near(cap);
                        let res = prog.op(|| {
                            r.push_with(max, |ptr: *mut u8, len: usize| {
                                let off = (ptr as usize).wrapping_sub(base);
                                assert!(len >= 1 && off < cap && len <= cap - off);
                                // SAFETY: checked inside the data area.
                                unsafe { std::ptr::write_bytes(ptr, 0x5a, len) };
                                Ok::<_, ()>(len)
                            })
                        });
                        if let Ok(Ok(n)) = res {
                            assert!(n <= max && n <= cap);
                        }
                    }
                    _ => {
                        let (rd, wr) = prog.op(|| (r.readable(), r.writable()));
                        assert!(rd.is_ok_and(|n| n <= cap) || rd.is_err());
                        assert!(wr.is_ok_and(|n| n <= cap) || wr.is_err());
                    }
                }
            }
        });
        assert!(m.guards_intact(), "guard zone changed (cap {cap})");
    }
}

#[test]
fn hostile_race() {
    let n = cases(3_000, 300, 3);
    fuzz_support::run("fuzz_ring", "hostile_race", n, race);
}

/// Indices are counters a peer may set anywhere: within a ring's size of
/// u64::MAX they wrap, never overflow (a debug build, miri's included,
/// would abort on a plain `+`).
#[test]
fn indices_wrap_at_u64_max() {
    let mut rng = Rng::new(1);
    let mut m = Mem::new(16, &mut rng);
    m.ctrl.head.store(u64::MAX - 2, Relaxed);
    m.ctrl.tail.store(u64::MAX - 2, Relaxed);
    let p = m.data_ptr();
    let r = ring(&m.ctrl, p, 16, None);
    let src = [IoSlice::new(b"abcdefgh")];
    assert_eq!(r.push(&mut SrcCursor::new(&src)), Ok(8));
    assert_eq!(r.head(), 5);
    assert_eq!(r.readable(), Ok(8));
    let mut b = [0u8; 8];
    let got = r.pop(&mut DstCursor::new(&mut [IoSliceMut::new(&mut b)]), false);
    assert_eq!((got, &b), (Ok(8), b"abcdefgh"));
    assert_eq!(r.tail(), 5);
}
