//! exec: hand accelerated connections over to the new program image.
//!
//! An accelerated fd that survives execve (no FD_CLOEXEC) is a socket
//! carrying doorbell bytes, its data in a segment the new image knows
//! nothing of. Before exec we describe each such connection in
//! `TSSS_HANDOVER` (and keep libtsss in `LD_PRELOAD`); the new image's
//! constructor adopts them. If the new image cannot run tsss (statically
//! linked), the connection is shut down with a log line: a clear error
//! rather than a corrupted stream.
//!

use crate::real;
use crate::table::{self, ConnRef, Entry};
use libc::{c_char, c_int};
use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use tsss_core::config;
use tsss_core::log::{DEBUG, INFO};
use tsss_core::{conn::Conn, log};

const VAR: &str = "TSSS_HANDOVER";

unsafe extern "C" {
    static environ: *const *const c_char;
}

/// Every open socket descriptor, as (inode, fd), sorted.
fn open_sockets() -> Vec<(u64, c_int)> {
    let mut socks = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<c_int>().ok())
                && let Some(ino) = inode(fd)
            {
                socks.push((ino, fd));
            }
        }
    }
    socks.sort_unstable();
    socks
}

fn cloexec(fd: c_int) -> bool {
    // SAFETY: borrowed for one call.
    rustix::io::fcntl_getfd(unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) })
        .map_or(true, |f| f.contains(rustix::io::FdFlags::CLOEXEC))
}

/// Connections whose descriptors survive exec, with those descriptors.
/// Found by the sockets' inodes in the fd table as it is now: in a vfork
/// child the descriptors were moved (dup2 onto 0 and 1) without our table
/// hearing of it, as it belongs to the parent. `skip_cloexec`: leave out
/// FD_CLOEXEC descriptors; not for posix_spawn, whose file actions (out of
/// our sight) may dup2 one, and the copy survives.
fn inherited(skip_cloexec: bool) -> Vec<(ConnRef, Vec<c_int>)> {
    let mut conns: Vec<ConnRef> = Vec::new();
    for fd in table::fds_in(0, u32::MAX) {
        let Some(c) = table::get(fd).and_then(ConnRef::new) else {
            continue;
        };
        if !c.is_plain() && c.ino() != 0 && !conns.iter().any(|o| std::ptr::eq::<Conn>(&**o, &*c)) {
            conns.push(c);
        }
    }
    if conns.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(ConnRef, Vec<c_int>)> = Vec::new();
    for (ino, fd) in open_sockets() {
        if skip_cloexec && cloexec(fd) {
            continue;
        }
        let Some(c) = conns.iter().find(|c| c.ino() == ino) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|(o, _)| std::ptr::eq::<Conn>(&**o, &**c))
        {
            Some((_, fds)) => fds.push(fd),
            None => out.push((c.clone(), vec![fd])),
        }
    }
    out
}

/// Ends the negotiations a new image might not finish (it may not run
/// tsss, or read with stdio): those connections go plain on both sides
/// (see `Conn::settle_for_exec`). What remains is handed over.
fn settled(conns: Vec<(ConnRef, Vec<c_int>)>) -> Vec<(ConnRef, Vec<c_int>)> {
    conns
        .into_iter()
        // SAFETY: an open descriptor of ours (the exec is being served).
        .filter(|(c, fds)| c.settle_for_exec(unsafe { crate::abi::fd(fds[0]) }))
        .collect()
}

