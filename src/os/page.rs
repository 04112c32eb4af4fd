//! One page of memory shared with our fork children (never with the
//! peer): a MAP_SHARED | MAP_ANONYMOUS mapping, which fork shares instead
//! of copying, and which needs no descriptor. A page no child can share
//! (made since the last fork) is kept for the next connection: no mmap,
//! munmap or first-touch fault per connection once warm.

use core::ffi::c_void;
use core::ptr::NonNull;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use std::marker::PhantomData;
use std::sync::atomic::{
    AtomicPtr, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// A type whose all-zero bytes are a valid value and whose every field is
/// an atomic, no larger than a page: it may live in a [`SharedPage`],
/// which other processes of ours write concurrently.
///
/// # Safety
/// As stated: zero-initialised memory is a valid `Self`, every field is
/// accessed only through atomics, and `size_of::<Self>() <= 4096`.
pub unsafe trait PageSafe: Sync {}

pub struct SharedPage<T: PageSafe> {
    /// Page-aligned, 4096 bytes, ours to unmap.
    ptr: NonNull<c_void>,
    /// Where it goes back to.
    pool: &'static Pool,
    /// The pool's fork count when it was made or taken: a fork since
    /// then may have shared it with a child.
    forks: u64,
    _t: PhantomData<T>,
}

// SAFETY: the page holds a T, which is Sync (PageSafe), and is only
// accessed through &T.
unsafe impl<T: PageSafe> Send for SharedPage<T> {}
// SAFETY: as above.
unsafe impl<T: PageSafe> Sync for SharedPage<T> {}

/// Pages no other process maps, ready for reuse, and the forks so far.
/// Lock-free: a close in a signal handler may give one back.
pub struct Pool {
    pages: [AtomicPtr<c_void>; POOL],
    /// Bumped just before and just after each fork (a page made in
    /// between may be shared or not: either way it is never reused).
    forks: &'static AtomicU64,
}

const POOL: usize = 16;

/// The process's pool.
static PAGES: Pool = Pool::new(super::proc::fork_counter());

impl Pool {
    const fn new(forks: &'static AtomicU64) -> Pool {
        Pool {
            pages: [const { AtomicPtr::new(std::ptr::null_mut()) }; POOL],
            forks,
        }
    }

    fn take(&self) -> Option<NonNull<c_void>> {
        self.pages.iter().find_map(|slot| {
            if slot.load(Relaxed).is_null() {
                return None;
            }
            NonNull::new(slot.swap(std::ptr::null_mut(), Acquire))
        })
    }

    /// Keeps `p` for reuse; false if the pool is full.
    fn give(&self, p: NonNull<c_void>) -> bool {
        self.pages.iter().any(|slot| {
            slot.compare_exchange(std::ptr::null_mut(), p.as_ptr(), Release, Relaxed)
                .is_ok()
        })
    }

    fn note_fork(&self) {
        self.forks.fetch_add(1, Relaxed);
    }

    fn forget_in_child(&self) {
        for slot in &self.pages {
            // A load first: an empty pool's page is left uncopied.
            if slot.load(Relaxed).is_null() {
                continue;
            }
            let p = slot.swap(std::ptr::null_mut(), Relaxed);
            if !p.is_null() {
                // SAFETY: a pooled page: mapped, and referenced by nothing.
                let _ = unsafe { rustix::mm::munmap(p, 4096) };
            }
        }
    }
}

/// Before a fork, and after it in both processes: pages in use now are
/// never reused (the other process may share them), not even one made
/// between the count before and the fork; pooled ones stay the parent's.
pub fn note_fork() {
    PAGES.note_fork();
}

/// In a fork child: the pooled pages are the parent's to reuse; the
/// child's copies of the mappings go.
pub fn forget_pool_in_child() {
    PAGES.forget_in_child();
}

impl<T: PageSafe> SharedPage<T> {
    /// A zeroed page, no other process's.
    pub fn new() -> Result<Self, Errno> {
        Self::new_in(&PAGES)
    }

    fn new_in(pool: &'static Pool) -> Result<Self, Errno> {
        assert!(size_of::<T>() <= 4096);
        let forks = pool.forks.load(Relaxed);
        if let Some(p) = pool.take() {
            // SAFETY: a pooled page: mapped, 4096 bytes, referenced by
            // nothing and mapped by no other process.
            unsafe { p.as_ptr().cast::<u8>().write_bytes(0, 4096) };
            return Ok(SharedPage {
                ptr: p,
                pool,
                forks,
                _t: PhantomData,
            });
        }
        // SAFETY: a fresh mapping at an address the kernel picks: it
        // aliases nothing of ours.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                4096,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )
        }?;
        Ok(SharedPage {
            ptr: NonNull::new(p).ok_or(Errno::NOMEM)?,
            pool,
            forks,
            _t: PhantomData,
        })
    }
}

