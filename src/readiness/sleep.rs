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

/// What a look asks of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Nothing: ring state only (a waiter may ask anyway when some of its
    /// descriptors have no ring). A call's first look when it will not
    /// spin: the sleep that follows asks the kernel, and returns at once
    /// if a descriptor is ready, so a zero-timeout call first would be a
    /// system call per wait for nothing.
    Rings,
    /// Its view, after sleeping up to this many ms (0: not at all; -1: no
    /// limit) until a descriptor may be ready.
    Kernel(i32),
}

/// One readiness call's view of its descriptors.
pub(super) trait Waiter {
    /// Looks at all descriptors (asking the kernel as `how` says); how
    /// many are ready (reported to the caller).
    fn look(&mut self, how: Look) -> Result<usize, Errno>;
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
    // The first look never sleeps; it skips the kernel unless the call
    // has no time to wait (then it is the only look).
    let mut how = if deadline.expired() {
        Look::Kernel(0)
    } else {
        Look::Rings
    };
    // Cleared when the rings promised an event the full look did not
    // confirm; then we stop trusting them and sleep.
    let mut trust = true;
    // One spin per call: after a sleep, the kernel woke us for a reason.
    let mut spun = false;
    let mut naps = 0;
    loop {
        let n = w.look(how)?;
        if n > 0 {
            return Ok(n);
        }
        if deadline.expired() {
            // Every call that returns has asked the kernel once.
            return if how == Look::Rings {
                w.look(Look::Kernel(0))
            } else {
                Ok(0)
            };
        }
        if trust && !spun {
            spun = true;
            let budget = w.spin_budget();
            if budget > 0 {
                // A spin must not hold back what the kernel has ready.
                if how == Look::Rings {
                    how = Look::Kernel(0);
                    let n = w.look(how)?;
                    if n > 0 {
                        return Ok(n);
                    }
                }
                let how_spun = spin_until(budget, || w.ring_ready());
                w.spun(budget, how_spun);
                if how_spun == Spun::Caught || (how_spun == Spun::Preempted && w.ring_ready()) {
                    how = Look::Kernel(0);
                    trust = false;
                    continue;
                }
            }
        }
        let armed = w.arm();
        if trust && armed.ready {
            how = Look::Kernel(0);
            trust = false;
            continue;
        }
        trust = true;
        let mut t = deadline.remaining_ms();
        if t == 0 {
            return if how == Look::Rings {
                w.look(Look::Kernel(0))
            } else {
                Ok(0)
            };
        }
        // Ready rings that a look did not confirm: no doorbell will come
        // for them, so the sleep is bounded too.
        if armed.capped || armed.ready {
            t = bell_less_nap(t, &mut naps);
        }
        w.before_sleep();
        how = Look::Kernel(t);
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

    /// A waiter that records its looks; ready at the `ready_at`th look.
    struct Script {
        looks: Vec<Look>,
        ready_at: usize,
        budget: u64,
    }

    impl Waiter for Script {
        fn look(&mut self, how: Look) -> Result<usize, Errno> {
            self.looks.push(how);
            Ok(usize::from(self.looks.len() == self.ready_at))
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
            self.budget
        }
        fn spun(&mut self, _: u64, _: Spun) {}
    }

    fn run(deadline: Deadline, ready_at: usize, budget: u64) -> Vec<Look> {
        let mut w = Script {
            looks: Vec::new(),
            ready_at,
            budget,
        };
        let _ = wait(&mut w, deadline);
        w.looks
    }

    #[test]
    fn a_wait_that_will_sleep_asks_the_kernel_only_in_the_sleep() {
        assert_eq!(run(Deadline::NEVER, 2, 0), [Look::Rings, Look::Kernel(-1)]);
    }

    #[test]
    fn a_wait_that_spins_asks_the_kernel_before_the_spin() {
        assert_eq!(
            run(Deadline::NEVER, 3, 1000),
            [Look::Rings, Look::Kernel(0), Look::Kernel(-1)]
        );
        // Something the kernel had ready ends the call before the spin.
        assert_eq!(
            run(Deadline::NEVER, 2, 1000),
            [Look::Rings, Look::Kernel(0)]
        );
    }

    #[test]
    fn every_call_asks_the_kernel_once() {
        assert_eq!(run(Deadline::after_ms(0), 0, 0), [Look::Kernel(0)]);
        // A deadline that passes before the sleep.
        let looks = run(Deadline::after_ns(1), 0, 0);
        assert!(looks.contains(&Look::Kernel(0)), "{looks:?}");
    }
}
