//! The watches of one emulated epoll set, indexed so that a wait costs
//! O(ready), not O(watched) (docs/DESIGN.md, "epoll: O(ready)").

use crate::conn::{Conn, posts};
use rustix::event::PollFlags;
use rustix::fd::RawFd;
use std::collections::HashMap;
use std::ops::Deref;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// One accelerated fd in an [`EpollSet`](super::EpollSet).
pub(super) struct Watch<R> {
    pub(super) conn: R,
    /// The application's events and data.
    pub(super) events: u32,
    pub(super) data: u64,
    /// Events registered for the fd in our private epoll.
    pub(super) kernel: u32,
    /// One-shot watch that fired and awaits EPOLL_CTL_MOD.
    pub(super) disabled: bool,
    /// Edge-triggered state: progress counters when last reported.
    pub(super) last_in: u64,
    pub(super) last_out: u64,
    /// Kernel activity counters for directions that are still plain.
    pub(super) k_in: u64,
    pub(super) k_out: u64,
    /// In the hot list: every look evaluates it. A look that finds it idle
    /// asks the peer for doorbells and parks it; then it costs nothing
    /// until a doorbell, a hang-up or plain data makes the kernel report
    /// it, or our own process posts a change (`conn::posts`).
    pub(super) hot: bool,
    /// Parked: counted in the connection's parked watches.
    pub(super) parked: bool,
    /// The look that last evaluated it (one report per look).
    pub(super) seen: u64,
    /// The first look of its current idle streak (0: it was ready at
    /// its last look).
    pub(super) idle_from: u64,
    /// What the private epoll reported for it, and for which look.
    pub(super) hit: Option<(PollFlags, u64)>,
}

impl<R> Watch<R> {
    /// Whether it waits for input, and for room to write.
    pub(super) fn wants(&self) -> (bool, bool) {
        (
            self.events & super::IN_BITS != 0,
            self.events & super::OUT_BITS != 0,
        )
    }

    /// Whether it has been idle for [`super::PARK_AFTER_LOOKS`] looks as
    /// of `look`: a reporting look may park it, a sleep parks it.
    pub(super) fn long_idle(&self, look: u64) -> bool {
        self.idle_from != 0 && look.saturating_sub(self.idle_from) >= super::PARK_AFTER_LOOKS
    }
}

/// The watches of a set, indexed by fd, and which of them may be ready:
/// a wait costs O(ready), not O(watched).
pub(super) struct Watches<R> {
    pub(super) by_fd: FastMap<RawFd, Watch<R>>,
    /// The fds watching each connection (by `posts::key`).
    pub(super) by_conn: FastMap<usize, Vec<RawFd>>,
    /// The hot watches' fds, each at least once (see [`Watch::hot`]).
    pub(super) hot: Vec<RawFd>,
    /// A look's reported watches, before they join the back of `hot`
    /// (kept empty, for its allocation).
    pub(super) reported: Vec<RawFd>,
    /// Looks so far.
    pub(super) looks: u64,
    /// Where this set is on the board of posts.
    pub(super) posts: u64,
    /// Deleted watches whose registration in the private epoll was kept:
    /// fd -> (connection key, socket inode, kernel events). Event loops
    /// such as redis's delete and re-add a socket around every request;
    /// re-adding the same socket then costs no system call. Nothing is
    /// held: the key and the inode together say it is the same socket.
    pub(super) retired: FastMap<RawFd, (usize, u64, u32)>,
}

/// Retired registrations kept at most (more are deleted for real).
pub(super) const RETIRED_MAX: usize = 4096;

impl<R: Deref<Target = Conn>> Watches<R> {
    pub(super) fn new() -> Self {
        Watches {
            by_fd: FastMap::default(),
            by_conn: FastMap::default(),
            hot: Vec::new(),
            reported: Vec::new(),
            looks: 0,
            posts: posts::cursor(),
            retired: FastMap::default(),
        }
    }

    pub(super) fn insert(&mut self, fd: RawFd, w: Watch<R>) {
        self.by_conn
            .entry(posts::key(&w.conn))
            .or_default()
            .push(fd);
        self.by_fd.insert(fd, w);
        // The kernel reports an fd that is ready when added.
        self.heat(fd);
    }

    pub(super) fn remove(&mut self, fd: RawFd) -> Option<Watch<R>> {
        let mut w = self.by_fd.remove(&fd)?;
        let key = posts::key(&w.conn);
        if let Some(fds) = self.by_conn.get_mut(&key) {
            fds.retain(|&f| f != fd);
            if fds.is_empty() {
                self.by_conn.remove(&key);
            }
        }
        unpark(&mut w);
        Some(w)
    }

    /// The next look evaluates `fd`.
    pub(super) fn heat(&mut self, fd: RawFd) {
        if let Some(w) = self.by_fd.get_mut(&fd)
            && !w.hot
        {
            unpark(w);
            w.hot = true;
            self.hot.push(fd);
        }
    }

    /// Heats the watches of the connections posted since the last look,
    /// or every watch if posts were lost.
    pub(super) fn read_posts(&mut self) {
        let mut keys = Vec::new();
        if !posts::read(&mut self.posts, |k| keys.push(k)) {
            let all: Vec<RawFd> = self.by_fd.keys().copied().collect();
            all.into_iter().for_each(|fd| self.heat(fd));
            return;
        }
        for k in keys {
            let fds = self.by_conn.get(&k).cloned().unwrap_or_default();
            fds.into_iter().for_each(|fd| self.heat(fd));
        }
    }
}

fn unpark<R: Deref<Target = Conn>>(w: &mut Watch<R>) {
    if std::mem::take(&mut w.parked) {
        w.conn.unpark();
    }
}
