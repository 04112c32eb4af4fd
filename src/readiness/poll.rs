//! poll(2) and select(2) over sets that hold accelerated fds.

use super::Lookup;
use super::sleep::{self, Armed, Waiter};
use crate::conn::spin::Spun;
use crate::conn::{Conn, Ready};
use crate::os::poll::{poll_flags, ppoll};
use crate::os::time::Deadline;
use rustix::io::Errno;

/// poll(2) bits as i32, to mix with `events as i32`.
mod p {
    pub const IN: i32 = libc::POLLIN as i32;
    pub const OUT: i32 = libc::POLLOUT as i32;
    pub const PRI: i32 = libc::POLLPRI as i32;
    pub const RDNORM: i32 = libc::POLLRDNORM as i32;
    pub const WRNORM: i32 = libc::POLLWRNORM as i32;
    pub const RDHUP: i32 = libc::POLLRDHUP as i32;
    pub const HUP: i32 = libc::POLLHUP as i32;
    pub const ERR: i32 = libc::POLLERR as i32;
    pub const NVAL: i32 = libc::POLLNVAL as i32;
}

fn to_poll_bits(r: &Ready, events: i16) -> i16 {
    r.bits(u32::from(events as u16)) as i16
}

fn wants(events: i32) -> (bool, bool) {
    (
        events & (p::IN | p::RDNORM) != 0,
        events & (p::OUT | p::WRNORM) != 0,
    )
}

/// Kernel events to sleep on for an accelerated fd: doorbells (POLLIN)
/// when they can arrive, hang-ups always, and the app's POLLOUT while our
/// direction is still a plain socket.
fn sleep_events(c: &Conn, want_in: bool, want_out: bool) -> i16 {
    // POLLOUT from the kernel only while our writes are plain: over the
    // ring the socket is always writable, and sleeping on it would spin.
    let out = if want_out && !c.tx_on_ring() {
        p::OUT
    } else {
        0
    };
    // After our own SHUT_RD the socket stays readable and RDHUP: waking on
    // them would spin. (An app that wants input is already answered, and
    // HUP/ERR, the peer's end, come whatever is asked.)
    if c.reads_shut() {
        return out as i16;
    }
    let mut ev = p::RDHUP | out;
    if want_in || c.bells_work() {
        ev |= p::IN;
    }
    ev as i16
}

/// Whether a sleep waiting for room in `c`'s ring must be bounded: the
/// peer cannot ring our doorbell yet (its writes are not on the ring).
pub(super) fn bell_less(c: &Conn, want_out: bool) -> bool {
    want_out && c.tx_on_ring() && !c.bells_work()
}

/// One poll(2) call: the application's array, the connections behind it,
/// and the array the kernel sees.
struct PollCall<'a, L: Lookup> {
    lk: &'a L,
    fds: &'a mut [libc::pollfd],
    conns: Vec<Option<L::Ref>>,
    k: Vec<libc::pollfd>,
    mask: Option<&'a libc::sigset_t>,
    /// The connection whose spin policy the current spin follows.
    spinner: Option<usize>,
}

impl<L: Lookup> PollCall<'_, L> {
    /// The application's events for an fd that went plain in this call:
    /// the kernel's answer, after whatever negotiation just consumed.
    fn plain_now(&self, i: usize, kr: i16) -> i16 {
        let p = &self.fds[i];
        let mut one = [libc::pollfd {
            fd: p.fd,
            events: p.events,
            revents: 0,
        }];
        match crate::os::poll::poll(&mut one, 0) {
            Ok(_) => one[0].revents,
            Err(_) => kr & (p.events | (p::HUP | p::ERR | p::NVAL) as i16),
        }
    }
}

