//! poll/select/epoll for accelerated sockets (DESIGN-NOTES 4, design b).
//!
//! The kernel cannot see ring data, so readiness of an accelerated fd comes
//! from ring state; the kernel is used to sleep. While sleeping, an
//! accelerated fd is watched for doorbells (POLLIN) and hang-ups only; its
//! POLLOUT and edge-triggered / one-shot behaviour are emulated here. Before
//! sleeping, calls spin briefly on the rings, which is where event-loop
//! servers gain latency.

use crate::config;
use crate::conn::{Conn, Ready, kernel_view};
use crate::sys;
use rustix::event::PollFlags;
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::ops::Deref;
use std::sync::Mutex;

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

/// How the shim finds the connection behind an fd.
pub trait Lookup {
    type Ref: Deref<Target = Conn> + Clone;
    fn conn(&self, fd: RawFd) -> Option<Self::Ref>;
    /// The connection went plain: stop treating `fd` specially.
    fn forget(&self, fd: RawFd, conn: &Conn);
}

/// The application's own epoll_wait: fills a buffer, with a timeout in ms.
pub type RealWait<'a> = dyn FnMut(&mut [libc::epoll_event], i32) -> Result<usize, Errno> + 'a;

/// A sleep is capped at this when a doorbell cannot reach us; each
/// further nap of one call doubles it, up to the maximum (a peer that does
/// not read for long costs a few wake-ups a second, not a spin).
const BELL_LESS_NAP_MS: i32 = 5;
const BELL_LESS_NAP_MAX_MS: i32 = 80;

/// `timeout` (ms, -1 for none) capped for the `n`th bell-less nap.
fn bell_less_nap(timeout: i32, n: &mut u32) -> i32 {
    let cap = (BELL_LESS_NAP_MS << (*n).min(4)).min(BELL_LESS_NAP_MAX_MS);
    *n += 1;
    if timeout < 0 { cap } else { timeout.min(cap) }
}

fn deadline(timeout_ms: i32) -> Option<u64> {
    (timeout_ms >= 0).then(|| sys::now_ns() + timeout_ms as u64 * 1_000_000)
}

/// Milliseconds left before `deadline`, rounded up; -1 for none.
fn remaining_ms(deadline: Option<u64>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let now = sys::now_ns();
            if now >= d {
                0
            } else {
                ((d - now).div_ceil(1_000_000)).min(i32::MAX as u64) as i32
            }
        }
    }
}

