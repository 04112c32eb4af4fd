//! Shared by the fuzz test files (`fuzz_ring.rs`, `fuzz_header.rs`): a
//! seeded generator, case counts and seeds from the environment, hostile
//! values, and a watchdog that turns a hang into a failure naming the case.
//!
//! Environment (all optional):
//! - `TSSS_FUZZ_SEED`: base seed, decimal or `0x` hex (default fixed, so a
//!   run is reproducible);
//! - `TSSS_FUZZ_SCALE`: multiplies every test's case count (`0.1`, `10`);
//! - `TSSS_FUZZ_CASE`: run only this case (as named by a failure);
//! - `TSSS_FUZZ_TRACE`: print each operation of the cases run.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Never a data byte anywhere in the fuzz tests: untouched destination
/// bytes and guard zones hold it, so finding it in delivered data (or
/// anything else in a guard zone) means a read or write went astray.
pub const MARK: u8 = 0xEE;

/// A hung operation fails the test after this long.
pub const HANG_LIMIT: Duration = Duration::from_secs(20);

const DEFAULT_SEED: u64 = 0x7555_f022_d15e_a5e5;

/// SplitMix64: tiny, fast, and good enough to drive a fuzzer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..=n`.
    pub fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64 + 1) as usize
    }

    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// A data byte: anything but [`MARK`].
    pub fn data_byte(&mut self) -> u8 {
        match self.next() as u8 {
            MARK => 0,
            b => b,
        }
    }

    pub fn data(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.data_byte()).collect()
    }

    /// A buffer length around the interesting sizes of a ring of `cap`.
    pub fn len_near(&mut self, cap: usize) -> usize {
        match self.below(10) {
            0 => 0,
            1 => 1,
            2 => cap.saturating_sub(1),
            3 => cap,
            4 => cap + 1,
            5 => 2 * cap + self.upto(3),
            6 | 7 => self.upto(8),
            _ => self.upto(2 * cap + 2),
        }
    }

    /// Splits `total` into 1 to 4 pieces (empty ones included), as iovecs.
    pub fn split(&mut self, total: usize) -> Vec<usize> {
        let k = 1 + self.below(4) as usize;
        let mut cuts: Vec<usize> = (0..k - 1).map(|_| self.upto(total)).collect();
        cuts.sort_unstable();
        let mut out = Vec::with_capacity(k);
        let mut prev = 0;
        for c in cuts {
            out.push(c - prev);
            prev = c;
        }
        out.push(total - prev);
        out
    }

    /// What a hostile or buggy peer may store in a shared 64-bit word of a
    /// ring of `cap` bytes: boundary values, values near `near` (the
    /// victim's own indices), huge and random ones.
    pub fn hostile(&mut self, cap: u64, near: &[u64]) -> u64 {
        match self.below(16) {
            0 => 0,
            1 => 1,
            2 => cap - 1,
            3 => cap,
            4 => cap + 1,
            5 => u64::MAX - self.below(3),
            6..=9 if !near.is_empty() => {
                let base = self.pick(near);
                let d = match self.below(8) {
                    0 => 0,
                    1 => 1,
                    2 => cap - 1,
                    3 => cap,
                    4 => cap + 1,
                    5 => 2 * cap,
                    _ => self.below(2 * cap + 2),
                };
                if self.coin() {
                    base.wrapping_add(d)
                } else {
                    base.wrapping_sub(d)
                }
            }
            10 => 1 << 63 | self.below(2 * cap + 2),
            11 => 1u64 << self.below(64),
            12 => self.next(),
            13 => u64::from(u32::MAX) + self.below(3) - 1,
            _ => self.below(4 * cap + 4),
        }
    }
}

/// How many cases to run, from which seed.
pub struct Plan {
    pub test: &'static str,
    pub seed: u64,
    pub cases: u64,
    pub only: Option<u64>,
    pub trace: bool,
}

impl Plan {
    fn from_env(test: &'static str, default_cases: u64) -> Plan {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |v: String| {
            let v = v.trim().replace('_', "");
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        };
        let seed = var("TSSS_FUZZ_SEED").and_then(num).unwrap_or(DEFAULT_SEED);
        let scale = var("TSSS_FUZZ_SCALE")
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0);
        Plan {
            test,
            seed,
            cases: ((default_cases as f64 * scale) as u64).max(1),
            only: var("TSSS_FUZZ_CASE").and_then(num),
            trace: var("TSSS_FUZZ_TRACE").is_some(),
        }
    }

    /// The cases to run, each with its own generator.
    pub fn cases(&self) -> impl Iterator<Item = (u64, Rng)> + '_ {
        let salt = self.test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let range = match self.only {
            Some(c) => c..c + 1,
            None => 0..self.cases,
        };
        let base = Rng::new(self.seed ^ salt).next();
        range.map(move |i| {
            let s = Rng::new(base ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03)).next();
            (i, Rng::new(s))
        })
    }
}

/// What the worker is doing, for the watchdog and for failure messages.
pub struct Progress {
    start: Instant,
    pub case: AtomicU64,
    pub ops: AtomicU64,
    /// Milliseconds since `start` when the current operation began;
    /// `u64::MAX` between operations.
    op_since: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            case: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            op_since: AtomicU64::new(u64::MAX),
        }
    }

    pub fn case(&self, i: u64) {
        self.case.store(i, Relaxed);
    }

    /// Brackets one operation of the code under test.
    pub fn op<T>(&self, f: impl FnOnce() -> T) -> T {
        self.op_since
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
        let r = f();
        self.op_since.store(u64::MAX, Relaxed);
        self.ops.fetch_add(1, Relaxed);
        r
    }

    fn stuck_for(&self) -> Option<Duration> {
        let s = self.op_since.load(Relaxed);
        (s != u64::MAX).then(|| {
            Duration::from_millis((self.start.elapsed().as_millis() as u64).saturating_sub(s))
        })
    }
}

/// Runs `body` on a worker thread and watches it: a panic or an operation
/// that does not return within [`HANG_LIMIT`] fails the test with the
/// case that did it and how to replay it.
pub fn run<F>(file: &'static str, test: &'static str, default_cases: u64, body: F)
where
    F: FnOnce(&Plan, &Progress) + Send + 'static,
{
    let plan = Plan::from_env(test, default_cases);
    let (seed, cases) = (plan.seed, plan.cases);
    let replay = |case: u64| {
        format!(
            "replay: TSSS_FUZZ_SEED={seed:#x} TSSS_FUZZ_CASE={case} TSSS_FUZZ_TRACE=1 \
             cargo test --release --test {file} -- --exact {test} --nocapture"
        )
    };
    let prog = Arc::new(Progress::new());
    if cfg!(miri) {
        // Miri's clock is virtual: no watchdog, just run.
        body(&plan, &prog);
    } else {
        let p = prog.clone();
        let worker = std::thread::Builder::new()
            .name(test.into())
            .spawn(move || body(&plan, &p))
            .unwrap();
        loop {
            if worker.is_finished() {
                if let Err(e) = worker.join() {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let case = prog.case.load(Relaxed);
                    panic!("{test}: case {case} failed: {msg}\n{}", replay(case));
                }
                break;
            }
            if let Some(d) = prog.stuck_for().filter(|d| *d > HANG_LIMIT) {
                let case = prog.case.load(Relaxed);
                panic!(
                    "{test}: case {case}: an operation has not returned for {d:?} \
                     (hang or endless loop)\n{}",
                    replay(case)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "{test}: {cases} cases, {} operations, seed {seed:#x}, {:.1?}",
        prog.ops.load(Relaxed),
        prog.start.elapsed()
    );
}