impl<L: Lookup> Waiter for PollCall<'_, L> {
    /// Sleeps on the sleep events (see `arm`), then one zero-timeout
    /// kernel poll for the plain fds and ring state for accelerated ones.
    ///
    /// After a sleep, a set of connections whose both directions run over
    /// the ring needs no second poll: the sleep's own revents are the
    /// kernel's view of all that matters for them (doorbells, hang-ups).
    fn look(&mut self, sleep_ms: i32) -> Result<usize, Errno> {
        let slept = sleep_ms != 0;
        if slept {
            ppoll(&mut self.k, sleep_ms, self.mask)?;
        }
        let rings_only = self
            .conns
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| !c.needs_kernel()));
        if !(rings_only && slept) {
            for (kp, (p, c)) in self.k.iter_mut().zip(self.fds.iter().zip(&self.conns)) {
                kp.revents = 0;
                kp.events = if c.is_some() {
                    (p::IN | p::OUT | p::RDHUP) as i16
                } else {
                    p.events
                };
            }
            crate::os::poll::poll(&mut self.k, 0)?;
        }
        let mut n = 0;
        for i in 0..self.fds.len() {
            let kr = self.k[i].revents;
            let fd = self.fds[i].fd;
            let revents = match &self.conns[i] {
                None => kr,
                Some(_) if kr & p::NVAL as i16 != 0 => kr,
                Some(c) => match c.readiness(self.lk.borrow(fd), Some(poll_flags(kr))) {
                    Some(r) => to_poll_bits(&r, self.fds[i].events),
                    None => {
                        self.lk.forget(fd, c);
                        self.conns[i] = None;
                        self.plain_now(i, kr)
                    }
                },
            };
            self.fds[i].revents = revents;
            if revents != 0 {
                n += 1;
            }
        }
        Ok(n)
    }

    fn spin_budget(&mut self) -> u64 {
        self.spinner = self.conns.iter().zip(self.fds.iter()).position(|(c, p)| {
            let (r, w) = wants(p.events as i32);
            c.as_ref().is_some_and(|c| c.ring_can_answer(r, w))
        });
        self.spinner
            .and_then(|i| self.conns[i].as_ref())
            .map_or(0, |c| c.spin_policy().budget())
    }

    fn spun(&mut self, budget: u64, how: Spun) {
        if let Some(c) = self.spinner.take().and_then(|i| self.conns[i].as_ref()) {
            c.spin_policy().learn(budget, how);
        }
    }

    fn ring_ready(&mut self) -> bool {
        self.conns.iter().zip(self.fds.iter()).any(|(c, p)| {
            c.as_ref().is_some_and(|c| {
                let (r, w) = wants(p.events as i32);
                c.quick_ready(r, w)
            })
        })
    }

    /// Asks for doorbells, and sets the events the next sleep waits for.
    fn arm(&mut self) -> Armed {
        let mut capped = false;
        for ((kp, p), c) in self.k.iter_mut().zip(self.fds.iter()).zip(&self.conns) {
            kp.revents = 0;
            kp.events = p.events;
            if let Some(c) = c {
                let (r, w) = wants(p.events as i32);
                c.arm(r, w);
                kp.events = sleep_events(c, r, w);
                capped |= bell_less(c, w);
            }
        }
        Armed {
            capped,
            ready: self.ring_ready(),
        }
    }
}

/// poll(2) over a set that contains accelerated fds.
///
/// `mask`, if given, is installed only while sleeping (ppoll/pselect).
pub fn poll<L: Lookup>(
    lk: &L,
    fds: &mut [libc::pollfd],
    deadline: Deadline,
    mask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let conns = fds
        .iter()
        .map(|p| if p.fd >= 0 { lk.conn(p.fd) } else { None })
        .collect();
    let k = fds.to_vec();
    let mut call = PollCall {
        lk,
        fds,
        conns,
        k,
        mask,
        spinner: None,
    };
    sleep::wait(&mut call, deadline)
}

/// One of select(2)'s three bitmaps, over `fd_set`'s words.
pub struct FdSet<'a>(pub &'a mut [u64]);

impl FdSet<'_> {
    fn get(&self, fd: i32) -> bool {
        let fd = fd as usize;
        self.0
            .get(fd / 64)
            .is_some_and(|w| w & (1 << (fd % 64)) != 0)
    }

    fn set(&mut self, fd: i32) {
        let fd = fd as usize;
        if let Some(w) = self.0.get_mut(fd / 64) {
            *w |= 1 << (fd % 64);
        }
    }

    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
}

/// select(2) through [`poll`]: the (read, write, except) sets, rewritten
/// in place; returns the number of bits set, or EBADF like the kernel.
pub fn select<L: Lookup>(
    lk: &L,
    nfds: i32,
    sets: [Option<FdSet<'_>>; 3],
    deadline: Deadline,
    mask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let [mut r, mut w, mut e] = sets;
    let isset = |s: &Option<FdSet<'_>>, fd: i32| s.as_ref().is_some_and(|s| s.get(fd));
    let mut pfds = Vec::new();
    for fd in 0..nfds {
        let mut ev = 0;
        if isset(&r, fd) {
            ev |= p::IN;
        }
        if isset(&w, fd) {
            ev |= p::OUT;
        }
        if isset(&e, fd) {
            ev |= p::PRI;
        }
        if ev != 0 {
            pfds.push(libc::pollfd {
                fd,
                events: ev as i16,
                revents: 0,
            });
        }
    }
    poll(lk, &mut pfds, deadline, mask)?;
    if pfds.iter().any(|p| p.revents & p::NVAL as i16 != 0) {
        return Err(Errno::BADF);
    }
    for s in [&mut r, &mut w, &mut e].into_iter().flatten() {
        s.clear();
    }
    let mut count = 0;
    let mut set = |s: &mut Option<FdSet<'_>>, fd: i32| {
        if let Some(s) = s {
            s.set(fd);
            count += 1;
        }
    };
    for p in &pfds {
        let rv = p.revents as i32;
        let ev = p.events as i32;
        if ev & p::IN != 0 && rv & (p::IN | p::HUP | p::ERR) != 0 {
            set(&mut r, p.fd);
        }
        if ev & p::OUT != 0 && rv & (p::OUT | p::ERR) != 0 {
            set(&mut w, p.fd);
        }
        if ev & p::PRI != 0 && rv & p::PRI != 0 {
            set(&mut e, p.fd);
        }
    }
    Ok(count)
}
