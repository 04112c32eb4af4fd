//! One page of memory shared with our fork children (never with the
//! peer): a MAP_SHARED | MAP_ANONYMOUS mapping, which fork shares instead
//! of copying, and which needs no descriptor. Two system calls per
//! connection (mmap, munmap); a memfd cost five.

use core::ffi::c_void;
use core::ptr::NonNull;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;

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
    _t: PhantomData<T>,
}

// SAFETY: the page holds a T, which is Sync (PageSafe), and is only
// accessed through &T.
unsafe impl<T: PageSafe> Send for SharedPage<T> {}
// SAFETY: as above.
unsafe impl<T: PageSafe> Sync for SharedPage<T> {}

impl<T: PageSafe> SharedPage<T> {
    /// A fresh, zeroed page.
    pub fn new() -> Result<Self, Errno> {
        assert!(size_of::<T>() <= 4096);
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
