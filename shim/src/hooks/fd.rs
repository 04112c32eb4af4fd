//! Descriptors: close and the dup family. A connection ends for this
//! process with its last descriptor; every dup names the same connection.

use super::accel;
use crate::abi;
use crate::real;
use crate::table::{self, Entry};
use libc::{c_int, c_ulong};
use rustix::fd::RawFd;
use tsss_core::os::proc::VforkCheck;
use tsss_core::readiness::epoll;
use tsss_core::registry;

/// Forgets `fd` before the kernel closes it: the connection ends (for
/// this process) when its last descriptor goes. Runs while `fd` still
/// names the socket, since ending may ring the peer's doorbell on it.
pub(crate) fn forget_fd(fd: c_int, vfork: &VforkCheck) {
    // A vfork child's close must not change its parent's table.
    if table::get(fd).is_none() || vfork.yes() {
        return;
    }
    if let Some(g) = table::remove(fd)
        && let Entry::Conn(c) = &*g
    {
        // An epoll set drops its watch of `fd`.
        c.changed();
        if c.drop_alias() {
            // SAFETY: the descriptor of the close being served, still open.
            c.close(unsafe { abi::fd(fd) });
        }
    }
}

/// `new` now names what `old` names (after a successful dup).
fn alias_fd(old: c_int, new: c_int) {
    if new < 0 || old == new {
        return;
    }
    if (table::get(old).is_some() || table::get(new).is_some())
        && tsss_core::os::proc::in_vfork_child()
    {
        return;
    }
    match table::get(old) {
        Some(g) => {
            if let Entry::Conn(c) = &*g {
                c.add_alias();
            }
            table::alias(new, &g);
        }
        None => drop(table::remove(new)),
    }
}

/// Whether `fd` is an open descriptor.
fn is_open(fd: RawFd) -> bool {
    // SAFETY: a descriptor of the call being served, for one fcntl.
    rustix::io::fcntl_getfd(unsafe { abi::fd(fd) }).is_ok()
}

/// dup2/dup3: `new` is closed first, unless the call would fail; then it
/// names what `old` names. The fcntl probe only for a `new` we track.
fn dup_onto(old: c_int, new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    let vfork = VforkCheck::new();
    if old != new && table::get(new).is_some() && is_open(old) {
        forget_fd(new, &vfork);
    }
    let r = call();
    if r >= 0 {
        if old != new {
            // What `new` named is gone: its registry entry too (one load
            // if it had none).
            registry::forget(new, &vfork);
            epoll::forget_hint(new, &vfork);
        }
        alias_fd(old, r);
    }
    r
}

hook! {
    fn close(fd: c_int) -> c_int {
        // The registry entry goes with the descriptor (one load if none).
        let vfork = VforkCheck::new();
        registry::forget(fd, &vfork);
        epoll::forget_hint(fd, &vfork);
        forget_fd(fd, &vfork);
        Real
    }
}

hook! {
    fn dup(fd: c_int) -> c_int {
        // SAFETY: the caller's argument.
        let r = unsafe { real::dup(fd) };
        alias_fd(fd, r);
        Done(r)
    }
}

hook! {
    fn dup2(old: c_int, new: c_int) -> c_int {
        // SAFETY: the caller's arguments.
        Done(dup_onto(old, new, || unsafe { real::dup2(old, new) }))
    }
}

hook! {
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
        // SAFETY: the caller's arguments.
        Done(dup_onto(old, new, || unsafe { real::dup3(old, new, flags) }))
    }
}

hook! {
    fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
        // CLOSE_RANGE_CLOEXEC only marks descriptors; nothing closes now.
        if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && first <= last {
            registry::forget_range(first, last);
            epoll::forget_hints(first, last);
            let vfork = VforkCheck::new();
            for fd in table::fds_in(first, last) {
                forget_fd(fd, &vfork);
            }
        }
        Real
    }
}

hook! {
    fn closefrom(low: c_int) -> () {
        if let Ok(first) = u32::try_from(low) {
            registry::forget_range(first, u32::MAX);
            epoll::forget_hints(first, u32::MAX);
            let vfork = VforkCheck::new();
            for fd in table::fds_in(first, u32::MAX) {
                forget_fd(fd, &vfork);
            }
        }
        Real
    }
}

/// What fcntl changed that we track: a new alias, or O_NONBLOCK.
fn after_fcntl(fd: c_int, cmd: c_int, arg: c_ulong, r: c_int) {
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        alias_fd(fd, r);
        return;
    }
    if r != -1
        && cmd == libc::F_SETFL
        && let Some(c) = accel(fd)
    {
        c.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0);
    }
}

hook! {
    /// The variadic argument is read as one integer/pointer, which is
    /// ABI-compatible on x86_64 and aarch64.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        // SAFETY: the caller's arguments.
        let r = unsafe { real::fcntl(fd, cmd, arg) };
        after_fcntl(fd, cmd, arg, r);
        Done(r)
    }
}

hook! {
    /// As [`fcntl`].
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        // SAFETY: the caller's arguments.
        let r = unsafe { real::fcntl64(fd, cmd, arg) };
        after_fcntl(fd, cmd, arg, r);
        Done(r)
    }
}
