//! State of one side of a connection, shared by every process of that side
//! (a forked child uses the same connection as its parent) and invisible to
//! the peer.
//!
//! It lives in a one-page shared anonymous mapping (`os::page`), so fork
//! shares it instead of copying it: two processes of one side can never
//! publish different switch offsets or race on a ring. Across exec the
//! mapping is gone and the new image gets a fresh block (see `handover`).

use crate::os::page::{PageSafe, SharedPage};
use crate::os::proc;
use crate::signals::Critical;
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use rustix::io::Errno;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64};

/// The shared state. All fields are atomics; the `*_lock`s serialise the
/// plain-phase counters and the rings' producer/consumer sides.
#[repr(C)]
pub struct SideBlock {
    /// The connection's phase (`conn::state::Phase`).
    pub state: AtomicU8,
    pub nonblock: AtomicBool,
    /// All plain bytes of the incoming direction consumed: ring phase.
    pub rx_ring: AtomicBool,
    /// Our writes go to the ring.
    pub tx_ring: AtomicBool,
    /// The peer is gone (EOF/HUP on the socket after its switch).
    pub sock_eof: AtomicBool,
    /// The peer's ECONNRESET was reported.
    pub reset_taken: AtomicBool,
    /// The kernel reported the peer's ECONNRESET to one of our own reads
    /// (doorbells), and it was about the application's bytes: owed to it.
    pub kernel_reset: AtomicBool,
    /// Our last plain send found the kernel's buffer full (EAGAIN).
    pub plain_eagain: AtomicBool,
    /// We switched to the ring with the kernel's buffer still full: the
    /// peer's published plain byte count + 1 then (0: not so). Nothing more
    /// fits until it reads on, as with the kernel.
    pub plain_full: AtomicU64,
    pub shut_rd: AtomicBool,
    pub shut_wr: AtomicBool,
    /// The socket's SO_RCVLOWAT (0: not read yet): how many bytes a
    /// blocking read waits for.
    pub rcvlowat: AtomicU32,
    /// The program's SO_PEEK_OFF, plus one (0: off). Kept here, never in
    /// the kernel: our own peeks at doorbells would move it.
    pub peek_off_plus1: AtomicI64,
    /// Processes holding this side open.
    pub sharers: AtomicU32,
    pub rx_lock: ShmLock,
    pub tx_lock: ShmLock,
    /// Plain bytes consumed / the peer's published switch point (+1, 0 =
    /// unknown) / plain bytes sent; guarded by the rx and tx locks.
    pub plain_read: AtomicU64,
    pub limit_plus1: AtomicU64,
    pub plain_written: AtomicU64,
    /// Unread plain bytes known to precede any switch point (a FIONREAD
    /// taken while none was published, less what was read since); 0:
    /// ask the kernel. Guarded by the rx lock.
    pub plain_known: AtomicU64,
    /// The segment (from HELLO), so that any process of this side can
    /// attach it: the client may have attached in another process.
    pub seg_shmid: AtomicU64,
    pub seg_nonce: AtomicU64,
    pub seg_caps: AtomicU64,
}

// SAFETY: every field is an atomic (ShmLock: two atomics), zero is a valid
// value of each, and the block fits a page (asserted below).
unsafe impl PageSafe for SideBlock {}

/// A [`SideBlock`] in a page shared with future fork children.
pub struct Side {
    page: SharedPage<SideBlock>,
}

impl Side {
    /// A fresh, zeroed block, counting this process as its one sharer.
    pub fn new() -> Result<Side, Errno> {
        let side = Side {
            page: SharedPage::new()?,
        };
        side.block().sharers.store(1, Release);
        Ok(side)
    }

    pub fn block(&self) -> &SideBlock {
        &self.page
    }
}

const _: () = assert!(core::mem::size_of::<SideBlock>() <= 4096);

/// A lock in memory shared between processes (a futex without
/// FUTEX_PRIVATE_FLAG). A holder killed by a signal cannot wedge the other
/// processes: a waiter that times out checks whether the holder's process
/// still exists and takes the lock over if not.
#[repr(C)]
pub struct ShmLock {
    /// 0 free, 1 locked, 2 locked with waiters.
    word: AtomicU32,
    /// Process id of the holder, for the liveness check.
    owner: AtomicU32,
}

/// Holding a lock is a signal [`Critical`] section: a handler that
/// touched the same connection would wait for its own thread forever.
pub struct ShmGuard<'a>(&'a ShmLock, #[allow(dead_code)] Critical);

impl ShmLock {
    pub fn try_lock(&self) -> Option<ShmGuard<'_>> {
        let c = Critical::enter();
        self.word.compare_exchange(0, 1, Acquire, Relaxed).ok()?;
        self.owner.store(pid(), Relaxed);
        Some(ShmGuard(self, c))
    }

    pub fn lock(&self) -> ShmGuard<'_> {
        let crit = Critical::enter();
        if self.word.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            self.owner.store(pid(), Relaxed);
            return ShmGuard(self, crit);
        }
        // Drepper's "futexes are tricky" mutex #3.
        let mut c = self.word.swap(2, Acquire);
        while c != 0 {
            let nap = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            let r = rustix::thread::futex::wait(
                &self.word,
                rustix::thread::futex::Flags::empty(),
                2,
                Some(&nap),
            );
            if r == Err(Errno::TIMEDOUT) {
                let holder = self.owner.load(Relaxed);
                if holder != 0
                    && !process_alive(holder)
                    && self
                        .owner
                        .compare_exchange(holder, 0, Relaxed, Relaxed)
                        .is_ok()
                {
                    // The holder died inside a call: free the lock; the
                    // swap below then takes it.
                    self.word.store(0, Release);
                }
            }
            c = self.word.swap(2, Acquire);
        }
        self.owner.store(pid(), Relaxed);
        ShmGuard(self, crit)
    }
}

impl Drop for ShmGuard<'_> {
    fn drop(&mut self) {
        self.0.owner.store(0, Relaxed);
        if self.0.word.swap(0, Release) == 2 {
            let _ =
                rustix::thread::futex::wake(&self.0.word, rustix::thread::futex::Flags::empty(), 1);
        }
    }
}

/// The lock's holder: the cached pid, as every acquisition records it (a
/// raw clone() child records its parent, which only weakens the
/// dead-holder check).
fn pid() -> u32 {
    proc::cached_pid() as u32
}

fn process_alive(p: u32) -> bool {
    proc::process_exists(p as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_across_fork() {
        let side = Side::new().unwrap();
        let b = side.block();
        // SAFETY: the child only touches atomics in the shared page and exits.
        match unsafe { libc::fork() } {
            0 => {
                b.plain_written.store(42, Relaxed);
                let _g = b.tx_lock.lock();
                // SAFETY: leave without running the parent's test harness.
                unsafe { libc::_exit(0) };
            }
            child => {
                let mut st = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut st, 0) };
                assert_eq!(b.plain_written.load(Relaxed), 42);
                // The child died holding the lock: we still get it.
                let t = std::time::Instant::now();
                drop(b.tx_lock.lock());
                assert!(t.elapsed() < std::time::Duration::from_secs(2));
            }
        }
    }

    #[test]
    fn lock_excludes_threads() {
        let side = Side::new().unwrap();
        let b = side.block();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let _g = b.rx_lock.lock();
                        let v = b.plain_read.load(Relaxed);
                        b.plain_read.store(v + 1, Relaxed);
                    }
                });
            }
        });
        assert_eq!(b.plain_read.load(Relaxed), 40_000);
    }
}
