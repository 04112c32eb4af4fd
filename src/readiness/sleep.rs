//! The one wait of poll, select and epoll: look, spin on the rings, ask
//! for doorbells, look again, sleep in the kernel; until something is
//! ready or the deadline passes.

use crate::config;
use crate::os::time::{Deadline, now_ns};
use rustix::io::Errno;

/// A sleep is capped at this when a doorbell cannot reach us; each
/// further nap of one call doubles it, up to the maximum (a peer that does
/// not read for long costs a few wake-ups a second, not a spin).
const BELL_LESS_NAP_MS: i32 = 5;
const BELL_LESS_NAP_MAX_MS: i32 = 80;

/// One readiness call's view of its descriptors.
pub(super) trait Waiter {
    /// Sleeps in the kernel for up to `sleep_ms` (0: not at all; -1: no
    /// limit) until a descriptor may be ready, then looks at all of them;
    /// how many are ready (reported to the caller).
    fn look(&mut self, sleep_ms: i32) -> Result<usize, Errno>;
    /// Whether a ring promises an event, from shared memory alone.
    fn ring_ready(&mut self) -> bool;
    /// Asks every ring for doorbells before a sleep; true if some doorbell
    /// cannot reach us yet, so the sleep must be bounded.
    fn arm(&mut self) -> bool;
    /// Right before a sleep: the armed descriptors stay armed.
    fn before_sleep(&mut self) {}
}

/// Runs the wait until `deadline` (one look only if it has passed).
pub(super) fn wait(w: &mut impl Waiter, deadline: Deadline) -> Result<usize, Errno> {
    let spin_end = now_ns() + config::spin_ns();
    // The first look never sleeps.
    let mut t = 0;
    // Cleared when the rings promised an event the full look did not
    // confirm; then we stop trusting them and sleep.
    let mut trust = true;
    let mut naps = 0;
    loop {
        let n = w.look(t)?;
        if n > 0 || deadline.expired() {
            return Ok(n);
        }
        // Spin, then yield: a peer sharing our core must get to run.
        let backoff = crossbeam_utils::Backoff::new();
        let mut spun = false;
        while trust && now_ns() < spin_end {
            if w.ring_ready() {
                spun = true;
                break;
            }
            backoff.snooze();
        }
        if spun {
            t = 0;
            trust = false;
            continue;
        }
        let capped = w.arm();
        if trust && w.ring_ready() {
            t = 0;
            trust = false;
            continue;
        }
        trust = true;
        t = deadline.remaining_ms();
        if t == 0 {
            return Ok(0);
        }
        if capped {
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
