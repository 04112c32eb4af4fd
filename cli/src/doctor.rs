//! `tsss doctor`: what decides whether acceleration can work here, and for
//! a given program.

use crate::{DoctorArgs, elf, libpath, run};
use std::path::Path;
use std::process::ExitCode;
use tsss_core::registry;
use tsss_core::shm::layout::HDR_SIZE;

/// Socket-related calls a program may import: those tsss overrides are
/// listed as such; the others are named, with why it matters (or not).
const SOCKET_CALLS: &[&str] = &[
    "socket",
    "connect",
    "accept",
    "accept4",
    "shutdown",
    "close",
    "close_range",
    "closefrom",
    "read",
    "__read_chk",
    "readv",
    "write",
    "writev",
    "recv",
    "__recv_chk",
    "recvfrom",
    "__recvfrom_chk",
    "recvmsg",
    "recvmmsg",
    "send",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "getsockopt",
    "getsockname",
    "getpeername",
    "ioctl",
    "fcntl",
    "fcntl64",
    "poll",
    "__poll_chk",
    "ppoll",
    "__ppoll_chk",
    "select",
    "pselect",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "sendfile",
    "sendfile64",
    "splice",
    "dup",
    "dup2",
    "dup3",
    "fork",
    "_Fork",
    "execve",
    "execv",
    "execvp",
    "execvpe",
    "fexecve",
    "execl",
    "execlp",
    "execle",
    "posix_spawn",
    "posix_spawnp",
    "socketpair",
    "bind",
    "listen",
    "setsockopt",
    "syscall",
    "fdopen",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_queue_init",
    "aio_read",
    "aio_write",
    "vfork",
];

/// Imports that bypass tsss if used on an accelerated socket.
fn bypass_note(name: &str) -> Option<&'static str> {
    Some(match name {
        "syscall" => "raw syscalls bypass tsss",
        "fdopen" => "stdio on an accelerated socket bypasses tsss",
        "io_uring_setup" | "io_uring_enter" | "io_uring_queue_init" => "io_uring I/O bypasses tsss",
        "aio_read" | "aio_write" => "POSIX AIO bypasses tsss",
        _ => return None,
    })
}

struct Report {
    fails: usize,
}

impl Report {
    fn line(&mut self, status: Status, what: &str, text: impl AsRef<str>) {
        let tag = match status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => {
                self.fails += 1;
                "FAIL"
            }
            Status::Info => "    ",
        };
        println!("  {tag}  {what:<15} {}", text.as_ref());
    }
}

#[derive(Clone, Copy)]
enum Status {
    Ok,
    Warn,
    Fail,
    Info,
}

