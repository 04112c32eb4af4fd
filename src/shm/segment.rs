//! One SysV shared-memory segment per connection: header plus two rings.
//!
//! The server creates it 0600, grants the peer's uid if it differs, and marks
//! it for removal (IPC_RMID) before the id ever leaves the process: the kernel
//! frees it when the last process detaches, so nothing leaks even after
//! kill -9. The client attaches by id and checks size, mode, removal mark and
//! the nonce before trusting the mapping's geometry.

use super::layout::{Dir, HDR_SIZE, SEG_MAGIC, SegHeader};
use super::ring::Ring;
use crate::os::shm as sys;
use crate::os::{proc, shm::ShmStat};
use crate::sync::Ordering::{Acquire, Release};
use crate::wire::{Hello, PROTO_VERSION};
use rustix::io::Errno;
use std::ptr::NonNull;

pub struct Segment {
    base: NonNull<u8>,
    shmid: i32,
    caps: [usize; 2],
}

// SAFETY: the mapping is process-wide and all shared words are atomics.
unsafe impl Send for Segment {}
// SAFETY: as above; ring access is serialised by the connection's locks.
unsafe impl Sync for Segment {}

/// Why a client could not use the offered segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    Stat(Errno),
    Attach(Errno),
    TooSmall,
    BadMode(u32),
    NotOurs,
    NotMarkedForRemoval,
    BadHeader,
}

impl core::fmt::Display for AttachError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttachError::Stat(e) => write!(f, "shmctl(IPC_STAT) failed: {e}"),
            AttachError::Attach(e) => write!(f, "shmat failed: {e}"),
            AttachError::TooSmall => f.write_str("segment smaller than announced"),
            AttachError::BadMode(m) => write!(f, "segment mode {m:o} is not private"),
            AttachError::NotOurs => f.write_str("segment not owned by us or the peer"),
            AttachError::NotMarkedForRemoval => f.write_str("segment not marked for removal"),
            AttachError::BadHeader => f.write_str("segment header does not match HELLO"),
        }
    }
}

