//! Random differential test: `test-apps/seqfuzz` (see the comment at its top)
//! makes a fresh connection per sequence and runs a random sequence of socket
//! operations on its two ends (write/send/writev/sendmsg, read/recv/readv/
//! recvmsg with PEEK/DONTWAIT/WAITALL, fill to EAGAIN, drain, O_NONBLOCK,
//! poll/select/epoll with timeout 0 in LT/ET/ONESHOT, FIONREAD, SIOCOUTQ,
//! SO_ERROR, shutdown, close, exit and SIGKILL of one end), strictly
//! sequenced, one transcript line per operation. Results that legitimately
//! depend on buffer sizes are normalized by seqfuzz itself; everything else
//! must be identical with and without tsss (both ends preloaded).
//!
//! The seed is fixed, so the test is reproducible; `TSSS_TEST_SEED=<n>` runs
//! another one (decimal or 0x-hex). A failure names the seed and the
//! sequences; to reproduce one (from the repository root):
//!
//! ```sh
//! test-apps/bin/seqfuzz run SEED SEQ 1                                    # plain
//! LD_PRELOAD=$PWD/target/release/libtsss.so test-apps/bin/seqfuzz run SEED SEQ 1
//! test-apps/bin/seqfuzz print SEED SEQ > ops.txt   # the operations, as a script
//! test-apps/bin/seqfuzz script ops.txt             # run an edited (shortened) script
//! ```
//!
//! Not every sequence matches: about 3% still differ, all after a SIGKILL
//! (README, "Guarantees and limits": a write to a killed peer succeeds
//! until tsss notices, and a reset after it is reported as late). The test
//! therefore fails on any wrong or lost byte and any hang, always, and on
//! more diverging sequences than the measured budget `KNOWN_DIVERGING`,
//! printing them by first differing operation; the budget goes down as
//! classes are fixed.
//!
//! Before comparing, the test checks that the harness is sound on the plain
//! kernel: no self-check failure in the plain transcripts, and the same
//! transcripts when a part of them is run a second time (so the comparison
//! cannot be flaky); and that the tsss runs really were accelerated.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DEFAULT_SEED: u64 = 20_261_123;
/// Sequences per run (about 30 operations each).
const SEQUENCES: u64 = 4000;
/// Processes per run: the sequences are split between them.
const BATCHES: u64 = 4;
/// The first this many sequences run plain a second time.
const REPEATED: u64 = 600;
/// seqfuzz's per-sequence time limit (a plain sequence takes milliseconds).
const SEQ_TIMEOUT_S: &str = "4";
/// Divergent sequences whose diff is shown in a failure.
const SHOWN: usize = 4;

fn seed() -> u64 {
    match std::env::var("TSSS_TEST_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            let s = s.trim();
            let v = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            v.unwrap_or_else(|_| panic!("TSSS_TEST_SEED={s:?} is not a number"))
        }
        _ => DEFAULT_SEED,
    }
}

/// A transcript split into its sequences: number -> header and lines.
fn sequences(t: &str) -> BTreeMap<u64, String> {
    let mut m = BTreeMap::new();
    let mut cur: Option<(u64, String)> = None;
    for l in t.lines() {
        if let Some(h) = l.strip_prefix("== ") {
            if let Some((k, v)) = cur.take() {
                m.insert(k, v);
            }
            // "== seed S seq N (K ops) =="
            let n = h
                .split_whitespace()
                .nth(3)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("bad sequence header {l:?}"));
            cur = Some((n, format!("{l}\n")));
        } else if let Some((_, v)) = cur.as_mut() {
            v.push_str(l);
            v.push('\n');
        }
    }
    if let Some((k, v)) = cur {
        m.insert(k, v);
    }
    m
}