fn to_poll_bits(r: &Ready, events: i16) -> i16 {
    let ev = events as i32;
    let mut out = 0;
    if r.readable {
        out |= ev & (p::IN | p::RDNORM);
    }
    if r.writable {
        out |= ev & (p::OUT | p::WRNORM);
    }
    if r.rdhup {
        out |= ev & p::RDHUP;
    }
    if r.hup {
        out |= p::HUP;
    }
    if r.err {
        out |= p::ERR;
    }
    out as i16
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
    // After our own SHUT_RD the socket stays readable and RDHUP: waking on
    // them would spin. (An app that wants input is already answered, and
    // HUP/ERR, the peer's end, come whatever is asked.)
    // POLLOUT from the kernel only while our writes are plain: over the
    // ring the socket is always writable, and sleeping on it would spin.
    let out = if want_out && !c.tx_on_ring() {
        p::OUT
    } else {
        0
    };
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
fn bell_less(c: &Conn, want_out: bool) -> bool {
    want_out && c.tx_on_ring() && !c.bells_work()
}

/// poll(2) over a set that contains accelerated fds.
///
/// `mask`, if given, is installed only while sleeping (ppoll/pselect).
pub fn poll<L: Lookup>(
    lk: &L,
    fds: &mut [libc::pollfd],
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let mut conns: Vec<Option<L::Ref>> = fds
        .iter()
        .map(|p| if p.fd >= 0 { lk.conn(p.fd) } else { None })
        .collect();
    let dl = deadline(timeout_ms);
    let spin_end = sys::now_ns() + config::spin_ns();
    let mut k: Vec<libc::pollfd> = fds.to_vec();
    let mut trust_ring = true;
    let mut naps = 0;
    loop {
        // Look: one zero-timeout kernel poll, ring state for accelerated fds.
        for (kp, (p, c)) in k.iter_mut().zip(fds.iter().zip(&conns)) {
            kp.revents = 0;
            kp.events = if c.is_some() {
                (p::IN | p::OUT | p::RDHUP) as i16
            } else {
                p.events
            };
        }
        sys::poll(&mut k, 0)?;
        let mut n = 0;
        for (i, p) in fds.iter_mut().enumerate() {
            let kr = k[i].revents;
            p.revents = match &conns[i] {
                None => kr,
                Some(_) if kr & p::NVAL as i16 != 0 => kr,
                Some(c) => match c.readiness(p.fd, Some(PollFlags::from_bits_retain(kr as u16))) {
                    Some(r) => to_poll_bits(&r, p.events),
                    None => {
                        lk.forget(p.fd, c);
                        conns[i] = None;
                        // Plain now: the kernel's answer to the app's own
                        // events, after whatever negotiation just consumed.
                        let mut one = [libc::pollfd {
                            fd: p.fd,
                            events: p.events,
                            revents: 0,
                        }];
                        match sys::poll(&mut one, 0) {
                            Ok(_) => one[0].revents,
                            Err(_) => kr & (p.events | (p::HUP | p::ERR | p::NVAL) as i16),
                        }
                    }
                },
            };
            if p.revents != 0 {
                n += 1;
            }
        }
        if n > 0 || timeout_ms == 0 || remaining_ms(dl) == 0 {
            return Ok(n);
        }
        let ring_ready = |conns: &[Option<L::Ref>]| {
            conns.iter().zip(fds.iter()).any(|(c, p)| {
                c.as_ref().is_some_and(|c| {
                    let (r, w) = wants(p.events as i32);
                    c.quick_ready(r, w)
                })
            })
        };
        // Spin on the rings before paying for a sleep and a wake-up (but
        // not again if the last spin's promise was not confirmed above).
        let mut spun = false;
        // Spin, then yield: a peer sharing our core must get to run.
        let backoff = crossbeam_utils::Backoff::new();
        while trust_ring && sys::now_ns() < spin_end {
            if ring_ready(&conns) {
                spun = true;
                break;
            }
            backoff.snooze();
        }
        if spun {
            trust_ring = false;
            continue;
        }
        // Arm doorbells, re-check, sleep.
        let mut nap = remaining_ms(dl);
        let mut capped = false;
        for ((kp, p), c) in k.iter_mut().zip(fds.iter()).zip(&conns) {
            kp.revents = 0;
            kp.events = p.events;
            if let Some(c) = c {
                let (r, w) = wants(p.events as i32);
                c.arm(r, w);
                kp.events = sleep_events(c, r, w);
                capped |= bell_less(c, w);
            }
        }
        if capped {
            nap = bell_less_nap(nap, &mut naps);
        }
        if trust_ring && ring_ready(&conns) {
            trust_ring = false;
            continue;
        }
        trust_ring = true;
        sys::ppoll(&mut k, nap, mask)?;
    }
}

/// select(2) through [`poll`]. `sets` are (read, write, except) bitmaps as
/// slices of `fd_set` words, rewritten in place; returns the number of bits
/// set, or EBADF like the kernel.
pub fn select<L: Lookup>(
    lk: &L,
    nfds: i32,
    sets: [Option<&mut libc::fd_set>; 3],
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let [mut r, mut w, mut e] = sets;
    let isset = |s: &Option<&mut libc::fd_set>, fd: i32| {
        // SAFETY: FD_ISSET reads one bit of a valid fd_set; fd < nfds <= FD_SETSIZE.
        s.as_ref()
            .is_some_and(|s| unsafe { libc::FD_ISSET(fd, &**s) })
    };
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
    poll(lk, &mut pfds, timeout_ms, mask)?;
    if pfds.iter().any(|p| p.revents & p::NVAL as i16 != 0) {
        return Err(Errno::BADF);
    }
    for s in [&mut r, &mut w, &mut e].into_iter().flatten() {
        // SAFETY: FD_ZERO clears a valid fd_set.
        unsafe { libc::FD_ZERO(&mut **s) };
    }
    let mut count = 0;
    let mut set = |s: &mut Option<&mut libc::fd_set>, fd: i32| {
        if let Some(s) = s {
            // SAFETY: fd < nfds <= FD_SETSIZE.
            unsafe { libc::FD_SET(fd, &mut **s) };
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

// ------------------------------------------------------------------- epoll

struct Watch<R> {
    fd: RawFd,
    conn: R,
    /// The application's events and data.
    events: u32,
    data: u64,
    /// Events registered for `fd` in our private epoll.
    kernel: u32,
    /// One-shot watch that fired and awaits EPOLL_CTL_MOD.
    disabled: bool,
    /// Edge-triggered state: progress counters when last reported.
    last_in: u64,
    last_out: u64,
    /// Kernel activity counters for directions that are still plain.
    k_in: u64,
    k_out: u64,
}

/// The emulation state of one application epoll instance that watches
/// accelerated fds.
///
/// Accelerated fds are not registered in the application's epoll. They go
/// into a private epoll (edge-triggered, so undrained data can never make it
/// spin) which is itself registered in the application's one under a random
/// cookie.
pub struct EpollSet<R> {
    epfd: RawFd,
    inner: RawFd,
    cookie: u64,
    watches: Mutex<Vec<Watch<R>>>,
}

impl<R> Drop for EpollSet<R> {
    fn drop(&mut self) {
        sys::close(self.inner);
    }
}

/// The locked watch list of an [`EpollSet`], then its signal section
/// (fields drop in order: unlock first).
struct WatchesGuard<'a, R>(
    std::sync::MutexGuard<'a, Vec<Watch<R>>>,
    #[allow(dead_code)] crate::signals::Critical,
);

impl<R> Deref for WatchesGuard<'_, R> {
    type Target = Vec<Watch<R>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<R> std::ops::DerefMut for WatchesGuard<'_, R> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
/// The input and output bits a watch may ask for (poll's *NORM twins
/// included: the kernel reports them alike on a stream socket).
const IN_BITS: u32 = (libc::EPOLLIN | libc::EPOLLRDNORM) as u32;
const OUT_BITS: u32 = (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
const EPOLLERR: u32 = libc::EPOLLERR as u32;
const EPOLLET: u32 = libc::EPOLLET as u32;
const EPOLLONESHOT: u32 = libc::EPOLLONESHOT as u32;

impl<R: Deref<Target = Conn> + Clone> EpollSet<R> {
    /// Creates the private epoll and registers it in `epfd`.
    pub fn new(epfd: RawFd) -> Result<Self, Errno> {
        let inner = sys::epoll_create()?;
        let mut c = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut c, rustix::rand::GetRandomFlags::empty());
        let cookie = u64::from_ne_bytes(c) | 1 << 63;
        if let Err(e) = sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, inner, EPOLLIN, cookie) {
            sys::close(inner);
            return Err(e);
        }
        Ok(EpollSet {
            epfd,
            inner,
            cookie,
            watches: Mutex::new(Vec::new()),
        })
    }

    /// The watch list, inside a signal section: a handler that calls
    /// epoll_ctl or close would otherwise wait for the lock its own thread
    /// holds. (The guard unlocks before the section ends, which runs any
    /// deferred handler.)
    fn lock(&self) -> WatchesGuard<'_, R> {
        let section = crate::signals::Critical::enter();
        WatchesGuard(
            self.watches.lock().unwrap_or_else(|p| p.into_inner()),
            section,
        )
    }

    fn kernel_events(conn: &Conn, events: u32) -> u32 {
        let mut k = EPOLLIN | EPOLLRDHUP | EPOLLET;
        if events & OUT_BITS != 0 && !conn.tx_on_ring() {
            k |= EPOLLOUT;
        }
        k
    }

    /// Forgets `fd` (its connection went plain and was dropped elsewhere).
    pub fn remove(&self, fd: RawFd) {
        self.lock().retain(|w| w.fd != fd);
        let _ = sys::epoll_ctl(self.inner, libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Whether `fd` is watched here.
    pub fn contains(&self, fd: RawFd) -> bool {
        self.lock().iter().any(|w| w.fd == fd)
    }

    /// epoll_ctl for an accelerated fd.
    pub fn ctl(&self, op: i32, fd: RawFd, conn: R, events: u32, data: u64) -> Result<(), Errno> {
        let mut ws = self.lock();
        let pos = ws.iter().position(|w| w.fd == fd);
        match (op, pos) {
            (libc::EPOLL_CTL_ADD, Some(_)) => Err(Errno::EXIST),
            (libc::EPOLL_CTL_ADD, None) => {
                let kernel = Self::kernel_events(&conn, events);
                sys::epoll_ctl(self.inner, libc::EPOLL_CTL_ADD, fd, kernel, fd as u64)?;
                ws.push(Watch {
                    fd,
                    conn,
                    events,
                    data,
                    kernel,
                    disabled: false,
                    last_in: u64::MAX,
                    last_out: u64::MAX,
                    k_in: 0,
                    k_out: 0,
                });
                Ok(())
            }
            (libc::EPOLL_CTL_MOD, Some(i)) => {
                let w = &mut ws[i];
                w.events = events;
                w.data = data;
                w.disabled = false;
                // The kernel re-evaluates readiness on MOD: so do we.
                w.last_in = u64::MAX;
                w.last_out = u64::MAX;
                let kernel = Self::kernel_events(&w.conn, events);
                if kernel != w.kernel {
                    sys::epoll_ctl(self.inner, libc::EPOLL_CTL_MOD, fd, kernel, fd as u64)?;
                    w.kernel = kernel;
                }
                Ok(())
            }
            (libc::EPOLL_CTL_DEL, Some(i)) => {
                ws.swap_remove(i);
                let _ = sys::epoll_ctl(self.inner, libc::EPOLL_CTL_DEL, fd, 0, 0);
                Ok(())
            }
            (libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL, None) => Err(Errno::NOENT),
            _ => Err(Errno::INVAL),
        }
    }

    /// Evaluates one watch; returns the events to report, updating ET and
    /// one-shot state.
    fn eval(w: &mut Watch<R>, kernel: Option<PollFlags>) -> Option<u32> {
        if w.disabled {
            return None;
        }
        let conn = &*w.conn;
        let k = if conn.needs_kernel() {
            Some(kernel_view(w.fd))
        } else {
            kernel
        };
        // None: went plain; the caller hands the fd back to the kernel.
        let r = conn.readiness(w.fd, k)?;
        let mut ev = 0;
        if r.readable {
            ev |= w.events & IN_BITS;
        }
        if r.writable {
            ev |= w.events & OUT_BITS;
        }
        if r.rdhup {
            ev |= w.events & EPOLLRDHUP;
        }
        if r.hup {
            ev |= EPOLLHUP;
        }
        if r.err {
            ev |= EPOLLERR;
        }
        if ev == 0 {
            return None;
        }
        if w.events & EPOLLET != 0 {
            // An edge is progress since the last report: bytes written by the
            // peer (or EOF) for input, bytes consumed by the peer for output.
            let (seq_in, seq_out) = conn.progress_counters();
            let seq_in = seq_in.wrapping_add(w.k_in);
            let seq_out = seq_out.wrapping_add(w.k_out);
            let mut edge = 0;
            if ev & (IN_BITS | EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0 && seq_in != w.last_in {
                edge |= ev & (IN_BITS | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
            }
            if ev & OUT_BITS != 0 && seq_out != w.last_out {
                edge |= ev & OUT_BITS;
            }
            if edge == 0 {
                return None;
            }
            if edge & IN_BITS != 0 || ev & IN_BITS == 0 {
                w.last_in = seq_in;
            }
            if edge & OUT_BITS != 0 {
                w.last_out = seq_out;
            }
            ev = edge;
        }
        if w.events & EPOLLONESHOT != 0 {
            w.disabled = true;
        }
        Some(ev)
    }

    /// epoll_wait. `real_wait` waits on the application's epoll fd (plain fds
    /// and our cookie).
    pub fn wait<L: Lookup<Ref = R>>(
        &self,
        lk: &L,
        out: &mut [libc::epoll_event],
        timeout_ms: i32,
        real_wait: &mut RealWait<'_>,
    ) -> Result<usize, Errno> {
        if out.is_empty() {
            return Err(Errno::INVAL);
        }
        let dl = deadline(timeout_ms);
        let spin_end = sys::now_ns() + config::spin_ns();
        // The first look never sleeps.
        let mut t = 0;
        // Set when the ring-only check promised an event the full scan did
        // not confirm; then we stop trusting it and sleep.
        let mut trust_dry = true;
        let mut naps = 0;
        loop {
            // Kernel first (plain fds, our cookie), then one scan of the
            // watches: each watch is reported at most once per call.
            let k = real_wait(out, t)?;
            let mut bells = false;
            let mut n = 0;
            for i in 0..k {
                let ev = out[i];
                if ev.u64 == self.cookie {
                    bells = true;
                } else {
                    out[n] = ev;
                    n += 1;
                }
            }
            let hits = if bells {
                self.collect_hits()
            } else {
                Vec::new()
            };
            if n < out.len() {
                n += self.scan(lk, &mut out[n..], &hits);
            }
            if n > 0 || timeout_ms == 0 || remaining_ms(dl) == 0 {
                return Ok(n);
            }
            // Spin on the rings (no syscalls), then arm doorbells and sleep.
            let mut ready = false;
            let backoff = crossbeam_utils::Backoff::new();
            while trust_dry && !ready && sys::now_ns() < spin_end {
                ready = self.dry_ready();
                backoff.snooze();
            }
            if ready {
                t = 0;
                trust_dry = false;
                continue;
            }
            let nap_cap = self.arm();
            if trust_dry && self.dry_ready() {
                t = 0;
                trust_dry = false;
                continue;
            }
            trust_dry = true;
            t = remaining_ms(dl);
            if t == 0 {
                return Ok(0);
            }
            if nap_cap {
                t = bell_less_nap(t, &mut naps);
            }
        }
    }

    /// Reads which accelerated fds the kernel saw activity on (doorbells,
    /// hang-ups, plain data) and counts it for edge-triggered watches.
    fn collect_hits(&self) -> Vec<(RawFd, PollFlags)> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let got = sys::epoll_wait(self.inner, &mut evs, 0).unwrap_or(0);
        let hits: Vec<(RawFd, PollFlags)> = evs[..got]
            .iter()
            .map(|e| (e.u64 as RawFd, PollFlags::from_bits_retain(e.events as u16)))
            .collect();
        let mut ws = self.lock();
        for (fd, f) in &hits {
            if let Some(w) = ws.iter_mut().find(|w| w.fd == *fd) {
                if f.contains(PollFlags::IN) {
                    w.k_in = w.k_in.wrapping_add(1);
                }
                if f.contains(PollFlags::OUT) {
                    w.k_out = w.k_out.wrapping_add(1);
                }
            }
        }
        hits
    }

    fn scan<L: Lookup<Ref = R>>(
        &self,
        lk: &L,
        out: &mut [libc::epoll_event],
        hits: &[(RawFd, PollFlags)],
    ) -> usize {
        let mut ws = self.lock();
        // Watches whose fd was closed or now names something else are gone,
        // as the kernel drops a closed file from an epoll set. One whose
        // connection went plain in another call (which dropped it from the
        // table) is still the same socket: it is handed back below.
        ws.retain(|w| {
            lk.conn(w.fd).is_some_and(|c| std::ptr::eq(&*c, &*w.conn))
                || (w.conn.is_plain() && same_socket(w.fd, w.conn.ino()))
        });
        let mut n = 0;
        let mut i = 0;
        while i < ws.len() && n < out.len() {
            let hit = hits.iter().find(|(fd, _)| *fd == ws[i].fd).map(|h| h.1);
            let mut reported = false;
            if ws[i].conn.is_plain() || {
                let ev = Self::eval(&mut ws[i], hit);
                if let Some(ev) = ev {
                    out[n] = libc::epoll_event {
                        events: ev,
                        u64: ws[i].data,
                    };
                    n += 1;
                    reported = true;
                }
                ws[i].conn.is_plain()
            } {
                // Hand the fd back to the kernel with the app's own events.
                let mut w = ws.swap_remove(i);
                let _ = sys::epoll_ctl(self.inner, libc::EPOLL_CTL_DEL, w.fd, 0, 0);
                // This call's kernel wait is over: report the fd's readiness
                // now, as the kernel would have (a one-shot watch that fires
                // goes back disabled).
                if !w.disabled && !reported && n < out.len() {
                    let ev = Self::plain_events(w.fd, w.events);
                    if ev != 0 {
                        out[n] = libc::epoll_event {
                            events: ev,
                            u64: w.data,
                        };
                        n += 1;
                        w.disabled = w.events & EPOLLONESHOT != 0;
                    }
                }
                let events = if w.disabled { EPOLLONESHOT } else { w.events };
                let _ = sys::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, w.fd, events, w.data);
                lk.forget(w.fd, &w.conn);
                continue;
            }
            i += 1;
        }
        n
    }

    /// What the kernel reports now for a plain socket watched for `events`.
    fn plain_events(fd: RawFd, events: u32) -> u32 {
        let k = u32::from(kernel_view(fd).bits());
        let mut ev = k & (EPOLLHUP | EPOLLERR);
        if k & EPOLLIN != 0 {
            ev |= events & IN_BITS;
        }
        if k & EPOLLOUT != 0 {
            ev |= events & OUT_BITS;
        }
        ev | (k & events & EPOLLRDHUP)
    }

    /// Whether some watch would report now, from ring state alone
    /// (edge-triggered ones only on a new edge in a direction they want).
    fn dry_ready(&self) -> bool {
        let ws = self.lock();
        ws.iter().any(|w| {
            if w.disabled {
                return false;
            }
            let (want_in, want_out) = (w.events & IN_BITS != 0, w.events & OUT_BITS != 0);
            let et = w.events & EPOLLET != 0;
            // Edge counters only for edge-triggered watches that are ready.
            let edge_in = || !et || w.conn.progress_counters().0.wrapping_add(w.k_in) != w.last_in;
            let edge_out =
                || !et || w.conn.progress_counters().1.wrapping_add(w.k_out) != w.last_out;
            (want_in && w.conn.quick_ready(true, false) && edge_in())
                || (want_out && w.conn.quick_ready(false, true) && edge_out())
        })
    }

    /// Asks for doorbells on every watch; true if some sleep must be bounded
    /// because a doorbell cannot reach us yet.
    fn arm(&self) -> bool {
        let ws = self.lock();
        let mut cap = false;
        for w in ws.iter().filter(|w| !w.disabled) {
            let (r, wr) = (w.events & IN_BITS != 0, w.events & OUT_BITS != 0);
            w.conn.arm(r, wr);
            cap |= bell_less(&w.conn, wr);
        }
        cap
    }
}

/// The events and data `fd` is registered with in a kernel epoll, from that
/// epoll's `/proc/self/fdinfo` text (`tfd: FD events: HEX data: HEX ...`).
/// For a socket the program added to an epoll before it connected.
pub fn epoll_registration(fdinfo: &str, fd: i32) -> Option<(u32, u64)> {
    for l in fdinfo.lines() {
        let mut w = l.split_whitespace();
        if w.next() != Some("tfd:") || w.next().and_then(|v| v.parse::<i32>().ok()) != Some(fd) {
            continue;
        }
        let (mut events, mut data) = (None, None);
        while let Some(k) = w.next() {
            match k {
                "events:" => events = w.next().and_then(|v| u32::from_str_radix(v, 16).ok()),
                "data:" => data = w.next().and_then(|v| u64::from_str_radix(v, 16).ok()),
                _ => {}
            }
        }
        return Some((events?, data?));
    }
    None
}

/// Whether `fd` still names the socket with inode `ino`.
fn same_socket(fd: RawFd, ino: u64) -> bool {
    // SAFETY: borrowed for one fstat; a closed fd fails with EBADF.
    let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
    ino != 0 && rustix::fs::fstat(fd).is_ok_and(|st| st.st_ino == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_registration_from_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
                    tfd:        4 events: 80000019 data:                4  pos:0 ino:1eb119 sdev:9\n\
                    tfd:       12 events:       1d data:     7f00deadbeef  pos:0 ino:1 sdev:9\n";
        assert_eq!(epoll_registration(text, 4), Some((0x8000_0019, 4)));
        assert_eq!(epoll_registration(text, 12), Some((0x1d, 0x7f00_dead_beef)));
        assert_eq!(epoll_registration(text, 1), None);
        assert_eq!(epoll_registration("tfd: 3 events: zz data: 1", 3), None);
    }
}
