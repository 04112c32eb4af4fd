//! epoll for accelerated sockets: each application epoll instance that
//! watches one gets an [`EpollSet`]; a client the program registered in
//! its kernel epoll is moved into it once it attached ([`migrate`]).
//!
//! Accelerated fds are not registered in the application's epoll. They go
//! into a private epoll (edge-triggered, so undrained data can never make it
//! spin) which is itself registered in the application's one under a random
//! cookie. Level-triggered, edge-triggered and one-shot watches are
//! emulated from ring state and progress counters.

mod call;
mod migrate;
pub mod pending;
mod watches;

use super::Lookup;
use super::poll::bell_less;
use super::sleep::{self, Armed};
use crate::conn::{Conn, posts};
use crate::os::fd::socket_inode;
use crate::os::poll::{epoll_create, epoll_ctl, epoll_wait, kernel_view, poll_flags};
use crate::os::time::Deadline;
use rustix::event::PollFlags;
use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use call::{EpollCall, quick_ready};
pub use migrate::{
    Migrate, forget_hint, forget_hints, note_epoll_ctl, registration_before_connect,
    settle_pending, sweep_attached,
};
pub use pending::KernelReg;
use watches::{RETIRED_MAX, Watch, Watches};

/// The application's own epoll_wait: fills a buffer, with a timeout in ms.
pub type RealWait<'a> = dyn FnMut(&mut [libc::epoll_event], i32) -> Result<usize, Errno> + 'a;

/// The emulation state of one application epoll instance that watches
/// accelerated fds.
///
/// Accelerated fds are not registered in the application's epoll. They go
/// into a private epoll (edge-triggered, so undrained data can never make it
/// spin) which is itself registered in the application's one under a random
/// cookie.
pub struct EpollSet<R> {
    epfd: RawFd,
    /// Our private epoll, registered in `epfd` under `cookie`.
    inner: OwnedFd,
    cookie: u64,
    watches: Mutex<Watches<R>>,
    /// The kernel's events filled a look: the next look that does not
    /// sleep serves the hot watches first.
    watches_first: AtomicBool,
    /// The hot watches filled a look the kernel was not asked in: the
    /// next call's first look asks it first.
    kernel_owed: AtomicBool,
    /// The last wait that asked for a spin budget got none: the next one
    /// looks at the rings first and asks the kernel only in its sleep. (A
    /// spinning server's first look asks the kernel first: that call's
    /// time often brings the request the look then finds.)
    rings_first: AtomicBool,
}

/// The locked watches of an [`EpollSet`], then its signal section
/// (fields drop in order: unlock first).
struct WatchesGuard<'a, R>(
    std::sync::MutexGuard<'a, Watches<R>>,
    #[allow(dead_code)] crate::signals::Critical,
);

impl<R> Deref for WatchesGuard<'_, R> {
    type Target = Watches<R>;
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

/// Idle watches a wait spins on before it sleeps: the most recently
/// active ones, where a reply is likely soon.
const SPIN_WATCHES: usize = 64;
/// A look that reports parks only the watches idle for this many looks:
/// one a busy server finds idle between two of its requests would make
/// the peer ring a doorbell for the next (redis-benchmark -c 50: 0.85x of
/// the O(watched) wait that parked nothing). 32, not 16: a server that
/// answers 10 connections in turn looks about twice per request, and one
/// parked there rang a doorbell for every request (conns: 19 us round
/// trip, against 1.3 us).
const PARK_AFTER_LOOKS: u64 = 32;
/// At most this many recently active watches stay hot (armed) across a
/// sleep: after the wake-up, the spin can see them. Parking every idle
/// watch before each sleep left the spin only the connection just
/// served, so a server whose next request came on another one learned
/// that spinning misses, and slept on every request.
const HOT_ACROSS_SLEEP: usize = 16;

