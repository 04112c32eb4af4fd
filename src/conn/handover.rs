//! A connection carried across exec: `TSSS_HANDOVER` describes each one in
//! a line of numbers (see the shim's exec hooks), and the new image adopts
//! it with a side block of its own.

use super::state::Phase;
use super::{Conn, Role};
use crate::shm::side::SideBlock;
use crate::sync::Ordering::{Acquire, Release};
use rustix::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;

/// The side block's flags in the handover line's third number, one bit
/// each, declared once for both directions of the trip.
type Flag = fn(&SideBlock) -> &AtomicBool;
const FLAGS: [(u32, Flag); 8] = [
    (1 << 0, |b| &b.nonblock),
    (1 << 1, |b| &b.rx_ring),
    (1 << 2, |b| &b.tx_ring),
    (1 << 4, |b| &b.sock_eof),
    (1 << 5, |b| &b.reset_taken),
    (1 << 6, |b| &b.shut_rd),
    (1 << 7, |b| &b.shut_wr),
    (1 << 8, |b| &b.kernel_reset),
];
/// Other processes hold the connection too (counted in another block).
const SHARED: u32 = 1 << 9;

/// Side block count of a connection adopted after exec while other
/// processes, counted in another block, still hold it.
const SHARED_UNCOUNTED: u32 = 1 << 30;

impl Conn {
    /// The state a new program image needs to carry on with this
    /// connection after execve: one line of space-separated numbers
    /// (role, phase, flags, plain read, limit + 1, plain written, shmid,
    /// nonce, ring sizes).
    ///
    /// The new image gets a side block of its own: if other processes
    /// share the connection (`shared`, or counted here), it cannot count
    /// them, and leaves the ending to the socket's EOF.
    pub fn export(&self, shared: bool) -> String {
        let b = self.sb();
        let shared = shared || b.sharers.load(Acquire) > 1;
        let mut flags = FLAGS
            .iter()
            .filter(|(_, f)| f(b).load(Acquire))
            .fold(0, |acc, (bit, _)| acc | bit);
        if shared {
            flags |= SHARED;
        }
        format!(
            "{} {} {} {} {} {} {} {} {}",
            match self.role {
                Role::Client => 0,
                Role::Server => 1,
            },
            b.state.load(Acquire),
            flags,
            b.plain_read.load(Acquire),
            b.limit_plus1.load(Acquire),
            b.plain_written.load(Acquire),
            b.seg_shmid.load(Acquire),
            b.seg_nonce.load(Acquire),
            b.seg_caps.load(Acquire)
        )
    }

    /// Rebuilds a connection from [`export`](Self::export) in a new program
    /// image. The segment is attached (and its nonce checked) on first use.
    /// An unknown phase is rejected, never taken for another.
    pub fn adopt(fd: BorrowedFd<'_>, line: &str) -> Result<Conn, String> {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|w| w.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| "malformed handover".to_string())?;
        let [
            role,
            phase,
            flags,
            plain_read,
            limit_plus1,
            plain_written,
            shmid,
            nonce,
            caps,
        ] = v[..]
        else {
            return Err("malformed handover".into());
        };
        let role = if role == 0 {
            Role::Client
        } else {
            Role::Server
        };
        let phase = u8::try_from(phase)
            .ok()
            .and_then(Phase::decode)
            .ok_or("bad state")?;
        if phase == Phase::Plain {
            return Err("plain".into());
        }
        let flags = flags as u32;
        let c = Self::new(fd, role, phase, flags & 1 != 0)?;
        let b = c.sb();
        for (bit, f) in FLAGS {
            f(b).store(flags & bit != 0, Release);
        }
        if flags & SHARED != 0 {
            // Other holders we cannot count: never the last one.
            b.sharers.store(SHARED_UNCOUNTED, Release);
        }
        b.plain_read.store(plain_read, Release);
        b.limit_plus1.store(limit_plus1, Release);
        b.plain_written.store(plain_written, Release);
        b.seg_shmid.store(shmid, Release);
        b.seg_nonce.store(nonce, Release);
        b.seg_caps.store(caps, Release);
        Ok(c)
    }
}
