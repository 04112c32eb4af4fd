//! The few OS calls rustix does not cover (SysV shared memory, tgkill,
//! sigaction queries). All of them are raw syscalls or libc functions tsss
//! never overrides, so calling them from inside an override cannot recurse.
//! None of them changes errno: overrides call them on the program's
//! behalf and drop many of their errors, and the kernel never changes
//! errno on success.

use rustix::io::Errno;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

/// Runs `f`, a libc call, and returns its result with the errno it left;
/// errno itself is as before.
fn errno_kept<T>(f: impl FnOnce() -> T) -> (T, i32) {
    // SAFETY: this thread's errno slot, valid for the thread's life.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *slot };
    let r = f();
    // SAFETY: as above.
    let e = unsafe { std::mem::replace(&mut *slot, saved) };
    (r, e)
}

/// Maps a -1 return to the errno, like mio's `syscall!`, leaving errno as
/// it was.
macro_rules! syscall {
    ($e:expr) => {{
        let (r, e) = errno_kept(|| {
            // SAFETY: stated at each call site.
            unsafe { $e }
        });
        if r == -1 {
            Err(Errno::from_raw_os_error(e))
        } else {
            Ok(r)
        }
    }};
}

pub struct ShmStat {
    pub size: usize,
    pub mode: u32,
    pub uid: u32,
    pub cuid: u32,
}

/// Mode bit the kernel sets once IPC_RMID was called.
pub const SHM_DEST: u32 = 0o1000;

pub fn shm_create(size: usize) -> Result<i32, Errno> {
    // IPC_PRIVATE + IPC_EXCL: always a fresh segment; 0600: owner only.
    syscall!(libc::shmget(
        libc::IPC_PRIVATE,
        size,
        libc::IPC_CREAT | libc::IPC_EXCL | 0o600
    ))
}

/// Attaches a whole segment read-write.
pub fn shm_attach(id: i32) -> Result<*mut u8, Errno> {
    let (p, e) = errno_kept(|| {
        // SAFETY: a NULL address lets the kernel choose where to map.
        unsafe { libc::shmat(id, std::ptr::null(), 0) }
    });
    if p as isize == -1 {
        Err(Errno::from_raw_os_error(e))
    } else {
        Ok(p.cast())
    }
}

/// # Safety
/// `p` came from [`shm_attach`] and nothing uses the mapping afterwards.
pub unsafe fn shm_detach(p: *mut u8) {
    errno_kept(|| {
        // SAFETY: per the caller.
        unsafe { libc::shmdt(p.cast()) }
    });
}

pub fn shm_stat(id: i32) -> Result<ShmStat, Errno> {
    // SAFETY: shmid_ds is plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
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
pub fn shm_grant(id: i32, uid: u32) -> Result<(), Errno> {
    // SAFETY: shmid_ds is plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    syscall!(libc::shmctl(id, libc::IPC_STAT, &mut ds))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.mode = 0o600;
    syscall!(libc::shmctl(id, libc::IPC_SET, &mut ds))?;
    Ok(())
}

/// Marks the segment for removal; it lives until the last detach.
pub fn shm_remove(id: i32) -> Result<(), Errno> {
    syscall!(libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()))?;
    Ok(())
}

/// This process's id (0: not recorded). Set, never filled lazily: a vfork
/// child shares our memory and would write its own pid into ours.
static PID: AtomicI32 = AtomicI32::new(0);

/// Records getpid() as this process's id. The shim calls it at load and
/// in every fork child (its atfork handler, and `_Fork`, which skips the
/// handlers).
pub fn set_cached_pid() {
    PID.store(rustix::process::getpid().as_raw_nonzero().get(), Relaxed);
}

/// This process's id as recorded (getpid() is a real syscall), or
/// getpid() if none was (tsss-core without the shim). In a vfork child
/// or a raw clone() child: its parent's.
pub fn cached_pid() -> i32 {
    match PID.load(Relaxed) {
        0 => rustix::process::getpid().as_raw_nonzero().get(),
        p => p,
    }
}

/// Whether process `pid` exists (EPERM: it does, under another user; a
/// pid <= 0 names no one process: assumed to).
pub fn process_exists(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid).filter(|_| pid > 0) {
        Some(p) => rustix::process::test_kill_process(p) != Err(Errno::SRCH),
        None => true,
    }
}

