//! The per-user registry directory and this process's file in it: found
//! and checked (never following another user's link), created, locked,
//! and swept of the files of dead processes.

use super::format::{FixedBuf, is_file_name};
use super::format::{HEADER_SIZE, SLOTS};
use crate::os::lock;
use core::fmt::{self, Write};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::CStr;
use std::mem::MaybeUninit;

/// Directory name under `$XDG_RUNTIME_DIR`.
pub const XDG_SUBDIR: &str = "tsss";
/// Prefix of the per-user directory under /tmp: `/tmp/tsss-<uid>`.
pub const TMP_PREFIX: &str = "/tmp/tsss-";
/// Below this soft RLIMIT_NOFILE a process keeps no registry file: the
/// descriptor it takes would be missed.
pub const MIN_NOFILE: u64 = 64;

/// Logs why nothing is registered.
fn refuse(path: &[u8], why: fmt::Arguments<'_>) {
    crate::log!(
        crate::log::INFO,
        "registry: {}: {why}; connections are not listed for `tsss stat`",
        String::from_utf8_lossy(path)
    );
}

/// Opens (creating it if `create`) our private registry directory,
/// `<runtime_dir>/tsss` or `/tmp/tsss-<euid>`, and checks it: a directory,
/// not a link, ours, mode 0700 or narrower. Says why not (when creating).
pub(super) fn open(runtime_dir: Option<&[u8]>, create: bool) -> Option<OwnedFd> {
    let uid = rustix::process::geteuid().as_raw();
    let mut path = FixedBuf::<512>::new();
    let dirflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match runtime_dir {
        Some(xdg) => {
            path.push_bytes(xdg);
            let _ = write!(path, "/{XDG_SUBDIR}");
            let mut base = FixedBuf::<512>::new();
            base.push_bytes(xdg);
            // XDG_RUNTIME_DIR is the user's own setting: followed as given.
            rustix::fs::open(
                base.as_cstr(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .and_then(|b| {
                if create {
                    match rustix::fs::mkdirat(&b, XDG_SUBDIR, Mode::RWXU) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                }
                rustix::fs::openat(&b, XDG_SUBDIR, dirflags, Mode::empty())
            })
        }
        None => {
            let _ = write!(path, "{TMP_PREFIX}{uid}");
            let p = path.as_cstr();
            if create {
                match rustix::fs::mkdir(p, Mode::RWXU) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        refuse(&path.buf[..path.len], format_args!("cannot create: {e}"));
                        return None;
                    }
                }
            }
            rustix::fs::open(p, dirflags, Mode::empty())
        }
    };
    let shown = &path.buf[..path.len];
    let dir = match opened {
        Ok(d) => d,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            if create {
                refuse(shown, format_args!("not a directory (a symlink?)"));
            }
            return None;
        }
        Err(e) => {
            if create {
                refuse(shown, format_args!("cannot open: {e}"));
            }
            return None;
        }
    };
    match rustix::fs::fstat(&dir) {
        Ok(st) if st.st_uid == uid && st.st_mode & 0o077 == 0 => Some(dir),
        Ok(st) => {
            if create {
                refuse(
                    shown,
                    format_args!(
                        "not a private directory of ours (owner {}, mode {:o})",
                        st.st_uid,
                        st.st_mode & 0o7777
                    ),
                );
            }
            None
        }
        Err(e) => {
            refuse(shown, format_args!("cannot stat: {e}"));
            None
        }
    }
}

/// Removes the files in `dir` whose lock is free: their processes are
/// gone. Safe against a process registering under the same name at once
/// (it re-checks that its file is still linked after locking). Returns
/// how many went. No allocation (the shim runs it too).
pub fn sweep(dir: BorrowedFd<'_>) -> usize {
    let mut buf = [const { MaybeUninit::<u8>::uninit() }; 4096];
    let mut it = rustix::fs::RawDir::new(dir, &mut buf);
    let mut swept = 0;
    let mut seen = 0;
    while let Some(Ok(e)) = it.next() {
        seen += 1;
        if seen > 4 * SLOTS {
            break;
        }
        let name = e.file_name();
        if !is_file_name(name.to_bytes()) {
            continue;
        }
        let Ok(f) = rustix::fs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        ) else {
            continue;
        };
        if lock::try_lock(f.as_fd()).is_ok()
            && same_file(dir, name, &f)
            && rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok()
        {
            swept += 1;
        }
    }
    swept
}

