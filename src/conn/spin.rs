//! Whether to spin before a sleep, per connection (docs/DESIGN.md,
//! "Waiting").
//!
//! A spin pays only when a CPU is free to run the peer and the peer
//! answers within it. Each connection measures both:
//! - a spin that catches the event doubles its budget, one that ends in a
//!   sleep anyway halves it, down to zero; a connection at zero spins
//!   again every [`PROBE_EVERY`]th wait, to notice when the peer answers
//!   quickly again, and half as often after each probe that misses (a
//!   peer that shares our CPU can never answer a spin, and each probe
//!   costs it the whole cap);
//! - a spin that was preempted (the scheduler ran something else on our
//!   CPU: a gap in our own timeline) means the machine has more work than
//!   CPUs. A spinning task that is preempted waits out a time slice with
//!   the event already there, where a sleeper would be woken at once: no
//!   spinning on this connection for a while, doubling while it lasts.
//!
//! `TSSS_SPIN_US` caps the budget (0: never spin).

use crate::config;
use crate::os::time::now_ns;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// A gap this long between two looks of one spin means we were not
/// running: preempted (a yield that let another task run counts too).
const PREEMPTED_NS: u64 = 200_000;
/// The first pause after a preempted spin; doubles up to the maximum.
const CALM_MIN_NS: u64 = 1_000_000;
const CALM_MAX_NS: u64 = 1_000_000_000;
/// Unpreempted spins for this many pauses halve the pause.
const CALM_FORGET: u64 = 8;
/// At a zero budget, one wait in this many spins (a probe); each probe
/// that misses doubles it, up to the maximum.
const PROBE_EVERY: u32 = 32;
const PROBE_EVERY_MAX: u32 = 1024;

/// How a spin ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spun {
    Caught,
    Missed,
    Preempted,
}

/// One connection's spin state (process-local).
#[derive(Debug)]
pub struct SpinPolicy {
    /// Current budget in ns (capped by `TSSS_SPIN_US` when read).
    budget: AtomicU64,
    /// No spin before this time (ns, monotonic): after a preemption.
    calm_until: AtomicU64,
    /// The current pause (doubles while spins keep being preempted).
    calm: AtomicU64,
    /// Waits at a zero budget since the last probe.
    waits: AtomicU32,
    /// The current probe interval (waits).
    probe_every: AtomicU32,
}

impl Default for SpinPolicy {
    fn default() -> Self {
        SpinPolicy {
            budget: AtomicU64::new(u64::MAX),
            calm_until: AtomicU64::new(0),
            calm: AtomicU64::new(0),
            waits: AtomicU32::new(0),
            probe_every: AtomicU32::new(PROBE_EVERY),
        }
    }
}

impl SpinPolicy {
    /// How long the next wait may spin (ns; 0: sleep at once).
    pub fn budget(&self) -> u64 {
        let cap = config::spin_ns();
        if cap == 0 {
            return 0;
        }
        let until = self.calm_until.load(Relaxed);
        if until != 0 && now_ns() < until {
            return 0;
        }
        let b = self.budget.load(Relaxed).min(cap);
        if b > 0 {
            return b;
        }
        // A probe spins the whole cap: a peer that sleeps too answers only
        // after its own wake-up, and a shorter probe could never see it.
        let w = self.waits.fetch_add(1, Relaxed) + 1;
        if w < self.probe_every.load(Relaxed) {
            return 0;
        }
        self.waits.store(0, Relaxed);
        cap
    }

    /// Learns from a spin of `budget` ns that ended so.
    pub fn learn(&self, budget: u64, how: Spun) {
        let cap = config::spin_ns();
        match how {
            Spun::Caught => {
                self.budget
                    .store(budget.saturating_mul(2).clamp(1000, cap.max(1000)), Relaxed);
                self.probe_every.store(PROBE_EVERY, Relaxed);
                self.forget_preemption();
            }
            Spun::Missed => {
                let b = self.budget.load(Relaxed).min(cap);
                if b == 0 {
                    // A probe.
                    let every = self.probe_every.load(Relaxed);
                    self.probe_every
                        .store((every * 2).min(PROBE_EVERY_MAX), Relaxed);
                }
                // Below 1 µs a spin catches nothing: stop, and probe.
                self.budget
                    .store(if b / 2 < 1000 { 0 } else { b / 2 }, Relaxed);
                self.forget_preemption();
            }
            Spun::Preempted => {
                let calm = (self.calm.load(Relaxed) * 2).clamp(CALM_MIN_NS, CALM_MAX_NS);
                self.calm.store(calm, Relaxed);
                self.calm_until.store(now_ns() + calm, Relaxed);
            }
        }
    }