impl Segment {
    /// Creates, attaches and marks a new segment; returns it with the HELLO
    /// that describes it.
    pub fn create(
        cap_c2s: usize,
        cap_s2c: usize,
        grant_uid: Option<u32>,
    ) -> Result<(Segment, Hello), Errno> {
        static FIRST: std::sync::Once = std::sync::Once::new();
        FIRST.call_once(|| {
            sweep_orphans();
        });
        let size = HDR_SIZE + cap_c2s + cap_s2c;
        let id = match sys::create(size) {
            // Orphans may be what fills the table: collect them, once more.
            Err(Errno::NOSPC) if full_table_sweep_due() && sweep_orphans() > 0 => {
                sys::create(size)?
            }
            r => r?,
        };
        // Attach and mark for removal back to back: a segment nobody has
        // attached is destroyed by IPC_RMID at once, so there is a window
        // of two syscalls in which kill -9 leaves it behind (see
        // `sweep_orphans`).
        let base = match sys::attach(id, false) {
            Ok(p) => p,
            Err(e) => {
                let _ = sys::remove(id);
                return Err(e);
            }
        };
        let removed = sys::remove(id);
        let seg = Segment {
            base: NonNull::new(base).ok_or(Errno::FAULT)?,
            shmid: id,
            caps: [cap_c2s, cap_s2c],
        };
        removed?;
        // A segment marked for removal can still be granted and attached.
        grant_uid.map_or(Ok(()), |uid| sys::grant(id, uid))?;
        let mut nonce = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty());
        let nonce = u64::from_ne_bytes(nonce) | 1;
        let h = seg.header();
        h.version.store(u32::from(PROTO_VERSION), Release);
        h.nonce.store(nonce, Release);
        h.magic.store(SEG_MAGIC, Release);
        let hello = Hello {
            version: PROTO_VERSION,
            hdr_size: HDR_SIZE as u32,
            shmid: id,
            cap_c2s: cap_c2s as u32,
            cap_s2c: cap_s2c as u32,
            nonce,
        };
        Ok((seg, hello))
    }

    /// Attaches the segment a (validated) HELLO names, checking that it is
    /// private, marked for removal, large enough, and the one the server made.
    pub fn attach(h: &Hello, my_uid: u32) -> Result<Segment, AttachError> {
        let check = |st: &ShmStat| {
            if st.size < h.seg_size() {
                return Err(AttachError::TooSmall);
            }
            if st.mode & 0o077 != 0 {
                return Err(AttachError::BadMode(st.mode & 0o777));
            }
            if st.mode & sys::SHM_DEST == 0 {
                return Err(AttachError::NotMarkedForRemoval);
            }
            if st.uid != my_uid && st.cuid != my_uid {
                return Err(AttachError::NotOurs);
            }
            Ok(())
        };
        check(&sys::stat(h.shmid).map_err(AttachError::Stat)?)?;
        let base = sys::attach(h.shmid, false).map_err(AttachError::Attach)?;
        let seg = Segment {
            base: NonNull::new(base).ok_or(AttachError::Attach(Errno::FAULT))?,
            shmid: h.shmid,
            caps: [h.cap_c2s as usize, h.cap_s2c as usize],
        };
        // The id may have been reused between stat and attach: check again
        // on the segment we now hold, then the nonce.
        check(&sys::stat(h.shmid).map_err(AttachError::Stat)?)?;
        let hd = seg.header();
        if hd.magic.load(Acquire) != SEG_MAGIC
            || hd.nonce.load(Acquire) != h.nonce
            || hd.version.load(Acquire) != u32::from(h.version)
        {
            return Err(AttachError::BadHeader);
        }
        Ok(seg)
    }

    pub fn shmid(&self) -> i32 {
        self.shmid
    }

    pub fn cap(&self, d: Dir) -> usize {
        self.caps[d as usize]
    }

    pub fn header(&self) -> &SegHeader {
        // SAFETY: the mapping starts with HDR_SIZE >= size_of::<SegHeader>()
        // bytes, page aligned, and every field is an atomic, so concurrent
        // writes by the peer are not data races.
        unsafe { &*(self.base.as_ptr() as *const SegHeader) }
    }

    pub fn ring(&self, d: Dir) -> Ring<'_> {
        let off = HDR_SIZE
            + if d == Dir::ClientToServer {
                0
            } else {
                self.caps[0]
            };
        // SAFETY: off + cap <= seg_size, which was checked against the
        // segment's real size (attach) or is its size (create).
        let data = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(off)) };
        // SAFETY: data is valid for cap bytes while self is mapped; caps are
        // powers of two (validated from HELLO or chosen by us).
        unsafe {
            Ring::new(
                &self.header().rings[d as usize],
                data,
                self.caps[d as usize],
            )
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: attached by us; the owner (Conn) is gone, so are all borrows.
        unsafe { sys::detach(self.base.as_ptr()) };
    }
}

/// Whether a full segment table may be swept for orphans now: at most once
/// a second per process. A sweep reads /proc/sysvipc/shm, about 150 bytes
/// per segment (600 KiB at the default shmmni of 4096), and a server past
/// the limit meets a full table at every accept: sweeping each time cost
/// 6-10 ms per connection.
fn full_table_sweep_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::os::time::now_ns();
    let last = LAST.load(Relaxed);
    (last == 0 || now.saturating_sub(last) >= 1_000_000_000)
        && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
}