fn batch(name: &str, first: u64, count: u64, preload: bool, seed: u64, tmp: &str) -> Spec {
    Spec::app(
        name,
        "seqfuzz",
        &[
            "run",
            &seed.to_string(),
            &first.to_string(),
            &count.to_string(),
        ],
    )
    .preload(preload)
    .env("TMPDIR", tmp)
    .env("SEQFUZZ_TIMEOUT", SEQ_TIMEOUT_S)
    // one line per connection (the debug level would log each negotiation step)
    .env("TSSS_LOG", "info")
}

/// Every sequence of the runs `ps`, which must have exited.
fn collect_run(ps: &[Proc]) -> BTreeMap<u64, String> {
    let mut all = BTreeMap::new();
    for p in ps {
        all.extend(sequences(&p.stdout()));
    }
    all
}

/// Sequences of the default seed that still differ from the kernel (of
/// SEQUENCES), measured when this budget was set; see README, "Guarantees
/// and limits", for the classes. Lower it as they are fixed.
const KNOWN_DIVERGING: u64 = 130; // 121 measured (2026-12-07), the same in 8 runs

/// What tsss must never show, divergence budget or not: a byte that differs
/// from the stream, a byte lost, a hang.
const HARD: &[&str] = &[" BAD@", " left=", "BAD-DATA", "TIMEOUT"];

/// Diverging sequences counted by the first operation whose line differs
/// (its side and name, e.g. "C write").
fn divergence_summary(
    pl: &BTreeMap<u64, String>,
    ts: &BTreeMap<u64, String>,
    diverging: &[u64],
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in diverging {
        let empty = String::new();
        let t = ts.get(n).unwrap_or(&empty);
        let first = pl[n]
            .lines()
            .zip(t.lines().chain(std::iter::repeat("")))
            .find(|(a, b)| a != b)
            .map(|(a, _)| {
                let w: Vec<&str> = a.split_whitespace().collect();
                w.get(1..3).map(|x| x.join(" ")).unwrap_or_default()
            })
            .unwrap_or_else(|| "(length)".into());
        *m.entry(first).or_insert(0) += 1;
    }
    m
}

/// Lines by which seqfuzz reports that its own assumptions about the
/// kernel failed (or that a sequence did not run to its end).
const SELF_CHECKS: &[&str] = &[
    "MODEL!",
    " BAD@",
    " left=",
    "BAD-DATA",
    "TIMEOUT",
    " FAIL ",
    "process ended",
];