    /// The pause after a preemption shrinks only once spins have gone
    /// unpreempted for several pauses: on a loaded machine, spins that
    /// catch between preemptions must not bring spinning back at once.
    fn forget_preemption(&self) {
        let calm = self.calm.load(Relaxed);
        if calm > 0 && now_ns() > self.calm_until.load(Relaxed) + CALM_FORGET * calm {
            self.calm.store(calm / 2, Relaxed);
            self.calm_until.store(now_ns(), Relaxed);
        }
    }

    /// Spins until `ready`, within the budget; learns from the outcome.
    /// True if it became ready.
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        let budget = self.budget();
        if budget == 0 {
            return false;
        }
        let how = spin_until(budget, &mut ready);
        self.learn(budget, how);
        how == Spun::Caught || (how == Spun::Preempted && ready())
    }
}

/// Spins until `ready`, for at most `budget` ns, or until preempted (the
/// caller looks again then).
pub fn spin_until(budget: u64, mut ready: impl FnMut() -> bool) -> Spun {
    let start = now_ns();
    let mut last = start;
    loop {
        // No sched_yield: on a CPU shared with a CPU-bound task, a yield
        // gives it a whole time slice (milliseconds), with our event
        // waiting. A peer that needs our CPU is served by the budget
        // falling to zero instead.
        for _ in 0..16 {
            if ready() {
                return Spun::Caught;
            }
            std::hint::spin_loop();
        }
        let now = now_ns();
        // Even if the event came meanwhile: it waited for us to run.
        if now - last >= PREEMPTED_NS {
            return Spun::Preempted;
        }
        if now - start >= budget {
            return Spun::Missed;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_stop_spinning_and_a_catch_starts_again() {
        let p = SpinPolicy::default();
        let cap = config::spin_ns();
        assert!(cap > 0, "default TSSS_SPIN_US spins");
        assert_eq!(p.budget(), cap);
        while p.budget.load(Relaxed) > 0 {
            p.learn(p.budget(), Spun::Missed);
        }
        // Zero now, but a probe comes every PROBE_EVERY waits.
        let probes = |n: u32| (0..n).filter(|_| p.budget() > 0).count();
        assert_eq!(probes(PROBE_EVERY), 1);
        p.learn(cap, Spun::Caught);
        assert_eq!(p.budget(), cap);
    }

    #[test]
    fn probes_that_miss_come_ever_more_rarely() {
        let p = SpinPolicy::default();
        let cap = config::spin_ns();
        while p.budget.load(Relaxed) > 0 {
            p.learn(p.budget(), Spun::Missed);
        }
        let mut gaps = Vec::new();
        for _ in 0..7 {
            let mut n = 1;
            while p.budget() == 0 {
                n += 1;
            }
            gaps.push(n);
            p.learn(cap, Spun::Missed);
        }
        assert_eq!(gaps, [32, 64, 128, 256, 512, 1024, 1024]);
        // One that catches spins again at once, and probes as often as
        // at first once it misses down to zero.
        p.learn(cap, Spun::Caught);
        assert!(p.budget() > 0);
        while p.budget.load(Relaxed) > 0 {
            p.learn(p.budget(), Spun::Missed);
        }
        assert_eq!((0..PROBE_EVERY).filter(|_| p.budget() > 0).count(), 1);
    }

    #[test]
    fn preemption_calms_spinning_for_a_while() {
        let p = SpinPolicy::default();
        p.learn(p.budget(), Spun::Preempted);
        assert_eq!(p.budget(), 0);
        assert!(p.calm.load(Relaxed) >= CALM_MIN_NS);
        p.learn(0, Spun::Preempted);
        assert!(p.calm.load(Relaxed) >= 2 * CALM_MIN_NS);
    }

    #[test]
    fn spin_catches_and_misses() {
        assert_eq!(spin_until(1_000_000, || true), Spun::Caught);
        let r = spin_until(20_000, || false);
        assert!(matches!(r, Spun::Missed | Spun::Preempted));
    }
}
