//! Process ends and _Fork: connections are told of them (fork and exit
//! handlers proper are registered in lib.rs).

use crate::{abi, real, table};
use tsss_core::os::proc::in_vfork_child;
use tsss_core::readiness::epoll::pending;

/// A child about to be forked will share every connection.
pub(crate) extern "C" fn before_fork() {
    tsss_core::os::page::note_fork();
    table::for_each_conn(|_, c| c.before_fork());
}

/// In the parent, after the fork: pages made since `before_fork` may be
/// the child's too.
pub(crate) extern "C" fn after_fork_parent() {
    tsss_core::os::page::note_fork();
}

/// The pid cache (`os::proc::cached_pid`, also the ShmLock holder's id) is
/// the child's own from here on, and so is its registry file.
pub(crate) extern "C" fn in_fork_child() {
    tsss_core::os::proc::set_cached_pid();
    // As in the parent: a page made after `before_fork`'s count (another
    // thread, before the fork itself) is the parent's too.
    tsss_core::os::page::note_fork();
    tsss_core::os::page::forget_pool_in_child();
    pending::after_fork();
    // The child lists its inherited connections in a file of its own.
    tsss_core::registry::after_fork();
}

/// Whether this process has connections whose end it must announce: none
/// if it never had an entry (asked first: it saves the vfork check's
/// getpid), nor in a vfork child, whose exit is its parent's memory's.
fn ends_are_ours() -> bool {
    !table::never_used() && !in_vfork_child()
}

/// exit() (or a return from main): the peers' writes to us fail from now
/// on (see `Conn::process_exiting`). A vfork child's exit is not ours.
pub(crate) extern "C" fn exiting() {
    if ends_are_ours() {
        // SAFETY: the table's descriptors are open until the kernel closes
        // them after the exit handlers.
        table::for_each_conn(|fd, c| c.process_exiting(unsafe { abi::fd(fd) }));
    }
}

/// _exit: the kernel closes every descriptor now. Say so in each segment
/// first, as close() does, so that a peer's next write fails at once
/// rather than when it next looks at the socket.
fn exiting_now() {
    if ends_are_ours() {
        // SAFETY: as above, open until the kernel closes them.
        table::for_each_conn(|fd, c| c.close(unsafe { abi::fd(fd) }));
    }
}

hook! {
    /// glibc's `_Fork` skips the atfork handlers: count the child as a
    /// sharer here (a failed call leaves one too many, which only means
    /// the socket's EOF ends the connection).
    fn _Fork() -> libc::pid_t {
        before_fork();
        // SAFETY: the real function.
        let pid = unsafe { real::_Fork() };
        if pid == 0 {
            in_fork_child();
        } else {
            after_fork_parent();
        }
        Done(pid)
    }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _exit(status: libc::c_int) -> ! {
    if !tsss_core::config::disabled() {
        exiting_now();
    }
    // SAFETY: the caller's argument, to the function it meant to call.
    unsafe { real::_exit(status) };
    std::process::abort()
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn _Exit(status: libc::c_int) -> ! {
    if !tsss_core::config::disabled() {
        exiting_now();
    }
    // SAFETY: as above.
    unsafe { real::_Exit(status) };
    std::process::abort()
}