/// Whether `name` in `dir` is (still) the file `f` is open on.
pub fn same_file(dir: BorrowedFd<'_>, name: &CStr, f: &OwnedFd) -> bool {
    match (
        rustix::fs::fstat(f),
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
    ) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Process `pid`'s file name: `<pid>`, or `<pid>.<n>` when another live
/// process holds that name (the same pid in another pid namespace).
pub(super) fn file_name(pid: i32, n: u32) -> Option<FixedBuf<32>> {
    let mut b = FixedBuf::<32>::new();
    let r = if n == 0 {
        write!(b, "{pid}")
    } else {
        write!(b, "{pid}.{n}")
    };
    r.ok().map(|_| b)
}

/// Whether this process may keep a registry file: the file takes one
/// descriptor for the process's life, and a program with only a few would
/// hit EMFILE earlier than without tsss. Says why not.
pub(super) fn enough_descriptors() -> bool {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    if soft < MIN_NOFILE {
        crate::log!(
            crate::log::INFO,
            "registry: RLIMIT_NOFILE is {soft}, too few to take one for our file; \
             connections are not listed for `tsss stat`"
        );
        return false;
    }
    true
}

/// Creates and locks process `pid`'s file in `dir`, empty; returns it,
/// moved above the program's usual range of descriptors so that the
/// program's own numbers are the ones it would get without tsss.
pub(super) fn create_file(
    dir: BorrowedFd<'_>,
    pid: i32,
    keep: Option<(u64, u64)>,
) -> Option<OwnedFd> {
    let uid = rustix::process::geteuid().as_raw();
    for n in 0..8 {
        let name = file_name(pid, n)?;
        let f = match rustix::fs::openat(
            dir,
            name.as_cstr(),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(f) => f,
            Err(e) => {
                crate::log!(crate::log::INFO, "registry: cannot create our file: {e}");
                return None;
            }
        };
        match lock::try_lock(f.as_fd()) {
            Ok(()) => {}
            // A live process holds this name, or a sweeper holds it for
            // a moment: take the next one.
            Err(Errno::AGAIN | Errno::ACCESS) => continue,
            Err(e) => {
                crate::log!(crate::log::INFO, "registry: cannot lock our file: {e}");
                return None;
            }
        }
        // Swept between our open and our lock: it is no file any more.
        if !same_file(dir, name.as_cstr(), &f) {
            continue;
        }
        match rustix::fs::fstat(&f) {
            Ok(st)
                if st.st_uid == uid
                    && rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() => {}
            _ => return None,
        }
        // A dead process's entries go; our own mapped file (`keep`) must
        // never shrink under its mapping.
        let ours = rustix::fs::fstat(&f).is_ok_and(|st| Some((st.st_dev, st.st_ino)) == keep);
        if !ours && rustix::fs::ftruncate(&f, 0).is_err() {
            return None;
        }
        crate::log!(
            crate::log::DEBUG,
            "registry: listing our connections in {}",
            String::from_utf8_lossy(&name.buf[..name.len])
        );
        return Some(move_high(f));
    }
    crate::log!(
        crate::log::INFO,
        "registry: every name for our file is taken"
    );
    None
}

/// The file's descriptor duplicated to a high number (near the soft
/// RLIMIT_NOFILE, at most 1000).
fn move_high(f: OwnedFd) -> OwnedFd {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024);
    let min = soft.saturating_sub(32).clamp(3, 1000) as RawFd;
    rustix::io::fcntl_dupfd_cloexec(&f, min).unwrap_or(f)
}

/// The file this process's previous program image left (before an exec):
/// `<pid>`, if its header names this pid. To be read before registering
/// truncates it.
pub(super) fn previous_file(dir: BorrowedFd<'_>, pid: i32) -> Option<OwnedFd> {
    let name = file_name(pid, 0)?;
    let f = rustix::fs::openat(
        dir,
        name.as_cstr(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let mut h = [0u8; HEADER_SIZE];
    let ours = rustix::io::pread(&f, &mut h, 0).is_ok_and(|n| n == HEADER_SIZE)
        && super::format::decode_header(&h).is_ok_and(|h| h.pid == pid);
    ours.then_some(f)
}