impl<R: Deref<Target = Conn> + Clone> EpollSet<R> {
    /// Creates the private epoll and registers it in `epfd`.
    pub fn new(epfd: RawFd) -> Result<Self, Errno> {
        let inner = epoll_create()?;
        let mut c = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut c, rustix::rand::GetRandomFlags::empty());
        let cookie = u64::from_ne_bytes(c) | 1 << 63;
        epoll_ctl(
            epfd,
            libc::EPOLL_CTL_ADD,
            inner.as_raw_fd(),
            EPOLLIN,
            cookie,
        )?;
        Ok(EpollSet {
            epfd,
            inner,
            cookie,
            watches: Mutex::new(Watches::new()),
            watches_first: AtomicBool::new(false),
            kernel_owed: AtomicBool::new(false),
            rings_first: AtomicBool::new(false),
        })
    }

    /// Whether this look serves the hot watches before the kernel.
    fn take_watches_first(&self) -> bool {
        self.watches_first.swap(false, Relaxed)
    }

    /// The kernel's events filled a look: the watches go first next.
    fn watches_first_next(&self) {
        self.watches_first.store(true, Relaxed);
    }

    /// Whether the next call's first look asks the kernel first: it is
    /// owed the turn, or the last wait spun.
    fn kernel_first(&self) -> bool {
        self.kernel_owed.swap(false, Relaxed) || !self.rings_first.load(Relaxed)
    }

    /// Notes whether the wait that just asked was granted a spin.
    fn note_spin_budget(&self, budget: u64) {
        if self.rings_first.load(Relaxed) != (budget == 0) {
            self.rings_first.store(budget == 0, Relaxed);
        }
    }

    /// The watches filled a look before the kernel was asked: the next
    /// call's first look asks it first (no plain fd waits behind rings
    /// that stay ready).
    fn kernel_owed_next(&self) {
        self.kernel_owed.store(true, Relaxed);
    }

    /// The watches, inside a signal section: a handler that calls
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
        let mut ws = self.lock();
        ws.remove(fd);
        ws.retired.remove(&fd);
        let _ = epoll_ctl(self.inner.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// `fd` is handed to the kernel's epoll as a plain socket: a
    /// registration kept for it in ours goes (it would wake us for
    /// nothing at each of its bytes).
    pub fn drop_retired(&self, fd: RawFd) {
        if self.lock().retired.remove(&fd).is_some() {
            let _ = epoll_ctl(self.inner.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
        }
    }

    /// Whether `fd` is watched here.
    pub fn contains(&self, fd: RawFd) -> bool {
        self.lock().by_fd.contains_key(&fd)
    }

    /// Whether `fd` is watched here for what it names now: its connection,
    /// or the same socket gone plain. The watch of a descriptor closed
    /// and reused (its close only posts a change, read at the next wait)
    /// is dropped: the kernel forgot it at the close.
    pub fn watches<L: Lookup<Ref = R>>(&self, lk: &L, fd: RawFd) -> bool {
        let mut ws = self.lock();
        let Some(w) = ws.by_fd.get(&fd) else {
            return false;
        };
        let plain = w.conn.is_plain();
        if lk.names(fd, &w.conn)
            || (plain && w.conn.ino() != 0 && socket_inode(lk.borrow(fd)) == Some(w.conn.ino()))
        {
            return true;
        }
        // (No DEL from our private epoll: it names the fd's file now, not
        // the closed one, whose registration went with its last close.)
        ws.remove(fd);
        ws.retired.remove(&fd);
        false
    }

    /// epoll_ctl for an accelerated fd. A watch of another connection at
    /// `fd` is stale (the fd was closed and reused): it counts as absent.
    pub fn ctl(&self, op: i32, fd: RawFd, conn: R, events: u32, data: u64) -> Result<(), Errno> {
        let mut ws = self.lock();
        let present = ws
            .by_fd
            .get(&fd)
            .is_some_and(|w| std::ptr::eq(&*w.conn, &*conn));
        let inner = self.inner.as_raw_fd();
        match (op, present) {
            (libc::EPOLL_CTL_ADD, true) => Err(Errno::EXIST),
            (libc::EPOLL_CTL_ADD, false) => {
                let kernel = Self::kernel_events(&conn, events);
                let same = (posts::key(&conn), conn.ino());
                match ws.retired.remove(&fd) {
                    // Still registered: only its events may differ.
                    Some((key, ino, k)) if (key, ino) == same && ino != 0 => {
                        if k != kernel {
                            epoll_ctl(inner, libc::EPOLL_CTL_MOD, fd, kernel, fd as u64)?;
                        }
                    }
                    stale => {
                        if ws.remove(fd).is_some() || stale.is_some() {
                            let _ = epoll_ctl(inner, libc::EPOLL_CTL_DEL, fd, 0, 0);
                        }
                        epoll_ctl(inner, libc::EPOLL_CTL_ADD, fd, kernel, fd as u64)?;
                    }
                }
                let w = Watch {
                    conn,
                    events,
                    data,
                    kernel,
                    disabled: false,
                    last_in: u64::MAX,
                    last_out: u64::MAX,
                    k_in: 0,
                    k_out: 0,
                    hot: false,
                    parked: false,
                    seen: 0,
                    hit: None,
                    idle_from: 0,
                };
                ws.insert(fd, w);
                Ok(())
            }
            (libc::EPOLL_CTL_MOD, true) => {
                let w = ws.by_fd.get_mut(&fd).ok_or(Errno::NOENT)?;
                w.events = events;
                w.data = data;
                w.disabled = false;
                // The kernel re-evaluates readiness on MOD: so do we.
                w.last_in = u64::MAX;
                w.last_out = u64::MAX;
                let kernel = Self::kernel_events(&w.conn, events);
                if kernel != w.kernel {
                    epoll_ctl(inner, libc::EPOLL_CTL_MOD, fd, kernel, fd as u64)?;
                    w.kernel = kernel;
                }
                ws.heat(fd);
                Ok(())
            }
            (libc::EPOLL_CTL_DEL, true) => {
                if let Some(w) = ws.remove(fd) {
                    let ino = w.conn.ino();
                    if ws.retired.len() < RETIRED_MAX && ino != 0 {
                        // A doorbell for it now only wakes us for nothing.
                        ws.retired.insert(fd, (posts::key(&w.conn), ino, w.kernel));
                        return Ok(());
                    }
                }
                let _ = epoll_ctl(inner, libc::EPOLL_CTL_DEL, fd, 0, 0);
                Ok(())
            }
            (libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL, false) => Err(Errno::NOENT),
            _ => Err(Errno::INVAL),
        }
    }

    /// Evaluates one watch; returns the events to report, updating ET and
    /// one-shot state.
    fn eval(w: &mut Watch<R>, fd: BorrowedFd<'_>, kernel: Option<PollFlags>) -> Option<u32> {
        if w.disabled {
            return None;
        }
        let conn = &*w.conn;
        let k = if conn.needs_kernel() {
            Some(kernel_view(fd))
        } else {
            kernel
        };
        // An edge-triggered watch needs the readiness and the progress
        // counters of one moment. Counters read after the readiness could
        // count a peer's EOF that it missed (RDHUP never reported); read
        // before, they could miss what the readiness itself found (a dead
        // peer's EOF): one edge too many. So: before and after, until they
        // agree; if they keep moving, the earlier ones (an edge too many,
        // never one lost).
        // None: went plain; the caller hands the fd back to the kernel.
        let ready = || conn.readiness(fd, k).map(|r| r.bits(w.events));
        let (mut ev, seq) = if w.events & EPOLLET == 0 {
            (ready()?, None)
        } else {
            let mut before = conn.progress_counters();
            let mut tries = 0;
            loop {
                let ev = ready()?;
                let after = conn.progress_counters();
                if after == before || tries == 2 {
                    break (ev, Some(before));
                }
                before = after;
                tries += 1;
            }
        };
        if ev == 0 {
            return None;
        }
        if let Some(seq) = seq {
            ev = Self::edge(w, ev, seq)?;
        }
        if w.events & EPOLLONESHOT != 0 {
            w.disabled = true;
        }
        Some(ev)
    }

    /// Of the ready events `ev` of an edge-triggered watch, those with
    /// progress since the last report: bytes written by the peer (or EOF)
    /// for input, bytes consumed by the peer for output. `seq`: the
    /// progress counters, read before `ev`.
    fn edge(w: &mut Watch<R>, ev: u32, (seq_in, seq_out): (u64, u64)) -> Option<u32> {
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
        Some(edge)
    }

    /// epoll_wait until `deadline`. `real_wait` waits on the application's
    /// epoll fd (plain fds and our cookie).
    pub fn wait<L: Lookup<Ref = R>>(
        &self,
        lk: &L,
        out: &mut [libc::epoll_event],
        deadline: Deadline,
        real_wait: &mut RealWait<'_>,
    ) -> Result<usize, Errno> {
        if out.is_empty() {
            return Err(Errno::INVAL);
        }
        sleep::wait(
            &mut EpollCall {
                set: self,
                lk,
                out,
                real_wait,
                spinner: None,
                idle: Vec::new(),
            },
            deadline,
        )
    }

    /// Takes the kernel's reports from our private epoll (doorbells,
    /// hang-ups, plain data): those watches are hot now, edge-triggered
    /// ones count the activity, and each keeps its report for the next
    /// look.
    fn take_hits(&self, ws: &mut Watches<R>) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let got = epoll_wait(rustix::fd::AsFd::as_fd(&self.inner), &mut evs, 0).unwrap_or(0);
        let next_look = ws.looks + 1;
        for e in &evs[..got] {
            let (fd, f) = (e.u64 as RawFd, poll_flags(e.events as i16));
            if let Some(w) = ws.by_fd.get_mut(&fd) {
                if f.contains(PollFlags::IN) {
                    w.k_in = w.k_in.wrapping_add(1);
                }
                if f.contains(PollFlags::OUT) {
                    w.k_out = w.k_out.wrapping_add(1);
                }
                w.hit = Some((f, next_look));
            }
            ws.heat(fd);
        }
    }

    /// Evaluates the hot watches: reports the ready ones (at most one
    /// event each per look), notes the idle ones in `idle` (with this
    /// look's number), hands back to the kernel
    /// those that went plain, and drops those whose fd no longer names
    /// their connection.
    fn scan<L: Lookup<Ref = R>>(
        &self,
        lk: &L,
        ws: &mut Watches<R>,
        out: &mut [libc::epoll_event],
        idle: &mut Vec<(RawFd, u64)>,
    ) -> usize {
        ws.looks += 1;
        let look = ws.looks;
        let mut n = 0;
        idle.clear();
        // The hot list is rewritten in place (`kept` entries so far);
        // reported watches go to the back, as the kernel requeues a
        // level-triggered fd it reports: with room for fewer events than
        // are ready, the next call starts with the others. Both vectors
        // are reused: a look allocates nothing.
        let mut hot = std::mem::take(&mut ws.hot);
        let mut reported = std::mem::take(&mut ws.reported);
        let mut kept = 0;
        for i in 0..hot.len() {
            let fd = hot[i];
            let Some(w) = ws.by_fd.get_mut(&fd) else {
                continue;
            };
            if !w.hot || w.seen == look {
                continue;
            }
            w.seen = look;
            let hit = w.hit.take().filter(|h| h.1 == look).map(|h| h.0);
            match Self::look_at(lk, fd, w, hit, n == out.len()) {
                Seen::Gone => {
                    ws.remove(fd);
                }
                Seen::Disabled => w.hot = false,
                Seen::Later => {
                    hot[kept] = fd;
                    kept += 1;
                }
                Seen::Idle => {
                    if w.idle_from == 0 {
                        w.idle_from = look;
                    }
                    idle.push((fd, look));
                    hot[kept] = fd;
                    kept += 1;
                }
                Seen::Ready(ev) => {
                    w.idle_from = 0;
                    out[n] = libc::epoll_event {
                        events: ev,
                        u64: w.data,
                    };
                    n += 1;
                    reported.push(fd);
                }
                Seen::Plain(ev) => {
                    let w = ws.remove(fd).expect("present");
                    if let Some(ev) = ev {
                        out[n] = libc::epoll_event {
                            events: ev,
                            u64: w.data,
                        };
                        n += 1;
                    }
                    n += self.hand_back(lk, fd, w, ev.is_some(), &mut out[n..]);
                }
            }
        }
        hot.truncate(kept);
        hot.append(&mut reported);
        ws.reported = reported;
        std::mem::swap(&mut ws.hot, &mut hot);
        // (Nothing heats a watch during a scan; were it so, keep it.)
        ws.hot.append(&mut hot);
        n
    }

    /// What one look makes of a hot watch (`full`: no room to report).
    fn look_at<L: Lookup<Ref = R>>(
        lk: &L,
        fd: RawFd,
        w: &mut Watch<R>,
        hit: Option<PollFlags>,
        full: bool,
    ) -> Seen {
        // Closed, or another connection now: gone, as the kernel drops a
        // closed file. One that went plain in another call is still the
        // same socket: it is handed back.
        let plain = w.conn.is_plain();
        let same = lk.names(fd, &w.conn)
            || (plain && w.conn.ino() != 0 && socket_inode(lk.borrow(fd)) == Some(w.conn.ino()));
        if !same {
            return Seen::Gone;
        }
        if w.disabled {
            return Seen::Disabled;
        }
        if full {
            return Seen::Later;
        }
        if plain {
            return Seen::Plain(None);
        }
        let ev = Self::eval(w, lk.borrow(fd), hit);
        if w.conn.is_plain() {
            // Went plain in this evaluation.
            return Seen::Plain(ev);
        }
        ev.map_or(Seen::Idle, Seen::Ready)
    }

    /// A watch whose connection went plain goes back to the application's
    /// kernel epoll with its own events; this call's kernel wait is over,
    /// so its readiness is reported now, as the kernel would have (a
    /// one-shot watch that fires goes back disabled). Returns the events
    /// written to `out` (0 or 1).
    fn hand_back<L: Lookup<Ref = R>>(
        &self,
        lk: &L,
        fd: RawFd,
        mut w: Watch<R>,
        reported: bool,
        out: &mut [libc::epoll_event],
    ) -> usize {
        let _ = epoll_ctl(self.inner.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
        let mut n = 0;
        if !w.disabled && !reported && !out.is_empty() {
            let ev = Self::plain_events(lk.borrow(fd), w.events);
            if ev != 0 {
                out[0] = libc::epoll_event {
                    events: ev,
                    u64: w.data,
                };
                n = 1;
                w.disabled = w.events & EPOLLONESHOT != 0;
            }
        }
        let events = if w.disabled { EPOLLONESHOT } else { w.events };
        let _ = epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, events, w.data);
        lk.forget(fd, &w.conn);
        n
    }

    /// What the kernel reports now for a plain socket watched for `events`.
    fn plain_events(fd: BorrowedFd<'_>, events: u32) -> u32 {
        // (The bits are u16 in rustix's raw backend, i16 in its libc one.)
        #[allow(clippy::unnecessary_cast)]
        let k = u32::from(kernel_view(fd).bits() as u16);
        let mut ev = k & (EPOLLHUP | EPOLLERR);
        if k & EPOLLIN != 0 {
            ev |= events & IN_BITS;
        }
        if k & EPOLLOUT != 0 {
            ev |= events & OUT_BITS;
        }
        ev | (k & events & EPOLLRDHUP)
    }

    /// Whether one of the last look's idle watches would report now, from
    /// ring state alone (edge-triggered ones only on a new edge in a
    /// direction they want).
    fn idle_ready(&self, idle: &[(RawFd, u64)]) -> bool {
        let ws = self.lock();
        idle.iter()
            .take(SPIN_WATCHES)
            .filter_map(|(fd, _)| ws.by_fd.get(fd))
            .any(quick_ready)
    }

    /// Asks for doorbells on the idle watches, then looks at each once
    /// more. Those that a doorbell cannot reach yet (capped: the sleep is
    /// bounded) and those ready already (no doorbell will come for them)
    /// leave `idle` and stay hot; the rest may be parked.
    fn arm_idle(&self, idle: &mut Vec<(RawFd, u64)>) -> Armed {
        Self::arm_in(&self.lock(), idle)
    }

    fn arm_in(ws: &Watches<R>, idle: &mut Vec<(RawFd, u64)>) -> Armed {
        let (mut capped, mut ready) = (false, false);
        for (fd, _) in idle.iter() {
            if let Some(w) = ws.by_fd.get(fd) {
                let (r, wr) = w.wants();
                w.conn.arm(r, wr);
            }
        }
        idle.retain(|(fd, _)| {
            let Some(w) = ws.by_fd.get(fd) else {
                return false;
            };
            let unreachable = bell_less(&w.conn, w.events & OUT_BITS != 0);
            let now = quick_ready(w);
            capped |= unreachable;
            ready |= now;
            !unreachable && !now
        });
        Armed { capped, ready }
    }

    /// After a look that reported: arms and parks, under one lock, only
    /// the watches idle for [`PARK_AFTER_LOOKS`] looks; the others stay
    /// hot and unarmed.
    fn park_long_idle(&self, idle: &mut Vec<(RawFd, u64)>) {
        let mut guard = self.lock();
        // Another thread's look since ours makes ours stale: not parked.
        Self::keep_long_idle(&guard, idle);
        if idle.is_empty() {
            return;
        }
        Self::arm_in(&guard, idle);
        Self::park_in(&mut guard, idle);
    }

    /// Parks the idle watches, armed and found still idle since. One that
    /// another look evaluated meanwhile (another thread's epoll_wait) may
    /// have used up its doorbell, and one whose doorbell was taken after
    /// the look (a look that served the rings first) has news: they stay
    /// hot, and so do up to [`HOT_ACROSS_SLEEP`] recently active ones
    /// (armed: a doorbell still wakes the sleep).
    fn park_idle(&self, idle: &mut Vec<(RawFd, u64)>) {
        let mut guard = self.lock();
        let mut kept = 0;
        idle.retain(|(fd, look)| {
            let recent = guard.by_fd.get(fd).is_some_and(|w| !w.long_idle(*look));
            if recent && kept < HOT_ACROSS_SLEEP {
                kept += 1;
                return false;
            }
            true
        });
        Self::park_in(&mut guard, idle);
    }

    /// Leaves in `idle` only the watches idle for [`PARK_AFTER_LOOKS`]
    /// looks (and seen by the look that listed them).
    fn keep_long_idle(ws: &Watches<R>, idle: &mut Vec<(RawFd, u64)>) {
        idle.retain(|(fd, look)| {
            ws.by_fd
                .get(fd)
                .is_some_and(|w| w.seen == *look && w.long_idle(*look))
        });
    }

    fn park_in(ws: &mut Watches<R>, idle: &mut Vec<(RawFd, u64)>) {
        for (fd, look) in idle.drain(..) {
            if let Some(w) = ws.by_fd.get_mut(&fd)
                && w.hot
                && !w.parked
                && w.seen == look
                && w.hit.is_none()
            {
                w.hot = false;
                w.parked = true;
                w.conn.park();
            }
        }
        let by_fd = &ws.by_fd;
        ws.hot.retain(|fd| by_fd.get(fd).is_some_and(|w| w.hot));
    }
}

/// What a look made of a hot watch.
enum Seen {
    /// Its fd no longer names its connection.
    Gone,
    /// One-shot, fired: waits for EPOLL_CTL_MOD.
    Disabled,
    /// Not evaluated (no room left): the next look.
    Later,
    Idle,
    Ready(u32),
    /// The connection went plain: back to the kernel, with this report.
    Plain(Option<u32>),
}
