//! libtsss.so: LD_PRELOAD this on both ends of a Unix stream connection and
//! its bytes move through shared memory instead of the kernel.
//!
//! This crate is glue only: symbol overrides that translate arguments and
//! errno, the fd table, and start-up. The logic lives in `tsss-core`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod exec;
mod hooks;
mod real;
mod signal;
mod table;

use tsss_core::config::Config;

/// Runs at load time, before main: reads TSSS_* and resolves the real
/// functions so no hook has to call dlsym (which may allocate) later.
#[ctor::ctor(unsafe)]
fn init() {
    let cfg = Config::from_lookup(|k| std::env::var(k).ok());
    cfg.install();
    for w in &cfg.warnings {
        tsss_core::log::emit(format_args!("{w}"));
    }
    real::init();
    record_pid();
    exec::adopt_inherited();
    // SAFETY: registering a plain function pointer, run in the parent just
    // before fork.
    unsafe { libc::pthread_atfork(Some(before_fork), None, Some(record_pid_c)) };
    // SAFETY: as above; runs in exit(), before the stdio flush.
    unsafe { libc::atexit(exiting) };
    tsss_core::log!(
        tsss_core::log::DEBUG,
        "loaded ({}; ring {} KiB)",
        if cfg.disabled { "disabled" } else { "enabled" },
        cfg.ring_size >> 10
    );
}

/// This process's id, recorded at load and in fork children: a vfork child
/// (which shares our memory and skips the fork handlers) sees a different
/// getpid() and must not touch the fd table, which is its parent's.
static MY_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn record_pid() {
    MY_PID.store(
        rustix::process::getpid().as_raw_nonzero().get(),
        std::sync::atomic::Ordering::Relaxed,
    );
}

extern "C" fn record_pid_c() {
    record_pid();
}

/// Whether we run in a vfork child, in our parent's memory (one syscall:
/// call only when an accelerated fd is involved).
pub(crate) fn in_vfork_child() -> bool {
    rustix::process::getpid().as_raw_nonzero().get()
        != MY_PID.load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn before_fork() {
    table::for_each_conn(|_, c| c.before_fork());
}

/// glibc's `_Fork` skips the atfork handlers: count the child as a sharer
/// here (a failed call leaves one too many, which only means the socket's
/// EOF ends the connection).
///
/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn _Fork() -> libc::pid_t {
    before_fork();
    // SAFETY: passthrough.
    let pid = unsafe { real::_Fork() };
    if pid == 0 {
        record_pid();
    }
    pid
}

/// exit() (or a return from main): the peers' writes to us fail from now on
/// (see `Conn::process_exiting`). A vfork child's exit is not ours.
extern "C" fn exiting() {
    if !in_vfork_child() {
        table::for_each_conn(|fd, c| c.process_exiting(fd));
    }
}

/// _exit: the kernel closes every descriptor now. Say so in each segment
/// first, as close() does, so that a peer's next write fails at once
/// rather than when it next looks at the socket.
fn exiting_now() {
    if !in_vfork_child() {
        table::for_each_conn(|fd, c| c.close(fd));
    }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _exit(status: libc::c_int) -> ! {
    exiting_now();
    // SAFETY: passthrough.
    unsafe { real::_exit(status) };
    std::process::abort()
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn _Exit(status: libc::c_int) -> ! {
    exiting_now();
    // SAFETY: passthrough.
    unsafe { real::_Exit(status) };
    std::process::abort()
}
