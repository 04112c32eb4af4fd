//! News for parked epoll watches (docs/DESIGN.md, "epoll").
//!
//! An emulated epoll set evaluates only its hot watches. An idle watch is
//! parked once it has asked the peer for a doorbell: the doorbell's edge
//! on the socket heats it again. A call of this process that changes the
//! connection's readiness without such an edge (a read that takes a
//! doorbell meant for the set, a switch, a shutdown, a close) posts the
//! connection here, and every set reads the posts at its next look.
//!
//! The board is a ring of the last [`POSTS`] posts, lock-free, so that a
//! signal handler may post. A reader that fell behind, or met a post in
//! the making, is told to look at all its watches.

use super::Conn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

const POSTS: usize = 256;

struct Post {
    /// The post's number + 1, written last.
    stamp: AtomicU64,
    conn: AtomicUsize,
}

static SEQ: AtomicU64 = AtomicU64::new(0);
static BOARD: [Post; POSTS] = [const {
    Post {
        stamp: AtomicU64::new(0),
        conn: AtomicUsize::new(0),
    }
}; POSTS];

/// What a set knows a connection by on the board.
pub fn key(c: &Conn) -> usize {
    std::ptr::from_ref(c) as usize
}

/// Where the board is now: a new set reads from here.
pub fn cursor() -> u64 {
    SEQ.load(Acquire)
}

/// The posts since `cursor`, which moves past them. False if some were
/// lost (overwritten, or still being written): look at everything.
#[must_use]
pub fn read(cursor: &mut u64, mut f: impl FnMut(usize)) -> bool {
    let end = SEQ.load(Acquire);
    let from = std::mem::replace(cursor, end);
    if end.wrapping_sub(from) > POSTS as u64 {
        return false;
    }
    for s in from..end {
        let p = &BOARD[(s % POSTS as u64) as usize];
        let stamp = p.stamp.load(Acquire);
        let conn = p.conn.load(Relaxed);
        // Re-read: a writer that overwrote the post meanwhile changed it.
        if stamp != s + 1 || p.stamp.load(Acquire) != stamp {
            return false;
        }
        f(conn);
    }
    true
}

impl Conn {
    /// An epoll set parked its watch of this connection: until it is
    /// heated again, readiness changes of our own making are posted.
    pub fn park(&self) {
        self.parked.fetch_add(1, SeqCst);
    }

    /// The set heated (or dropped) its parked watch.
    pub fn unpark(&self) {
        self.parked.fetch_sub(1, SeqCst);
    }

    /// Our own call changed what a readiness look would find (or closed
    /// one of the connection's descriptors, which a set drops).
    pub fn changed(&self) {
        if self.parked.load(SeqCst) == 0 {
            return;
        }
        post(key(self));
    }
}

fn post(conn: usize) {
    let s = SEQ.fetch_add(1, AcqRel);
    let p = &BOARD[(s % POSTS as u64) as usize];
    // Invalid while rewritten: a reader that sees the old stamp with the
    // new connection would miss the post.
    p.stamp.store(0, Release);
    p.conn.store(conn, Relaxed);
    p.stamp.store(s + 1, Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the board is process-wide.
    #[test]
    fn posts_are_read_once_and_overflow_says_so() {
        let mut c = cursor();
        post(7);
        post(9);
        let mut got = Vec::new();
        assert!(read(&mut c, |k| got.push(k)));
        let at = got.iter().position(|&k| k == 7).expect("posted");
        assert_eq!(got.get(at + 1), Some(&9));
        got.clear();
        assert!(read(&mut c, |k| got.push(k)));
        assert!(got.is_empty());
        for i in 0..POSTS + 1 {
            post(i);
        }
        assert!(!read(&mut c, |_| {}));
        assert!(read(&mut c, |_| {}));
    }
}
