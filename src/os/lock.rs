//! Open-file-description locks on a whole file (`F_OFD_SETLK`,
//! `F_OFD_GETLK`): the registry's "a free lock means a dead process".
//!
//! Not rustix's `fcntl_lock`, which is the classic POSIX lock (`F_SETLK`):
//! a classic lock belongs to the process, is dropped when the process
//! closes *any* descriptor of the file, and never conflicts with the same
//! process's own probes. An OFD lock lives exactly as long as the open
//! file description it was taken on (the descriptor we opened, and its
//! copies: a fork child's, until both close it). rustix has no OFD
//! variant: a raw fcntl syscall, never the shim's own `fcntl` override.

use super::errno::ret;
use rustix::fd::{AsRawFd, BorrowedFd};
use rustix::io::Errno;

/// A write lock on the whole file, never waiting: `Err(AGAIN | ACCES)`
/// while another open file description holds a lock on it.
pub fn try_lock(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    ofd(fd, libc::F_OFD_SETLK, libc::F_WRLCK as i16).map(|_| ())
}

/// A read lock on the whole file, never waiting: it fails while anyone
/// holds a write lock, and needs only a read-only descriptor (`tsss stat`
/// never opens another user's file for writing).
pub fn try_read_lock(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    ofd(fd, libc::F_OFD_SETLK, libc::F_RDLCK as i16).map(|_| ())
}

/// Whether some open file description holds a lock on the file, by
/// `F_OFD_GETLK`, which takes no lock itself (so it never gets in the way
/// of an owner taking or re-taking its lock).
pub fn held(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    ofd(fd, libc::F_OFD_GETLK, libc::F_WRLCK as i16).map(|t| t != libc::F_UNLCK as i16)
}

/// One OFD lock call on the whole file; returns `l_type` as the kernel
/// left it.
fn ofd(fd: BorrowedFd<'_>, cmd: i32, ty: i16) -> Result<i16, Errno> {
    // SAFETY: flock is plain old data; l_pid must be 0 for OFD locks, and
    // l_start = l_len = 0 is the whole file, however it grows.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: a valid flock for the call's duration; fd is borrowed.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd.as_raw_fd(),
            cmd,
            &mut fl as *mut libc::flock,
        )
    })?;
    Ok(fl.l_type)
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use rustix::fd::AsFd;
    use rustix::fs::{Mode, OFlags};

    #[test]
    fn a_lock_is_its_open_file_descriptions() {
        let path = std::env::temp_dir().join(format!("tsss-lock-{}", std::process::id()));
        let open = || {
            rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
            .unwrap()
        };
        let a = open();
        let b = open();
        assert_eq!(held(b.as_fd()), Ok(false));
        try_lock(a.as_fd()).unwrap();
        // Another description of the same file, in the same process: a
        // classic POSIX lock would not see it.
        assert_eq!(held(b.as_fd()), Ok(true));
        assert!(matches!(
            try_lock(b.as_fd()),
            Err(Errno::AGAIN | Errno::ACCESS)
        ));
        assert!(try_read_lock(b.as_fd()).is_err());
        // Closing some other descriptor of the file keeps it (the classic
        // lock would be gone); closing the locked one frees it.
        drop(open());
        assert_eq!(held(b.as_fd()), Ok(true));
        drop(a);
        assert_eq!(held(b.as_fd()), Ok(false));
        try_read_lock(b.as_fd()).unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
