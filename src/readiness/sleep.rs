//! The one wait of poll, select and epoll: look, spin on the rings, ask
//! for doorbells, look again, sleep in the kernel; until something is
//! ready or the deadline passes.

use crate::conn::spin::{Spun, spin_until};
use crate::os::time::Deadline;
use rustix::io::Errno;

/// A sleep is capped at this when a doorbell cannot reach us; each
/// further nap of one call doubles it, up to the maximum (a peer that does
/// not read for long costs a few wake-ups a second, not a spin).
const BELL_LESS_NAP_MS: i32 = 5;
const BELL_LESS_NAP_MAX_MS: i32 = 80;

/// What arming found.
pub(super) struct Armed {
    /// Some doorbell cannot reach us yet: the sleep must be bounded.
    pub capped: bool,
    /// Some armed ring is ready already.
    pub ready: bool,
}

/// One readiness call's view of its descriptors.
pub(super) trait Waiter {
    /// Sleeps in the kernel for up to `sleep_ms` (0: not at all; -1: no
    /// limit) until a descriptor may be ready, then looks at all of them;
    /// how many are ready (reported to the caller).
    fn look(&mut self, sleep_ms: i32) -> Result<usize, Errno>;
    /// The first look of a call that may sleep: the rings, and the kernel
    /// only if the caller would miss its events otherwise. How many are
    /// ready, and whether the kernel was asked.
    fn look_rings(&mut self) -> Result<(usize, bool), Errno> {
        Ok((self.look(0)?, true))
    }
    /// The kernel's view before a spin that the first look did not ask:
    /// a look without sleeping, which may skip the rings if the kernel
    /// has nothing (they were just looked at).
    fn look_kernel(&mut self) -> Result<usize, Errno> {
        self.look(0)
    }
    /// Whether a ring promises an event, from shared memory alone.
    fn ring_ready(&mut self) -> bool;
    /// Asks every ring for doorbells before a sleep, then looks at each
    /// ring it armed once more: an event that came before the request
    /// rings no doorbell.
    fn arm(&mut self) -> Armed;
    /// Right before a sleep: the armed descriptors stay armed.
    fn before_sleep(&mut self) {}
    /// How long to spin on the rings before arming (ns): the spin policy
    /// of the connection most likely to answer.
    fn spin_budget(&mut self) -> u64;
    /// How that spin ended.
    fn spun(&mut self, budget: u64, how: Spun);
}

/// Runs the wait until `deadline` (one look only if it has passed).
pub(super) fn wait(w: &mut impl Waiter, deadline: Deadline) -> Result<usize, Errno> {
    // The first look never sleeps.
    let mut t = 0;
    // Cleared when the rings promised an event the full look did not
    // confirm; then we stop trusting them and sleep.
    let mut trust = true;
    // One spin per call: after a sleep, the kernel woke us for a reason.
    let mut spun = false;
    let mut naps = 0;
    // A call that may sleep starts with `look_rings`: the waiter may look
    // at the rings only and ask the kernel (plain fds, doorbells) in the
    // sleep itself, saving a server that sleeps between requests a system
    // call per request. A spin, or a return without sleeping, asks the
    // kernel first.
    let mut first = !deadline.expired();
    loop {
        let (n, asked) = match std::mem::take(&mut first) {
            true => w.look_rings()?,
            false => (w.look(t)?, true),
        };
        if n > 0 {
            return Ok(n);
        }
        if deadline.expired() {
            if asked {
                return Ok(0);
            }
            continue;
        }
        if trust && !spun {
            spun = true;
            // Asked once: granting a policy's probe is part of the asking.
            let budget = w.spin_budget();
            if budget > 0 {
                // A plain fd ready now must not wait for a spin.
                if !asked {
                    let n = w.look_kernel()?;
                    if n > 0 {
                        return Ok(n);
                    }
                }
                let how = spin_until(budget, || w.ring_ready());
                w.spun(budget, how);
                if how == Spun::Caught || (how == Spun::Preempted && w.ring_ready()) {
                    t = 0;
                    trust = false;
                    continue;
                }
            }
        }
        let armed = w.arm();
        if trust && armed.ready {
            t = 0;
            trust = false;
            continue;
        }
        trust = true;
        t = deadline.remaining_ms();
        if t == 0 {
            return Ok(0);
        }
        // Ready rings that a look did not confirm: no doorbell will come
        // for them, so the sleep is bounded too.
        if armed.capped || armed.ready {
            t = bell_less_nap(t, &mut naps);
        }
        w.before_sleep();
    }
}

/// `timeout` (ms, -1 for none) capped for the `n`th bell-less nap.
fn bell_less_nap(timeout: i32, n: &mut u32) -> i32 {
    let cap = (BELL_LESS_NAP_MS << (*n).min(4)).min(BELL_LESS_NAP_MAX_MS);
    *n += 1;
    if timeout < 0 { cap } else { timeout.min(cap) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait over nothing that ever becomes ready, counting the calls.
    #[derive(Default)]
    struct Idle {
        budgets: u32,
        spins: u32,
        kernel_looks: u32,
    }

    impl Waiter for Idle {
        fn look(&mut self, _sleep_ms: i32) -> Result<usize, Errno> {
            self.kernel_looks += 1;
            Ok(0)
        }
        fn look_rings(&mut self) -> Result<(usize, bool), Errno> {
            Ok((0, false))
        }
        fn ring_ready(&mut self) -> bool {
            false
        }
        fn arm(&mut self) -> Armed {
            Armed {
                capped: false,
                ready: false,
            }
        }
        fn spin_budget(&mut self) -> u64 {
            self.budgets += 1;
            1000
        }
        fn spun(&mut self, _budget: u64, _how: Spun) {
            self.spins += 1;
        }
    }

    /// The budget is asked once per call and the spin it grants is
    /// learned from: a policy's probe is granted by the asking itself, so
    /// asking twice lost every probe (spinning never came back).
    #[test]
    fn one_budget_one_spin_per_call() {
        let mut w = Idle::default();
        assert_eq!(wait(&mut w, Deadline::after_ms(3)).unwrap(), 0);
        assert_eq!((w.budgets, w.spins), (1, 1));
        // The kernel was asked before the spin (a ready plain fd must not
        // wait for it) and in the sleeps after it.
        assert!(w.kernel_looks >= 2, "{} kernel looks", w.kernel_looks);
    }
}
