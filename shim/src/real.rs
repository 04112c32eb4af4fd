//! The libc functions we override, resolved with dlsym(RTLD_NEXT).
//!
//! Those a signal handler may call (POSIX's async-signal-safe functions and
//! their variants) are resolved in the constructor, since dlsym is not
//! signal-safe; the others (spawn, signal(), epoll, sendfile...) on first
//! use, which keeps start-up cheap for a process that never calls them.
//! All are cached in atomics; a hook that runs before the constructor
//! (another library's) resolves on first use.
//! redhook was not used: it resolves lazily on every first call, cannot
//! express variadic functions (fcntl, ioctl), and on panic calls the real
//! function, which for an accelerated fd would read the bare socket.

#![allow(unsafe_code)]

use libc::{c_int, c_ulong, c_void, size_t, sockaddr, socklen_t, ssize_t};
use std::sync::atomic::{AtomicPtr, Ordering};

#[cold]
#[inline(never)]
fn resolve(slot: &AtomicPtr<c_void>, name: &core::ffi::CStr) -> *mut c_void {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return p;
    }
    // SAFETY: name is a NUL-terminated symbol name; RTLD_NEXT is valid in a
    // shared object.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        tsss_core::log::emit(format_args!("fatal: cannot resolve {name:?}"));
        std::process::abort();
    }
    slot.store(p, Ordering::Release);
    p
}

macro_rules! real {
    (
        eager { $($e:ident($($ea:ident: $et:ty),*) -> $er:ty;)* }
        lazy { $($l:ident($($la:ident: $lt:ty),*) -> $lr:ty;)* }
    ) => {
        #[allow(non_upper_case_globals)]
        mod slots {
            use super::*;
            $(pub static $e: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());)*
            $(pub static $l: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());)*
        }
        /// Resolves now every function a signal handler may call.
        pub fn init() {
            $(resolve(&slots::$e, cname(concat!(stringify!($e), "\0")));)*
        }
        real!(@fns $($e($($ea: $et),*) -> $er;)* $($l($($la: $lt),*) -> $lr;)*);
    };
    (@fns $($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            /// The next definition of this function (normally libc's).
            #[allow(non_snake_case)]
            ///
            /// # Safety
            /// Same contract as the libc function.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                let mut p = slots::$name.load(Ordering::Acquire);
                if p.is_null() {
                    p = resolve(&slots::$name, cname(concat!(stringify!($name), "\0")));
                }
                // SAFETY: dlsym returned the function of this name, whose C
                // signature is the one declared here.
                let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { core::mem::transmute(p) };
                // SAFETY: per the caller.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

/// A symbol name from a literal with one trailing NUL.
fn cname(s: &'static str) -> &'static core::ffi::CStr {
    match core::ffi::CStr::from_bytes_with_nul(s.as_bytes()) {
        Ok(c) => c,
        Err(_) => c"",
    }
}

real! {
    eager {
        socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
        connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
        accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
        accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
        close(fd: c_int) -> c_int;
        dup(fd: c_int) -> c_int;
        _Fork() -> libc::pid_t;
        _exit(status: c_int) -> ();
        _Exit(status: c_int) -> ();
        execve(path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
        sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
        __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
        fexecve(fd: c_int, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
        dup2(old: c_int, new: c_int) -> c_int;
        dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
        close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int;
        shutdown(fd: c_int, how: c_int) -> c_int;
        read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
        __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t;
        write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
        readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t;
        writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t;
        recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
        __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t;
        recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
        __recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
        recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t;
        send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
        sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
        sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t;
        getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
        setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
        fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
        fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
        getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
        getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
        poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
        select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, t: *mut libc::timeval) -> c_int;
        ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
        pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, t: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
        __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
        __ppoll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: *const libc::timespec, mask: *const libc::sigset_t, fdslen: size_t) -> c_int;
    }
    lazy {
        execvpe(file: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
        posix_spawn(pid: *mut libc::pid_t, path: *const libc::c_char, fa: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
        signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t;
        bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t;
        sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t;
        __sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t;
        siginterrupt(sig: c_int, interrupt: c_int) -> c_int;
        sigset(sig: c_int, disp: libc::sighandler_t) -> libc::sighandler_t;
        posix_spawnp(pid: *mut libc::pid_t, file: *const libc::c_char, fa: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
        closefrom(low: c_int) -> ();
        sendmmsg(fd: c_int, v: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int;
        recvmmsg(fd: c_int, v: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int, t: *mut libc::timespec) -> c_int;
        sendfile(out: c_int, inp: c_int, off: *mut libc::off_t, n: size_t) -> ssize_t;
        sendfile64(out: c_int, inp: c_int, off: *mut libc::off64_t, n: size_t) -> ssize_t;
        splice(fin: c_int, offin: *mut libc::loff_t, fout: c_int, offout: *mut libc::loff_t, n: size_t, flags: libc::c_uint) -> ssize_t;
        ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int;
        epoll_create(size: c_int) -> c_int;
        epoll_create1(flags: c_int) -> c_int;
        epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
        epoll_wait(epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
        epoll_pwait(epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
        epoll_pwait2(epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    }
}