#[test]
fn random_sequences_match_the_kernel() {
    let seed = seed();
    let t0 = Instant::now();
    let d = TempDir::new("seqfuzz");
    let tmp = d.0.to_string_lossy().into_owned();
    let per = SEQUENCES.div_ceil(BATCHES);
    let mut plain = Vec::new();
    let mut tsss = Vec::new();
    // All runs are independent and mostly wait on each other's barriers:
    // run them side by side.
    for b in 0..BATCHES {
        let (first, count) = (b * per, per.min(SEQUENCES - b * per));
        plain.push(Proc::spawn(&batch(
            &format!("seqfuzz plain {b}"),
            first,
            count,
            false,
            seed,
            &tmp,
        )));
        tsss.push(Proc::spawn(&batch(
            &format!("seqfuzz tsss {b}"),
            first,
            count,
            true,
            seed,
            &tmp,
        )));
    }
    let mut again = vec![Proc::spawn(&batch(
        "seqfuzz plain, repeated",
        0,
        REPEATED,
        false,
        seed,
        &tmp,
    ))];
    {
        let mut all: Vec<&mut Proc> = plain
            .iter_mut()
            .chain(tsss.iter_mut())
            .chain(again.iter_mut())
            .collect();
        wait_all(&mut all, Duration::from_secs(150), "seqfuzz");
    }

    // 1. The harness is sound on the plain kernel.
    for p in plain.iter().chain(again.iter()) {
        let out = p.stdout();
        let bad: Vec<&str> = out
            .lines()
            .filter(|l| SELF_CHECKS.iter().any(|c| l.contains(c)))
            .take(10)
            .collect();
        assert!(
            p.success() && bad.is_empty(),
            "seed {seed}: the plain run failed its own checks, seqfuzz is broken \
             (not tsss): {bad:#?}\n{}",
            p.report()
        );
    }
    let pl = collect_run(&plain);
    assert_eq!(pl.len() as u64, SEQUENCES, "seed {seed}: plain sequences");
    for (n, t) in collect_run(&again) {
        assert!(
            pl[&n] == t,
            "seed {seed} sequence {n}: the plain kernel gave two different transcripts, \
             so seqfuzz logs something timing-dependent:\n{}",
            line_diff(&pl[&n], &t, "plain, first run", "plain, second run")
        );
    }

    // 2. The tsss runs were accelerated (else the comparison means nothing).
    let err: String = tsss.iter().map(|p| p.stderr()).collect();
    let (acc_c, acc_s) = (
        count(&err, "accelerated (client"),
        count(&err, "accelerated (server"),
    );
    assert!(
        acc_c as u64 >= SEQUENCES / 2 && acc_s as u64 >= SEQUENCES / 2,
        "seed {seed}: only {acc_c} client / {acc_s} server ends of {SEQUENCES} \
         connections were accelerated\n{}",
        tail(&err, 40)
    );

    // 3. No segment outlives its processes (all have exited).
    let tr: Vec<&Proc> = tsss.iter().collect();
    assert!(!assert_segments_gone(&tr).is_empty());

    // 4. The comparison.
    let ts = collect_run(&tsss);
    let diverging: Vec<u64> = pl
        .iter()
        .filter(|(n, t)| ts.get(*n) != Some(*t))
        .map(|(n, _)| *n)
        .collect();
    let ops = pl
        .values()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with("== "))
        .count();
    eprintln!(
        "seqfuzz: seed {seed}: {SEQUENCES} sequences, {ops} operations, \
         {acc_c} connections accelerated, {} diverging, {:.1?}",
        diverging.len(),
        t0.elapsed()
    );
    // 5. Never wrong or lost bytes, never a hang, whatever else differs.
    for (n, t) in &ts {
        let bad: Vec<&str> = t
            .lines()
            .filter(|l| HARD.iter().any(|c| l.contains(c)))
            .collect();
        assert!(
            bad.is_empty(),
            "seed {seed} sequence {n}: tsss corrupted, lost or hung: {bad:?}\n{}",
            line_diff(&pl[n], t, "plain", "LD_PRELOAD=libtsss.so")
        );
    }
    // Known divergences (README, "Guarantees and limits") are allowed up to
    // the number measured for the default seed; any new one beyond that
    // fails, and the aim is to bring the budget down to zero.
    let by_op = divergence_summary(&pl, &ts, &diverging);
    eprintln!("seqfuzz: diverging sequences by first differing operation: {by_op:?}");
    let budget = if seed == DEFAULT_SEED {
        KNOWN_DIVERGING
    } else {
        // Another seed: the same rate, with room for chance.
        KNOWN_DIVERGING * 3 / 2
    };
    if diverging.len() as u64 > budget {
        let mut msg = format!(
            "seed {seed}: {} of {SEQUENCES} sequences differ under LD_PRELOAD=libtsss.so \
             (known: at most {budget}); by first differing operation: {by_op:?}; \
             diverging sequences (first 40): {:?}\n",
            diverging.len(),
            &diverging[..diverging.len().min(40)]
        );
        for n in diverging.iter().take(SHOWN) {
            let empty = String::new();
            msg.push_str(&format!(
                "\n=== seed {seed} sequence {n} (reproduce: seqfuzz run {seed} {n} 1, \
                 operations: seqfuzz print {seed} {n}):\n{}",
                line_diff(
                    &pl[n],
                    ts.get(n).unwrap_or(&empty),
                    "plain",
                    "LD_PRELOAD=libtsss.so"
                )
            ));
        }
        panic!("{msg}");
    }
    for p in &tsss {
        assert!(
            p.success(),
            "seed {seed}: the tsss run failed\n{}",
            p.report()
        );
    }
}