/// Removes segments that a tsss process created and was killed before it
/// could attach them and mark them for removal: private (key 0), mode
/// exactly 0600 (no removal mark), not attached, never attached by anyone
/// but its creator (the id leaves a process only once marked), created by
/// this user, a creator that no longer exists,
/// and a tsss size (the header plus two equal power-of-two rings). Nothing
/// else matches all of these but a segment its dead creator meant to hand
/// over by id, never to be attached by itself. Returns how many went.
///
/// Run by a process's first segment creation, when the table is full, and
/// by a client whose server died before offering.
pub fn sweep_orphans() -> usize {
    let Ok(text) = proc::read_small_file(c"/proc/sysvipc/shm") else {
        return 0;
    };
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return 0;
    };
    let col = |name: &str| header.split_whitespace().position(|c| c == name);
    let cols = [
        "key", "shmid", "perms", "size", "cpid", "lpid", "nattch", "cuid",
    ]
    .map(col);
    let [
        Some(k),
        Some(id),
        Some(pm),
        Some(sz),
        Some(cp),
        Some(lp),
        Some(na),
        Some(cu),
    ] = cols
    else {
        return 0;
    };
    let me = u64::from(rustix::process::geteuid().as_raw());
    let mut removed = 0;
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
        let tsss_size = num(sz).is_some_and(|s| {
            let ring = s.saturating_sub(HDR_SIZE as u64) / 2;
            s == HDR_SIZE as u64 + 2 * ring && ring.is_power_of_two() && ring >= 4096
        });
        let orphan = num(k) == Some(0)
            && w.get(pm) == Some(&"600")
            && num(na) == Some(0)
            && (num(lp) == Some(0) || num(lp) == num(cp))
            && num(cu) == Some(me)
            && tsss_size
            && num(cp).is_some_and(|p| !proc::process_exists(p as i32));
        if let (true, Some(id)) = (orphan, num(id))
            && sys::remove(id as i32).is_ok()
        {
            crate::log!(
                crate::log::INFO,
                "removed shmid {id}, left behind by process {} killed while creating it",
                num(cp).unwrap_or(0)
            );
            removed += 1;
        }
    }
    removed
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;

    fn uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    fn segments_alive(id: i32) -> bool {
        sys::stat(id).is_ok()
    }

    #[test]
    fn create_attach_and_vanish() {
        let (s, h) = Segment::create(1 << 16, 1 << 16, None).unwrap();
        let st = sys::stat(h.shmid).unwrap();
        assert_eq!(st.mode & 0o777, 0o600);
        assert_ne!(st.mode & sys::SHM_DEST, 0, "marked for removal at once");
        let c = Segment::attach(&h, uid()).unwrap();
        let s2c = s.ring(Dir::ServerToClient);
        let bufs = [std::io::IoSlice::new(b"hi")];
        let mut src = crate::shm::ring::SrcCursor::new(&bufs);
        assert_eq!(s2c.producer().push(&mut src).unwrap(), 2);
        assert_eq!(c.ring(Dir::ServerToClient).readable().unwrap(), 2);
        drop(s);
        assert!(segments_alive(h.shmid));
        drop(c);
        // A fork by a concurrent test inherits our attachments until its
        // child exits: allow it a moment.
        let t = std::time::Instant::now();
        while segments_alive(h.shmid) && t.elapsed() < std::time::Duration::from_secs(2) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!segments_alive(h.shmid), "freed after last detach");
    }

    #[test]
    fn attach_rejects_wrong_nonce_and_size() {
        let (_s, h) = Segment::create(1 << 16, 1 << 16, None).unwrap();
        let bad = Hello {
            nonce: h.nonce ^ 1,
            ..h
        };
        assert_eq!(
            Segment::attach(&bad, uid()).err(),
            Some(AttachError::BadHeader)
        );
        let big = Hello {
            cap_s2c: 1 << 20,
            ..h
        };
        assert_eq!(
            Segment::attach(&big, uid()).err(),
            Some(AttachError::TooSmall)
        );
        let gone = Hello {
            shmid: i32::MAX,
            ..h
        };
        assert!(matches!(
            Segment::attach(&gone, uid()),
            Err(AttachError::Stat(_))
        ));
    }

    #[test]
    fn attach_rejects_unmarked_or_public_segments() {
        let id = sys::create(HDR_SIZE + 8192).unwrap();
        let h = Hello {
            version: PROTO_VERSION,
            hdr_size: HDR_SIZE as u32,
            shmid: id,
            cap_c2s: 4096,
            cap_s2c: 4096,
            nonce: 7,
        };
        let r = Segment::attach(&h, uid());
        sys::remove(id).unwrap();
        assert_eq!(r.err(), Some(AttachError::NotMarkedForRemoval));
    }
}