/// Path of this library, to keep it in LD_PRELOAD.
fn lib_path() -> Option<Vec<u8>> {
    // SAFETY: dladdr only reads; info is plain old data.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: the address of one of our own functions.
    if unsafe { libc::dladdr(inherited as *const libc::c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path.
    Some(
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_bytes()
            .to_vec(),
    )
}

/// Whether the program at `path` loads LD_PRELOAD: a dynamically linked
/// ELF (it has PT_INTERP), or anything else (a script: its interpreter).
fn can_preload(path: &[u8]) -> bool {
    // Raw syscalls only: in a vfork child our fd table is the parent's, and
    // the descriptor this open gets may be one the child closed, still
    // listed as a connection; libc's read would reach our override.
    use rustix::fs::{Mode, OFlags};
    let Ok(f) = rustix::fs::open(
        OsStr::from_bytes(path),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return true;
    };
    let mut h = [0u8; 64];
    if rustix::io::pread(&f, &mut h, 0) != Ok(64) || &h[..4] != b"\x7fELF" || h[4] != 2 {
        return true;
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().unwrap_or_default());
    let phentsize = u16::from_le_bytes([h[54], h[55]]) as usize;
    let phnum = u16::from_le_bytes([h[56], h[57]]) as usize;
    let mut ph = [0u8; 4];
    (0..phnum.min(256)).any(|i| {
        rustix::io::pread(&f, &mut ph, phoff + (i * phentsize) as u64) == Ok(4)
            && u32::from_le_bytes(ph) == libc::PT_INTERP
    })
}

/// Where execvp would find `file`.
fn search_path(file: &CStr) -> Option<Vec<u8>> {
    let f = file.to_bytes();
    if f.contains(&b'/') {
        return Some(f.to_vec());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    path.as_bytes().split(|&b| b == b':').find_map(|dir| {
        let mut p = if dir.is_empty() {
            b".".to_vec()
        } else {
            dir.to_vec()
        };
        p.push(b'/');
        p.extend_from_slice(f);
        let c = CString::new(p.clone()).ok()?;
        // SAFETY: a NUL-terminated path.
        (unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0).then_some(p)
    })
}

/// The caller's environment without a stale handover, plus ours, with
/// libtsss kept in LD_PRELOAD.
///
/// # Safety
/// `envp` is null or a NULL-terminated array of C strings.
unsafe fn build_env(envp: *const *const c_char, handover: &str) -> Vec<CString> {
    let mut out = Vec::new();
    let lib = lib_path();
    let mut saw_preload = false;
    let mut p = envp;
    while !p.is_null() {
        // SAFETY: per the caller, the array ends with NULL.
        let e = unsafe { *p };
        if e.is_null() {
            break;
        }
        // SAFETY: a C string of the environment.
        let bytes = unsafe { CStr::from_ptr(e) }.to_bytes();
        p = p.wrapping_add(1);
        if bytes.starts_with(b"TSSS_HANDOVER=") {
            continue;
        }
        if let Some(v) = bytes.strip_prefix(b"LD_PRELOAD=") {
            saw_preload = true;
            if let Some(lib) = &lib
                && !v.windows(lib.len()).any(|w| w == lib.as_slice())
            {
                let mut nv = b"LD_PRELOAD=".to_vec();
                nv.extend_from_slice(lib);
                nv.push(b':');
                nv.extend_from_slice(v);
                out.extend(CString::new(nv));
                continue;
            }
        }
        out.extend(CString::new(bytes));
    }
    if !saw_preload && let Some(lib) = &lib {
        let mut nv = b"LD_PRELOAD=".to_vec();
        nv.extend_from_slice(lib);
        out.extend(CString::new(nv));
    }
    out.extend(CString::new(format!("{VAR}={handover}")));
    out
}

/// `ino=export;...`: each connection named by its socket's inode, so that
/// the new image finds every descriptor of it, wherever spawn file actions
/// moved them.
///
/// `still_ours`: a process that keeps the connection outlives the call (the
/// spawner, a vfork child's parent): the new image must not end the
/// connection in the segment when it closes or exits.
fn handover_text(conns: &[(ConnRef, Vec<c_int>)], still_ours: bool) -> String {
    conns
        .iter()
        .filter(|(c, _)| c.ino() != 0)
        .map(|(c, _)| format!("{}={}", c.ino(), c.export(still_ours)))
        .collect::<Vec<_>>()
        .join(";")
}

fn inode(fd: c_int) -> Option<u64> {
    // SAFETY: an fd just listed in /proc/self/fd, for one fstat (a closed
    // one fails with EBADF).
    tsss_core::os::fd::socket_inode(unsafe { crate::abi::fd(fd) })
}

/// Ends connections a statically linked program would inherit: it would
/// read doorbells as data and write into what the peer takes for control
/// bytes. A clear error (EOF, EPIPE) instead of a corrupted stream.
fn end_connections(conns: &[(ConnRef, Vec<c_int>)], at: &str, target: &[u8]) {
    for (c, fds) in conns {
        log!(
            INFO,
            "fd {}: accelerated connection ended at {at}: {} is statically linked and cannot run tsss",
            fds[0],
            String::from_utf8_lossy(target)
        );
        // SAFETY: as in `settled`.
        let _ = c.shutdown(unsafe { crate::abi::fd(fds[0]) }, libc::SHUT_RDWR);
    }
}

/// Runs `exec` (the real call, given the environment to use) with the
/// handover prepared; returns only if exec failed.
///
/// # Safety
/// `envp` as for execve; `target` the program that will run, if known.
pub unsafe fn exec_with(
    target: Option<&[u8]>,
    envp: *const *const c_char,
    exec: impl FnOnce(*const *const c_char) -> c_int,
) -> c_int {
    if config::disabled() {
        return exec(envp);
    }
    let conns = settled(inherited(true));
    if conns.is_empty() {
        return exec(envp);
    }
    if let Some(t) = target
        && !can_preload(t)
    {
        end_connections(&conns, "exec", t);
        return exec(envp);
    }
    let handover = handover_text(&conns, tsss_core::os::proc::in_vfork_child());
    // SAFETY: per the caller.
    let env = unsafe { build_env(envp, &handover) };
    let mut ptrs: Vec<*const c_char> = env.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // The new image gets a side block of its own. In a vfork child the old
    // block is still our parent's: count the new image in it so that the
    // parent closing its copy does not end the connection. (After a plain
    // exec the old block goes with the old image; the extra count only
    // leaves the ending to the socket's EOF.)
    for (c, _) in &conns {
        c.before_fork();
    }
    let r = exec(ptrs.as_ptr());
    // Still the old image: no new one counts.
    for (c, _) in &conns {
        c.undo_fork();
    }
    r
}

/// In the constructor of a new image: adopts the connections the previous
/// one handed over.
pub fn adopt_inherited() {
    // Looked up without allocating: most new images inherit nothing.
    let Some(v) = crate::start::env(VAR).map(|c| c.to_bytes().to_vec()) else {
        return;
    };
    // SAFETY: the constructor runs before main, on the only thread.
    unsafe { std::env::remove_var(VAR) };
    let socks = open_sockets();
    // The connections this image adopted, for the registry.
    let mut adopted = Vec::new();
    for entry in v.split(|&b| b == b';') {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let Some(ino) = std::str::from_utf8(&entry[..eq])
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let line = String::from_utf8_lossy(&entry[eq + 1..]);
        let fds: Vec<c_int> = socks
            .iter()
            .filter(|(i, _)| *i == ino)
            .map(|&(_, fd)| fd)
            .collect();
        let Some(&first) = fds.first() else { continue };
        // SAFETY: an open socket of this new image, found just above,
        // open for the constructor's run.
        let bfd = unsafe { crate::abi::fd(first) };
        match Conn::adopt(bfd, &line) {
            Ok(c) => {
                adopted.push((bfd, c.registry_event()));
                let Some(g) = table::insert(first, Entry::Conn(c)) else {
                    continue;
                };
                for &fd in &fds[1..] {
                    if let Entry::Conn(c) = &*g {
                        c.add_alias();
                    }
                    table::alias(fd, &g);
                }
                log!(
                    DEBUG,
                    "fd {first}: accelerated connection carried over exec ({} fds)",
                    fds.len()
                );
            }
            Err(e) => log!(
                INFO,
                "fd {first}: cannot carry the connection over exec: {e}"
            ),
        }
    }
    // This image registers again, with what it adopted.
    tsss_core::registry::after_exec(&adopted);
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: path is a C string per the contract (null is left to the kernel).
    let target = (!path.is_null()).then(|| unsafe { CStr::from_ptr(path) }.to_bytes());
    // SAFETY: the caller's arguments, passed on.
    unsafe { exec_with(target, envp, |e| real::execve(path, argv, e)) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarded with the process environment.
    unsafe { execve(path, argv, environ) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: file is a C string per the contract.
    let target = (!file.is_null())
        .then(|| search_path(unsafe { CStr::from_ptr(file) }))
        .flatten();
    // SAFETY: the caller's arguments, passed on.
    unsafe { exec_with(target.as_deref(), envp, |e| real::execvpe(file, argv, e)) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarded with the process environment.
    unsafe { execvpe(file, argv, environ) }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let target = format!("/proc/self/fd/{fd}").into_bytes();
    // SAFETY: the caller's arguments, passed on.
    unsafe { exec_with(Some(&target), envp, |e| real::fexecve(fd, argv, e)) }
}

/// posix_spawn runs its own execve inside the child, out of our reach: the
/// environment is prepared here. The child gets a side block of its own
/// after exec, but is counted in ours (see below).
///
/// # Safety
/// As posix_spawn.
unsafe fn spawn_with(
    target: Option<&[u8]>,
    envp: *const *const c_char,
    spawn: impl FnOnce(*const *const c_char) -> c_int,
) -> c_int {
    if config::disabled() {
        return spawn(envp);
    }
    let conns = settled(inherited(false));
    if conns.is_empty() {
        return spawn(envp);
    }
    if let Some(t) = target
        && !can_preload(t)
    {
        // As at exec: the static image would see the bare socket. Only
        // connections with a descriptor that survives exec end: a
        // FD_CLOEXEC one reaches the child only through a dup2 file action,
        // which we cannot see, and ending it for nothing would break it
        // for this process too.
        end_connections(&inherited(true), "spawn", t);
        return spawn(envp);
    }
    // The spawned image gets a side block of its own: keep ours from
    // ending the connection when this process closes its copy.
    for (c, _) in &conns {
        c.before_fork();
    }
    // SAFETY: per the caller.
    let env = unsafe { build_env(envp, &handover_text(&conns, true)) };
    let mut ptrs: Vec<*const c_char> = env.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let r = spawn(ptrs.as_ptr());
    if r != 0 {
        // No image was started.
        for (c, _) in &conns {
            c.undo_fork();
        }
    }
    r
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: path is a C string per the contract.
    let target = (!path.is_null()).then(|| unsafe { CStr::from_ptr(path) }.to_bytes());
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        spawn_with(target, envp.cast(), |e| {
            real::posix_spawn(pid, path, fa, attr, argv, e.cast())
        })
    }
}

/// # Safety
/// libc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    fa: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: file is a C string per the contract.
    let target = (!file.is_null())
        .then(|| search_path(unsafe { CStr::from_ptr(file) }))
        .flatten();
    // SAFETY: the caller's arguments, passed on.
    unsafe {
        spawn_with(target.as_deref(), envp.cast(), |e| {
            real::posix_spawnp(pid, file, fa, attr, argv, e.cast())
        })
    }
}

/// Arguments an `execl*` call may pass (argv entries, NULL, and for execle
/// envp). Variadic integer/pointer arguments sit where a fixed-arity
/// function reads them on x86_64 and aarch64 Linux (as for fcntl); reading
/// past what the caller passed reads its stack frame, which is mapped.
const EXECL_MAX: usize = 32;

type P = *const c_char;

/// Collects an execl-style list: argv (NULL-terminated) and what follows.
fn gather(a: [P; EXECL_MAX]) -> Option<(Vec<P>, P)> {
    let end = a.iter().position(|p| p.is_null())?;
    let mut argv = a[..end].to_vec();
    argv.push(std::ptr::null());
    Some((argv, a.get(end + 1).copied().unwrap_or(std::ptr::null())))
}

macro_rules! execl_fn {
    ($name:ident, $doc:literal, |$path:ident, $argv:ident, $after:ident| $body:expr) => {
        #[doc = $doc]
        ///
        /// # Safety
        /// libc contract (see [`EXECL_MAX`] on the variadic arguments).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            $path: P,
            a0: P,
            a1: P,
            a2: P,
            a3: P,
            a4: P,
            a5: P,
            a6: P,
            a7: P,
            a8: P,
            a9: P,
            a10: P,
            a11: P,
            a12: P,
            a13: P,
            a14: P,
            a15: P,
            a16: P,
            a17: P,
            a18: P,
            a19: P,
            a20: P,
            a21: P,
            a22: P,
            a23: P,
            a24: P,
            a25: P,
            a26: P,
            a27: P,
            a28: P,
            a29: P,
            a30: P,
            a31: P,
        ) -> c_int {
            let all = [
                a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17,
                a18, a19, a20, a21, a22, a23, a24, a25, a26, a27, a28, a29, a30, a31,
            ];
            let Some(($argv, $after)) = gather(all) else {
                // SAFETY: errno of this thread.
                unsafe { *libc::__errno_location() = libc::E2BIG };
                return -1;
            };
            let _ = $after;
            $body
        }
    };
}

execl_fn!(
    execl,
    "execl: gathered into execv.",
    |path, argv, _after| {
        // SAFETY: a NULL-terminated argv built from the caller's list.
        unsafe { execv(path, argv.as_ptr()) }
    }
);

execl_fn!(
    execlp,
    "execlp: gathered into execvp.",
    |file, argv, _after| {
        // SAFETY: as above.
        unsafe { execvp(file, argv.as_ptr()) }
    }
);

execl_fn!(
    execle,
    "execle: gathered into execve (envp follows the NULL).",
    |path, argv, envp| {
        // SAFETY: as above; envp is the caller's environment array.
        unsafe { execve(path, argv.as_ptr(), envp as *const *const c_char) }
    }
);
