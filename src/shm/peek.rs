//! A read-only look into a live connection's segment from outside the
//! connection: the byte counters `tsss stat` shows.
//!
//! Everything read is untrusted: the id comes from a registry file (which
//! may be stale, or forged by its owner), the id may be gone or reused by
//! another segment, and either peer may have written anything into the
//! header. So the segment's size and owners are checked before attaching
//! (read-only: nothing done here can change it), its magic and nonce
//! after, and each index pair against `tail <= head <= tail + capacity`.

use super::layout::{Dir, HDR_SIZE, SEG_MAGIC, SegHeader};
use super::protocol;
use crate::os::shm as sys;
use crate::sync::Ordering::Acquire;
use std::ptr::NonNull;

/// What one direction's ring says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirStats {
    /// Bytes the writer sent over the socket before the switch, once it
    /// published the switch.
    pub plain: Option<u64>,
    /// Ring indices: bytes written into / read from the ring.
    pub head: u64,
    pub tail: u64,
    /// Before the switch: plain bytes the reader has read so far.
    pub plain_read: u64,
}

impl DirStats {
    /// Bytes the writer wrote in all (socket, then ring), once switched.
    pub fn written(&self) -> Option<u64> {
        self.plain.map(|p| p.saturating_add(self.head))
    }

    /// Bytes the reader consumed in all (before the switch: what it read
    /// from the socket so far).
    pub fn read(&self) -> u64 {
        match self.plain {
            Some(p) => p.saturating_add(self.tail),
            None => self.plain_read,
        }
    }

    /// Bytes waiting in the ring.
    pub fn fill(&self) -> u64 {
        self.head - self.tail
    }
}

/// Both directions of a segment, indexed like [`Dir`].
pub type SegStats = [DirStats; 2];

/// Reads the counters of segment `shmid`, which must be owned or created
/// by `owner` (the uid whose registry named it), hold at least the two
/// rings of `caps` (client-to-server, server-to-client), and carry `nonce`.
pub fn read(shmid: i32, owner: u32, caps: [u32; 2], nonce: u64) -> Result<SegStats, String> {
    if caps
        .iter()
        .any(|&c| !c.is_power_of_two() || !(4096..=64 << 20).contains(&c))
    {
        return Err(format!("invalid ring sizes {}+{}", caps[0], caps[1]));
    }
    let need = HDR_SIZE + caps[0] as usize + caps[1] as usize;
    let st = sys::stat(shmid).map_err(|e| format!("segment {shmid}: {e}"))?;
    if st.size < need {
        return Err(format!("segment {shmid} is smaller than its rings"));
    }
    if st.uid != owner && st.cuid != owner {
        return Err(format!(
            "segment {shmid} belongs to uid {}/{}, not to the process's uid {owner}",
            st.cuid, st.uid
        ));
    }
    let seg = Mapping::attach(shmid)?;
    // The id may have been reused between the check and the attach: check
    // the segment we now hold (the nonce below tells ours from another).
    match sys::stat(shmid) {
        Ok(st) if st.size >= need && (st.uid == owner || st.cuid == owner) => {}
        _ => return Err(format!("segment {shmid} changed while attaching")),
    }
    let h = seg.header();
    if h.magic.load(Acquire) != SEG_MAGIC || h.nonce.load(Acquire) != nonce {
        return Err(format!(
            "segment {shmid} is not this connection's (id reused)"
        ));
    }
    let dir = |d: Dir| -> Result<DirStats, String> {
        let c = &h.rings[d as usize];
        let cap = u64::from(caps[d as usize]);
        // tail first: the reader only ever moves it towards head.
        let tail = c.tail.load(Acquire);
        let head = c.head.load(Acquire);
        if tail > head || head - tail > cap {
            return Err(format!(
                "segment {shmid}: corrupt indices (head {head}, tail {tail})"
            ));
        }
        Ok(DirStats {
            plain: protocol::switch_point(&c.flags),
            head,
            tail,
            plain_read: protocol::plain_read(&c.flags),
        })
    };
    Ok([dir(Dir::ClientToServer)?, dir(Dir::ServerToClient)?])
}

/// A read-only attachment, detached on drop.
struct Mapping(NonNull<u8>);

impl Mapping {
    fn attach(shmid: i32) -> Result<Mapping, String> {
        let p =
            sys::attach(shmid, true).map_err(|e| format!("cannot attach segment {shmid}: {e}"))?;
        NonNull::new(p)
            .map(Mapping)
            .ok_or_else(|| format!("cannot attach segment {shmid}"))
    }

    fn header(&self) -> &SegHeader {
        // SAFETY: the mapping is at least HDR_SIZE >= size_of::<SegHeader>()
        // bytes (`read` checks the size of the segment it holds, and a
        // segment's size never changes), page aligned, and every field of SegHeader is an
        // atomic, so the owners' concurrent writes are no data race. We only
        // load: the mapping is read-only.
        unsafe { &*(self.0.as_ptr() as *const SegHeader) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: attached by `attach`; the only borrow (`header`) ends
        // with `self`.
        unsafe { sys::detach(self.0.as_ptr()) };
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use crate::shm::ring::SrcCursor;
    use crate::shm::segment::Segment;

    #[test]
    fn counts_what_went_through_and_checks_the_nonce() {
        let me = rustix::process::geteuid().as_raw();
        let (s, h) = Segment::create(1 << 12, 1 << 13, None).unwrap();
        let caps = [h.cap_c2s, h.cap_s2c];
        let bufs = [std::io::IoSlice::new(b"hello")];
        let s2c = s.ring(Dir::ServerToClient);
        assert_eq!(s2c.producer().push(&mut SrcCursor::new(&bufs)).unwrap(), 5);
        protocol::publish_switch(s2c.flags(), 40);
        let st = read(h.shmid, me, caps, h.nonce).unwrap();
        let d = st[Dir::ServerToClient as usize];
        assert_eq!((d.written(), d.read(), d.fill()), (Some(45), 40, 5));
        let c = st[Dir::ClientToServer as usize];
        assert_eq!((c.written(), c.read(), c.fill()), (None, 0, 0));
        assert!(read(h.shmid, me, caps, h.nonce ^ 1).is_err(), "nonce");
        assert!(
            read(h.shmid, me, [1 << 12, 1 << 20], h.nonce).is_err(),
            "size"
        );
        assert!(
            read(h.shmid, me.wrapping_add(1), caps, h.nonce).is_err(),
            "owner"
        );
        assert!(read(h.shmid, me, [3, 3], h.nonce).is_err(), "caps");
    }
}
