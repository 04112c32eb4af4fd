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
    tsss_core::log!(
        tsss_core::log::DEBUG,
        "loaded ({}; ring {} KiB)",
        if cfg.disabled { "disabled" } else { "enabled" },
        cfg.ring_size >> 10
    );
    if cfg.disabled {
        // Inert: nothing registered, every hook passes straight to libc.
        return;
    }
    tsss_core::sys::set_cached_pid();
    exec::adopt_inherited();
    // SAFETY: registering a plain function pointer, run in the parent just
    // before fork.
    unsafe { libc::pthread_atfork(Some(before_fork), None, Some(in_fork_child)) };
    // SAFETY: as above; runs in exit(), before the stdio flush.
    unsafe { libc::atexit(exiting) };
}

/// The pid cache (`sys::cached_pid`, also the ShmLock holder's id) is the
/// child's own from here on.
extern "C" fn in_fork_child() {
    tsss_core::sys::set_cached_pid();
}

/// Whether we run in a vfork child, in our parent's memory: it skips the
/// fork handlers, so the cached pid is its parent's, and it must not touch
/// the fd table, which is its parent's too. One syscall: call only when an
/// accelerated fd is involved.
pub(crate) fn in_vfork_child() -> bool {
    rustix::process::getpid().as_raw_nonzero().get() != tsss_core::sys::cached_pid()
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
    if tsss_core::config::disabled() {
        // SAFETY: passthrough.
        return unsafe { real::_Fork() };
    }
    before_fork();
    // SAFETY: passthrough.
    let pid = unsafe { real::_Fork() };
    if pid == 0 {
        in_fork_child();
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
    if !tsss_core::config::disabled() && !in_vfork_child() {
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