/// A small file read with raw syscalls (never through our overrides).
pub fn read_small_file(path: &core::ffi::CStr) -> Result<Vec<u8>, Errno> {
    use rustix::fs::{Mode, OFlags};
    let f = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(&f, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends SIGPIPE to the calling thread, as the kernel does on EPIPE.
pub fn raise_sigpipe() {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    errno_kept(|| {
        // SAFETY: tgkill takes integers only.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGPIPE) }
    });
}

/// Whether an interrupted wait should restart: true unless some installed
/// handler lacks SA_RESTART. The kernel restarts by the signal that fired;
/// we cannot tell which one did, so any non-restarting handler wins.
pub fn all_handlers_restart() -> bool {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction is plain old data; a NULL new action only queries.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        let (r, _) = errno_kept(|| {
            // SAFETY: valid pointers; query only.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    std::ptr::null::<libc::sigaction>(),
                    &mut old,
                    8usize,
                )
            }
        });
        if r != 0 {
            continue;
        }
        let h = old.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN && old.sa_flags & libc::SA_RESTART == 0 {
            return false;
        }
    }
    true
}

/// Monotonic clock in nanoseconds (vDSO, no syscall).
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs `f`, a libc::syscall, mapping a negative return to its errno and
/// leaving errno as it was.
fn ret(f: impl FnOnce() -> libc::c_long) -> Result<usize, Errno> {
    match errno_kept(f) {
        (r, e) if r < 0 => Err(Errno::from_raw_os_error(e)),
        (r, _) => Ok(r as usize),
    }
}

/// poll(2) as a raw syscall (never our own override).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<usize, Errno> {
    // SAFETY: fds is a valid, exclusively borrowed array of fds.len() entries.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_poll,
            fds.as_mut_ptr(),
            fds.len() as libc::c_ulong,
            timeout_ms,
        )
    })
}

pub fn epoll_create() -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    ret(|| unsafe { libc::syscall(libc::SYS_epoll_create1, libc::EPOLL_CLOEXEC) })
        .map(|fd| fd as i32)
}

pub fn epoll_ctl(epfd: i32, op: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a valid epoll_event for the call's duration.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            epfd,
            op,
            fd,
            &mut ev as *mut libc::epoll_event,
        )
    })
    .map(|_| ())
}

pub fn epoll_wait(
    epfd: i32,
    evs: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> Result<usize, Errno> {
    if evs.is_empty() {
        return Ok(0);
    }
    // SAFETY: evs is a valid, exclusively borrowed array of evs.len() entries.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_epoll_wait,
            epfd,
            evs.as_mut_ptr(),
            evs.len() as libc::c_int,
            timeout_ms,
        )
    })
}

/// close(2) as a raw syscall.
pub fn close(fd: i32) {
    errno_kept(|| {
        // SAFETY: integer argument; the caller owns fd.
        unsafe { libc::syscall(libc::SYS_close, fd) }
    });
}

/// ppoll(2) as a raw syscall with a millisecond timeout (-1: none) and an
/// optional signal mask installed only for the sleep.
pub fn ppoll(
    fds: &mut [libc::pollfd],
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let Some(mask) = mask else {
        return poll(fds, timeout_ms);
    };
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    let tsp = if timeout_ms < 0 {
        std::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    // SAFETY: valid array, timespec and sigset for the call's duration; the
    // kernel's sigset size on Linux is 8 bytes.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            fds.as_mut_ptr(),
            fds.len() as libc::c_ulong,
            tsp,
            mask as *const libc::sigset_t,
            8usize,
        )
    })
}

/// read(2) or pread(2) (when `off` is given, which it then advances) into
/// raw memory: the file-to-ring copy of sendfile/splice.
///
/// # Safety
/// `p` is valid for writes of `len` bytes.
pub unsafe fn read_into(
    fd: i32,
    p: *mut u8,
    len: usize,
    off: Option<&mut i64>,
) -> Result<usize, Errno> {
    match off {
        Some(o) => {
            // SAFETY: per the caller.
            let r = ret(|| unsafe { libc::syscall(libc::SYS_pread64, fd, p, len, *o) });
            if let Ok(n) = r {
                *o += n as i64;
            }
            r
        }
        // SAFETY: per the caller.
        None => ret(|| unsafe { libc::syscall(libc::SYS_read, fd, p, len) }),
    }
}
