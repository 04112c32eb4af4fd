//! SysV shared memory (rustix does not cover it).

use super::errno::{errno_kept, syscall};
use rustix::io::Errno;

pub struct ShmStat {
    pub size: usize,
    pub mode: u32,
    pub uid: u32,
    pub cuid: u32,
}

/// Mode bit the kernel sets once IPC_RMID was called.
pub const SHM_DEST: u32 = 0o1000;

pub fn create(size: usize) -> Result<i32, Errno> {
    // SAFETY: integer arguments only. IPC_PRIVATE + IPC_EXCL: always a fresh
    // segment; 0600: owner only.
    syscall!(libc::shmget(
        libc::IPC_PRIVATE,
        size,
        libc::IPC_CREAT | libc::IPC_EXCL | 0o600
    ))
}

/// Attaches a whole segment, read-write or read-only.
pub fn attach(id: i32, read_only: bool) -> Result<*mut u8, Errno> {
    let flags = if read_only { libc::SHM_RDONLY } else { 0 };
    let (p, e) = errno_kept(|| {
        // SAFETY: a NULL address lets the kernel choose where to map; the
        // mapping is new, so it aliases nothing of ours.
        unsafe { libc::shmat(id, std::ptr::null(), flags) }
    });
    if p as isize == -1 {
        Err(Errno::from_raw_os_error(e))
    } else {
        Ok(p.cast())
    }
}

/// # Safety
/// `p` came from [`attach`] and nothing uses the mapping afterwards.
pub unsafe fn detach(p: *mut u8) {
    errno_kept(|| {
        // SAFETY: per the caller.
        unsafe { libc::shmdt(p.cast()) }
    });
}

pub fn stat(id: i32) -> Result<ShmStat, Errno> {
    // SAFETY: shmid_ds is plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer for the call.
    syscall!(libc::shmctl(id, libc::IPC_STAT, &mut ds))?;
    Ok(ShmStat {
        size: ds.shm_segsz,
        mode: u32::from(ds.shm_perm.mode),
        uid: ds.shm_perm.uid,
        cuid: ds.shm_perm.cuid,
    })
}

/// Makes `uid` the owner: with mode 0600 the kernel then grants access to
/// exactly the creator (cuid) and `uid`.
pub fn grant(id: i32, uid: u32) -> Result<(), Errno> {
    // SAFETY: shmid_ds is plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer for the call.
    syscall!(libc::shmctl(id, libc::IPC_STAT, &mut ds))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.mode = 0o600;
    // SAFETY: a valid in-pointer for the call.
    syscall!(libc::shmctl(id, libc::IPC_SET, &mut ds))?;
    Ok(())
}

/// Marks the segment for removal; it lives until the last detach.
pub fn remove(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    syscall!(libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()))?;
    Ok(())
}