pub fn main(a: DoctorArgs) -> ExitCode {
    let mut r = Report { fails: 0 };
    let ring = crate::ring_bytes(a.ring_size.as_deref());
    println!("tsss doctor");
    let lib = match libpath::find() {
        Ok(p) => match elf::Elf::read(&p) {
            Ok(e) => {
                r.line(
                    Status::Ok,
                    "library",
                    format!("{} ({} calls overridden)", p.display(), e.exports.len()),
                );
                Some(e)
            }
            Err(e) => {
                r.line(Status::Fail, "library", e);
                None
            }
        },
        Err(e) => {
            r.line(Status::Fail, "library", e);
            None
        }
    };
    limits(&mut r, ring);
    namespace(&mut r);
    membarrier(&mut r);
    registry_dir(&mut r);
    if let Some(p) = &a.program {
        program(&mut r, p, lib.as_ref());
    }
    if r.fails > 0 {
        println!("{} check(s) failed", r.fails);
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `kernel.<name>`, or a warning line saying it cannot be read.
fn sysctl(r: &mut Report, name: &str) -> Option<u128> {
    let path = format!("/proc/sys/kernel/{name}");
    let v = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    if v.is_none() {
        r.line(
            Status::Warn,
            &format!("kernel.{name}"),
            format!("cannot read {path}"),
        );
    }
    v
}

/// Segments and bytes in use in this IPC namespace.
fn shm_in_use() -> (u128, u128) {
    let Ok(text) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return (0, 0);
    };
    let mut lines = text.lines();
    let size_col = lines
        .next()
        .and_then(|h| h.split_whitespace().position(|c| c == "size"));
    let (mut n, mut bytes) = (0, 0);
    for l in lines {
        n += 1;
        if let Some(s) = size_col.and_then(|c| l.split_whitespace().nth(c)?.parse::<u128>().ok()) {
            bytes += s;
        }
    }
    (n, bytes)
}

fn limits(r: &mut Report, ring: usize) {
    let seg = (HDR_SIZE + 2 * ring) as u128;
    let page = rustix::param::page_size() as u128;
    r.line(
        Status::Info,
        "ring size",
        format!(
            "{} KiB per direction (TSSS_RING_SIZE): a {} KiB segment per connection",
            ring >> 10,
            seg >> 10
        ),
    );
    let (used, used_bytes) = shm_in_use();
    let caps = [
        shmmax(r, seg),
        shmall(r, seg, page, used_bytes),
        shmmni(r, used),
    ];
    // The tightest; of equals the first, as min_by_key keeps it.
    if let Some((n, why)) = caps.into_iter().flatten().min_by_key(|&(n, _)| n) {
        r.line(
            Status::Info,
            "=>",
            format!(
                "at most {n} accelerated connections at once (limited by {why}); \
                 beyond that, connections stay plain"
            ),
        );
    }
}

/// This, `shmall` and `shmmni` each check one limit and return how many
/// connections it allows, with its name, if it limits them.
fn shmmax(r: &mut Report, seg: u128) -> Option<(u128, &'static str)> {
    match sysctl(r, "shmmax") {
        Some(max) if max >= seg => r.line(
            Status::Ok,
            "kernel.shmmax",
            format!("{max} bytes per segment (one needs {seg})"),
        ),
        Some(max) => {
            r.line(
                Status::Fail,
                "kernel.shmmax",
                format!(
                    "{max} bytes per segment, one needs {seg}: every connection stays plain \
                     (lower TSSS_RING_SIZE or raise kernel.shmmax)"
                ),
            );
            return Some((0, "kernel.shmmax"));
        }
        None => {}
    }
    None
}

fn shmall(r: &mut Report, seg: u128, page: u128, used_bytes: u128) -> Option<(u128, &'static str)> {
    let all = sysctl(r, "shmall")?;
    let free_pages = all.saturating_sub(used_bytes.div_ceil(page));
    let n = free_pages / seg.div_ceil(page);
    let room = if n > 1 << 32 {
        "no practical limit".to_string()
    } else {
        format!("room for {n} connections")
    };
    r.line(
        if n > 0 { Status::Ok } else { Status::Fail },
        "kernel.shmall",
        format!(
            "{all} pages of {page} bytes, {} in use: {room}",
            used_bytes.div_ceil(page)
        ),
    );
    Some((n, "kernel.shmall"))
}

fn shmmni(r: &mut Report, used: u128) -> Option<(u128, &'static str)> {
    let mni = sysctl(r, "shmmni")?;
    let n = mni.saturating_sub(used);
    r.line(
        if n > 0 { Status::Ok } else { Status::Fail },
        "kernel.shmmni",
        format!("{mni} segments, {used} in use: room for {n} connections"),
    );
    Some((n, "kernel.shmmni"))
}

fn namespace(r: &mut Report) {
    let ours = std::fs::read_link("/proc/self/ns/ipc");
    let init = std::fs::read_link("/proc/1/ns/ipc");
    match (ours, init) {
        (Ok(o), Ok(i)) if o == i => r.line(
            Status::Ok,
            "IPC namespace",
            format!(
                "{} (pid 1's): processes in another IPC namespace (a container) \
                 connect to these plain",
                o.display()
            ),
        ),
        (Ok(o), Ok(_)) => r.line(
            Status::Warn,
            "IPC namespace",
            format!(
                "{} is not pid 1's: tsss accelerates only between processes of this \
                 namespace; with others a connection stays plain",
                o.display()
            ),
        ),
        (Ok(o), Err(_)) => r.line(
            Status::Ok,
            "IPC namespace",
            format!("{} (pid 1's not readable to compare)", o.display()),
        ),
        (Err(e), _) => r.line(Status::Warn, "IPC namespace", format!("unknown: {e}")),
    }
}

/// Informational: tsss does not use membarrier today (its spin/sleep
/// hand-off is a doorbell on the socket), so no answer fails a check.
fn membarrier(r: &mut Report) {
    use rustix::thread::MembarrierQuery;
    let q = rustix::thread::membarrier_query();
    let what = if q.is_empty() {
        "MEMBARRIER_CMD_QUERY answers nothing (ENOSYS, or filtered by seccomp)".to_string()
    } else if q.contains(MembarrierQuery::GLOBAL_EXPEDITED) {
        "MEMBARRIER_CMD_GLOBAL_EXPEDITED available".to_string()
    } else {
        format!(
            "available, but not MEMBARRIER_CMD_GLOBAL_EXPEDITED (commands {:#x})",
            q.bits()
        )
    };
    r.line(
        Status::Info,
        "membarrier",
        format!("{what}; not used by tsss"),
    );
}

fn registry_dir(r: &mut Report) {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        Some(x) => Path::new(&x).join(registry::XDG_SUBDIR),
        None => format!("{}{uid}", registry::TMP_PREFIX).into(),
    };
    match std::fs::symlink_metadata(&dir) {
        Err(_) => r.line(
            Status::Ok,
            "registry",
            format!("{} (created at the first connection)", dir.display()),
        ),
        Ok(m) if !m.is_dir() => r.line(
            Status::Fail,
            "registry",
            format!(
                "{} is not a directory (a symlink?): connections will not be listed",
                dir.display()
            ),
        ),
        Ok(m) if m.uid() != uid || m.mode() & 0o077 != 0 => r.line(
            Status::Fail,
            "registry",
            format!(
                "{} has owner {} and mode {:o}: not a private directory of uid {uid}, \
                 so connections will not be listed (remove it)",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ),
        Ok(_) => {
            let files = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| registry::is_file_name(e.file_name().as_encoded_bytes()))
                        .count()
                })
                .unwrap_or(0);
            r.line(
                Status::Ok,
                "registry",
                format!("{} (private, {files} files)", dir.display()),
            );
        }
    }
}

