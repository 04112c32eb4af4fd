//! This process and others: ids, liveness, signals, small files, stderr.

use super::errno::errno_kept;
use rustix::io::Errno;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*, fence};

/// What a fork child's handler writes, on one line: the child's copy of
/// the page costs one fault, not two (most children exec at once).
#[repr(C, align(64))]
struct Identity {
    /// This process's id (0: not recorded). Set, never filled lazily: a
    /// vfork child shares our memory and would write its own pid into ours.
    pid: AtomicI32,
    /// Counted before and after each fork, in both processes (see
    /// `os::page`).
    forks: AtomicU64,
    /// Which state a fork child must see to ([`Setup`] bits, never
    /// cleared): its handler reads this word, not pages it never wrote.
    setup: AtomicU32,
}

static ME: Identity = Identity {
    pid: AtomicI32::new(0),
    forks: AtomicU64::new(0),
    setup: AtomicU32::new(0),
};

/// State a fork child's handler deals with, if this process ever had it.
#[derive(Clone, Copy)]
pub enum Setup {
    /// A client awaiting its offer was in a kernel epoll.
    PendingEpoll = 1,
}

/// Notes that `what` is set up, before the state itself is touched: a
/// fork child that sees the state sees the note too.
pub fn note_setup(what: Setup) {
    let bit = what as u32;
    if ME.setup.load(Relaxed) & bit == 0 {
        ME.setup.fetch_or(bit, Relaxed);
        fence(SeqCst);
    }
}

/// Whether `what` was ever set up in this process (or before its fork).
pub fn was_set_up(what: Setup) -> bool {
    ME.setup.load(Relaxed) & what as u32 != 0
}

/// The fork counter (see [`Identity::forks`]).
pub(crate) const fn fork_counter() -> &'static AtomicU64 {
    &ME.forks
}

/// Records getpid() as this process's id. The shim calls it at load and
/// in every fork child (its atfork handler, and `_Fork`, which skips the
/// handlers).
pub fn set_cached_pid() {
    ME.pid.store(getpid(), Relaxed);
}

/// This process's id as recorded, or getpid() if none was (tsss-core
/// without the shim). In a vfork child or a raw clone() child: its
/// parent's.
pub fn cached_pid() -> i32 {
    match ME.pid.load(Relaxed) {
        0 => getpid(),
        p => p,
    }
}

/// Whether we run in a vfork child, in our parent's memory: it skips the
/// fork handlers, so the cached pid is its parent's, and it must not touch
/// the parent's state (the fd table, the registry). One syscall: call only
/// when a connection is involved.
pub fn in_vfork_child() -> bool {
    getpid() != cached_pid()
}

/// [`in_vfork_child`] asked at most once per hook call: the answer costs
/// a getpid(2), and one close asks the registry, the epoll hints and the
/// fd table.
#[derive(Default)]
pub struct VforkCheck(std::cell::Cell<u8>);

impl VforkCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether we run in a vfork child.
    pub fn yes(&self) -> bool {
        match self.0.get() {
            0 => {
                let v = in_vfork_child();
                self.0.set(1 + v as u8);
                v
            }
            v => v == 2,
        }
    }
}

/// getpid(2), a real syscall.
pub fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
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

/// One write(2) to fd 2, whatever it is (a closed fd 2 fails harmlessly).
pub fn write_stderr(b: &[u8]) {
    // SAFETY: fd 2 is only borrowed for this call; if it is closed the
    // write fails with EBADF.
    let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(fd, b);
}

/// Sends SIGPIPE to the calling thread, as the kernel does on EPIPE.
pub fn raise_sigpipe() {
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    let pid = getpid();
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
            // SAFETY: valid pointers; query only; the kernel's sigset is 8 bytes.
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

/// This thread's name (`comm`: at most 15 bytes and a NUL), without
/// allocating: prctl(PR_GET_NAME) into a fixed buffer (rustix's
/// `thread::name` returns a CString, and a fork child made by `_Fork` may
/// not allocate).
pub fn thread_name() -> [u8; 16] {
    let mut buf = [0u8; 16];
    errno_kept(|| {
        // SAFETY: PR_GET_NAME writes at most 16 bytes into buf.
        unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) }
    });
    buf
}
