//! One emulated epoll_wait call: the [`Waiter`] that `sleep::wait` drives
//! over an [`EpollSet`]'s watches.

use super::watches::Watch;
use super::{EPOLLET, EpollSet, RealWait};
use crate::conn::Conn;
use crate::conn::spin::Spun;
use crate::readiness::Lookup;
use crate::readiness::sleep::{Armed, Waiter};
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::ops::Deref;

/// How many idle watches a wait looks through for one to spin on.
const SPINNER_CANDIDATES: usize = 4;

/// Whether an idle watch would report now, from ring state alone.
pub(super) fn quick_ready<R: Deref<Target = Conn>>(w: &Watch<R>) -> bool {
    if w.disabled {
        return false;
    }
    let (want_in, want_out) = w.wants();
    let et = w.events & EPOLLET != 0;
    // Edge counters only for edge-triggered watches that are ready.
    let edge_in = || !et || w.conn.progress_counters().0.wrapping_add(w.k_in) != w.last_in;
    let edge_out = || !et || w.conn.progress_counters().1.wrapping_add(w.k_out) != w.last_out;
    (want_in && w.conn.quick_ready(true, false) && edge_in())
        || (want_out && w.conn.quick_ready(false, true) && edge_out())
}

/// One epoll_wait call.
pub(super) struct EpollCall<'a, 'w, L: Lookup> {
    pub(super) set: &'a EpollSet<L::Ref>,
    pub(super) lk: &'a L,
    pub(super) out: &'a mut [libc::epoll_event],
    pub(super) real_wait: &'a mut RealWait<'w>,
    /// The connection whose spin policy the current spin follows.
    pub(super) spinner: Option<L::Ref>,
    /// The watches the last look found idle, with its number.
    pub(super) idle: Vec<(RawFd, u64)>,
}

impl<L: Lookup> EpollCall<'_, '_, L> {
    /// The kernel's events into `out[at..]` (none without room), sleeping
    /// up to `sleep_ms`; our cookie is taken out: whether it was there.
    fn kernel(&mut self, at: usize, sleep_ms: i32) -> Result<(usize, bool), Errno> {
        let out = &mut self.out[at..];
        if out.is_empty() {
            return Ok((0, false));
        }
        let k = (self.real_wait)(out, sleep_ms)?;
        let (mut n, mut bells) = (0, false);
        for i in 0..k {
            let ev = out[i];
            if ev.u64 == self.set.cookie {
                bells = true;
            } else {
                out[n] = ev;
                n += 1;
            }
        }
        Ok((n, bells))
    }
}

impl<L: Lookup> EpollCall<'_, '_, L>
where
    L::Ref: Deref<Target = Conn> + Clone,
{
    /// The hot watches after `n` kernel events (taking our doorbells
    /// first if the kernel reported them), into the rest of the room.
    fn watches_after_kernel(&mut self, mut n: usize, bells: bool) -> usize {
        let mut ws = self.set.lock();
        ws.read_posts();
        if bells {
            self.set.take_hits(&mut ws);
        }
        n += self
            .set
            .scan(self.lk, &mut ws, &mut self.out[n..], &mut self.idle);
        drop(ws);
        if n > 0 && !self.idle.is_empty() {
            self.set.park_long_idle(&mut self.idle);
        }
        n
    }

    /// A look that serves the hot watches before the kernel, which it asks
    /// without sleeping, and only if `always` or a watch reported. Watches
    /// that fill the caller's room leave the kernel the first turn next
    /// time. Returns how many are ready and whether the kernel was asked.
    fn watches_then_kernel(&mut self, always: bool) -> Result<(usize, bool), Errno> {
        let mut ws = self.set.lock();
        ws.read_posts();
        let mut n = self.set.scan(self.lk, &mut ws, self.out, &mut self.idle);
        drop(ws);
        if n == 0 && !always {
            return Ok((0, false));
        }
        if n == self.out.len() {
            self.set.kernel_owed_next();
        }
        let (k, bells) = self.kernel(n, 0)?;
        n += k;
        if bells {
            let mut ws = self.set.lock();
            self.set.take_hits(&mut ws);
            // Nothing reported yet: the watches that rang now. (Else
            // they wait for the next look; a pending hit keeps each
            // from being parked meanwhile.)
            if n == 0 {
                n = self.set.scan(self.lk, &mut ws, self.out, &mut self.idle);
            }
        }
        if n > 0 && !self.idle.is_empty() {
            self.set.park_long_idle(&mut self.idle);
        }
        Ok((n, true))
    }
}

impl<L: Lookup> Waiter for EpollCall<'_, '_, L>
where
    L::Ref: Deref<Target = Conn> + Clone,
{
    /// The kernel (plain fds, our cookie) and the hot watches: each watch
    /// is reported at most once per call. A look that reports parks the
    /// idle watches it found (armed, and still idle then).
    ///
    /// The kernel goes first, unless its events filled the caller's room
    /// at the last look: then the next look that does not sleep serves the
    /// watches first. With room for fewer events than are ready, the
    /// kernel's round robin gives each ready fd its turn, and so must we:
    /// the kernel first every time hid the watches for as long as a plain
    /// fd stayed ready.
    fn look(&mut self, sleep_ms: i32) -> Result<usize, Errno> {
        if sleep_ms == 0 && self.set.take_watches_first() {
            return Ok(self.watches_then_kernel(true)?.0);
        }
        let (n, bells) = self.kernel(0, sleep_ms)?;
        if n == self.out.len() {
            self.set.watches_first_next();
        }
        Ok(self.watches_after_kernel(n, bells))
    }

    /// The kernel without sleeping; the watches only if it had news (a
    /// scan counts as a look, and watches idle for some looks are parked).
    fn look_kernel(&mut self) -> Result<usize, Errno> {
        let (n, bells) = self.kernel(0, 0)?;
        if n == 0 && !bells {
            return Ok(0);
        }
        Ok(self.watches_after_kernel(n, bells))
    }

    /// The hot watches first; the kernel then only if they reported (its
    /// events go with theirs). Unless it is owed the first turn, or the
    /// last wait spun: then a full look.
    fn look_rings(&mut self) -> Result<(usize, bool), Errno> {
        if self.set.kernel_first() {
            return Ok((self.look(0)?, true));
        }
        // Served first now in any case.
        self.set.take_watches_first();
        self.watches_then_kernel(false)
    }

    fn ring_ready(&mut self) -> bool {
        self.set.idle_ready(&self.idle)
    }

    /// The connection of a recently active idle watch that a spin can
    /// answer decides.
    fn spin_budget(&mut self) -> u64 {
        let ws = self.set.lock();
        // The first of the next few idle watches whose events a spin can
        // see (on a ring); a few, so that a long idle list costs nothing.
        self.spinner = self
            .idle
            .iter()
            .take(SPINNER_CANDIDATES)
            .filter_map(|(fd, _)| ws.by_fd.get(fd))
            .find(|w| {
                let (r, wr) = w.wants();
                !w.disabled && w.conn.ring_can_answer(r, wr)
            })
            .map(|w| w.conn.clone());
        let budget = self
            .spinner
            .as_ref()
            .map_or(0, |c| c.spin_policy().budget());
        self.set.note_spin_budget(budget);
        budget
    }

    fn spun(&mut self, budget: u64, how: Spun) {
        if let Some(c) = self.spinner.take() {
            c.spin_policy().learn(budget, how);
        }
    }

    fn arm(&mut self) -> Armed {
        self.set.arm_idle(&mut self.idle)
    }

    fn before_sleep(&mut self) {
        self.set.park_idle(&mut self.idle);
    }
}