fn program(r: &mut Report, prog: &std::ffi::OsStr, lib: Option<&elf::Elf>) {
    let Some(path) = run::resolve(prog) else {
        println!("program {}", prog.to_string_lossy());
        r.line(Status::Fail, "found", "not found (PATH, or not executable)");
        return;
    };
    println!("program {}", path.display());
    let target = match elf::script_interpreter(&path) {
        Some(i) => {
            r.line(Status::Info, "script", format!("run by {}", i.display()));
            i
        }
        None => path.clone(),
    };
    let e = match elf::Elf::read(&target) {
        Ok(e) => e,
        Err(e) => {
            r.line(Status::Fail, "ELF", e);
            return;
        }
    };
    let obstacles = run::preload_obstacles(&path);
    linking(r, &e, obstacles);
    if e.is_static() {
        return;
    }
    if !e.has_symbols {
        r.line(Status::Warn, "imports", "no dynamic symbol table to read");
        return;
    }
    imports(r, &e, lib);
}

/// How the program is linked, and whether LD_PRELOAD reaches it.
fn linking(r: &mut Report, e: &elf::Elf, obstacles: Vec<String>) {
    match &e.interp {
        None => r.line(Status::Info, "linking", "static (no loader)"),
        Some(i) if e.is_musl() => r.line(Status::Info, "linking", format!("dynamic, musl ({i})")),
        Some(i) => r.line(Status::Ok, "linking", format!("dynamic, loader {i}")),
    }
    if obstacles.is_empty() {
        r.line(Status::Ok, "LD_PRELOAD", "applies");
    } else {
        for o in obstacles {
            r.line(Status::Fail, "LD_PRELOAD", o);
        }
    }
}

/// Which of the program's socket calls tsss overrides, and which it
/// does not.
fn imports(r: &mut Report, e: &elf::Elf, lib: Option<&elf::Elf>) {
    let imported = |n: &&str| e.imports.iter().any(|i| i == n);
    let ours = |n: &&str| lib.is_some_and(|l| l.exports.iter().any(|x| x == n));
    let calls: Vec<&str> = SOCKET_CALLS.iter().copied().filter(imported).collect();
    let (over, rest): (Vec<&str>, Vec<&str>) = calls.iter().copied().partition(|n| ours(n));
    if calls.is_empty() {
        r.line(
            Status::Warn,
            "socket calls",
            "imports none: it makes its own syscalls (a Go program?), which tsss cannot see",
        );
        return;
    }
    r.line(
        if lib.is_some() {
            Status::Ok
        } else {
            Status::Warn
        },
        "overridden",
        format!(
            "{} of its {} socket calls: {}",
            over.len(),
            calls.len(),
            over.join(" ")
        ),
    );
    not_overridden(r, &rest);
    if e.needed.iter().any(|n| n.starts_with("liburing")) {
        r.line(
            Status::Warn,
            "io_uring",
            "linked with liburing: I/O submitted through io_uring bypasses tsss",
        );
    }
}

/// The imported socket calls tsss does not override: those that bypass
/// it each with why, the harmless ones on one line.
fn not_overridden(r: &mut Report, rest: &[&str]) {
    let (bypass, harmless): (Vec<&str>, Vec<&str>) =
        rest.iter().copied().partition(|n| bypass_note(n).is_some());
    for n in bypass {
        r.line(
            Status::Warn,
            "not overridden",
            format!("{n}: {}", bypass_note(n).unwrap_or_default()),
        );
    }
    if !harmless.is_empty() {
        r.line(
            Status::Info,
            "not overridden",
            format!("{} (need no override)", harmless.join(" ")),
        );
    }
}