impl<T: PageSafe> std::ops::Deref for SharedPage<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: 4096 page-aligned, zero-initialised bytes (a valid T per
        // PageSafe), only ever accessed through atomics.
        unsafe { &*(self.ptr.as_ptr() as *const T) }
    }
}

impl<T: PageSafe> Drop for SharedPage<T> {
    fn drop(&mut self) {
        if self.forks == self.pool.forks.load(Relaxed) && self.pool.give(self.ptr) {
            return;
        }
        // SAFETY: our mapping; no &T outlives self.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr(), 4096) };
    }
}

/// The first `len` bytes (a multiple of 8) of the file `fd`, mapped
/// `MAP_SHARED` as words for the rest of the process's life, at the
/// address of `over` (an earlier mapping of this function, of the same
/// `len`, replaced in one step: a writer racing the swap stores into one
/// file or the other, never into unmapped memory) or where the kernel
/// picks. Never unmapped. Writes are atomic word stores; the file's
/// readers `pread` it.
///
/// The caller keeps the file at least `len` bytes long, and gives a page
/// its blocks before storing into it (`fd::allocate_raw`): else a store
/// raises SIGBUS.
pub fn map_file_words(
    fd: rustix::fd::BorrowedFd<'_>,
    len: usize,
    over: Option<&'static [AtomicU64]>,
) -> Result<&'static [AtomicU64], Errno> {
    assert!(len % 8 == 0 && over.is_none_or(|o| o.len() * 8 == len));
    let (at, fixed) = match over {
        Some(o) => (o.as_ptr() as *mut c_void, MapFlags::FIXED),
        None => (std::ptr::null_mut(), MapFlags::empty()),
    };
    // SAFETY: a fresh mapping where the kernel picks, or over `over`,
    // which this function made with this length and nothing unmaps: its
    // words stay mapped (now to `fd`'s file), and every access to them is
    // an atomic, as to memory another process writes.
    let p = unsafe {
        rustix::mm::mmap(
            at,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | fixed,
            fd,
            0,
        )
    }?;
    // SAFETY: `len` bytes, page-aligned (so 8-aligned), mapped until the
    // process ends; AtomicU64 has u64's layout and any bytes are a valid
    // value; every access goes through the atomics.
    Ok(unsafe { std::slice::from_raw_parts(p as *const AtomicU64, len / 8) })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Words([AtomicU64; 512]);
    // SAFETY: zeroed atomics, 4096 bytes.
    unsafe impl PageSafe for Words {}

    fn pooled(pool: &Pool) -> Vec<*mut c_void> {
        pool.pages
            .iter()
            .map(|s| s.load(Relaxed))
            .filter(|p| !p.is_null())
            .collect()
    }

    #[test]
    fn pages_are_reused_zeroed_unless_a_fork_came_between() {
        // A pool of its own: other tests make pages concurrently.
        static FORKS_T: AtomicU64 = AtomicU64::new(0);
        static POOL_T: Pool = Pool::new(&FORKS_T);
        let new = || SharedPage::<Words>::new_in(&POOL_T).unwrap();
        let a = new();
        a.0[7].store(42, Relaxed);
        let at = a.ptr.as_ptr();
        drop(a);
        assert_eq!(pooled(&POOL_T), [at], "a page no child shares is kept");
        let b = new();
        assert_eq!(b.ptr.as_ptr(), at, "and handed out again");
        assert!(b.0.iter().all(|w| w.load(Relaxed) == 0), "zeroed");

        // A fork while it is in use: the child may share it.
        POOL_T.note_fork();
        drop(b);
        assert!(
            pooled(&POOL_T).is_empty(),
            "a page made before a fork is unmapped"
        );

        // A full pool unmaps the rest.
        let many: Vec<_> = (0..POOL + 4).map(|_| new()).collect();
        drop(many);
        assert_eq!(pooled(&POOL_T).len(), POOL);
        POOL_T.forget_in_child();
        assert!(pooled(&POOL_T).is_empty());
    }
}
