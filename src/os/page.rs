//! One page of memory shared with our fork children (never with the
//! peer): a MAP_SHARED mapping of a memfd, through memmap2. Anonymous
//! memory would be copied on fork; this is not. The memfd is closed once
//! mapped: the mapping needs no descriptor.

use rustix::io::Errno;
use std::marker::PhantomData;

/// A type whose all-zero bytes are a valid value and whose every field is
/// an atomic, no larger than a page: it may live in a [`SharedPage`],
/// which other processes of ours write concurrently.
///
/// # Safety
/// As stated: zero-initialised memory is a valid `Self`, every field is
/// accessed only through atomics, and `size_of::<Self>() <= 4096`.
pub unsafe trait PageSafe: Sync {}

pub struct SharedPage<T: PageSafe> {
    map: memmap2::MmapMut,
    _t: PhantomData<T>,
}

impl<T: PageSafe> SharedPage<T> {
    /// A fresh, zeroed page.
    pub fn new() -> Result<Self, Errno> {
        assert!(size_of::<T>() <= 4096);
        let fd = rustix::fs::memfd_create("tsss-side", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, 4096)?;
        // SAFETY: a fresh memfd nobody else can see; MmapMut maps it
        // MAP_SHARED, and the mapping outlives the descriptor.
        let map = unsafe { memmap2::MmapOptions::new().len(4096).map_mut(&fd) }
            .map_err(|e| Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::ENOMEM)))?;
        Ok(SharedPage {
            map,
            _t: PhantomData,
        })
    }
}

impl<T: PageSafe> std::ops::Deref for SharedPage<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: 4096 page-aligned, zero-initialised bytes (a valid T per
        // PageSafe), only ever accessed through atomics.
        unsafe { &*(self.map.as_ptr() as *const T) }
    }
}
