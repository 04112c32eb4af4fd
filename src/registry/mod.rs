//! The registry of live connections: what `tsss stat` reads.
//!
//! Each process that has tsss connections owns one small file,
//! `<dir>/<pid>`, a fixed-size table of its connections indexed by
//! descriptor ([`format`]), sparse, and mapped `MAP_SHARED`: an entry is
//! a few word stores, no system call (`tsss stat` reads the file). It holds an open-file-description lock
//! (`F_OFD_SETLK`, [`crate::os::lock`]) on it for its whole life, so a
//! file whose lock is free belongs to a dead process and is swept (by
//! `tsss stat`, and by the next process that registers). Byte counters are
//! not kept here: the rings' monotonic indices count every byte, and
//! `tsss stat` reads them from the segment ([`crate::shm::peek`]).
//!
//! # API (the shim and `conn` call these, and nothing else)
//! - [`configure`]: at load time, from the environment (no syscall);
//! - [`connection_event`]`(fd, `[`Event`]`)`: a new connection at connect
//!   or accept, negotiating or plain from the start. The first event of a
//!   process creates its file (lazily: a process without connections never
//!   opens the directory);
//! - [`changed`]: `conn` reports the switch to the rings, the client's
//!   attach, and a negotiation that ends plain; it updates the entry the
//!   connection has, and creates none;
//! - [`forget`]`(fd)` / [`forget_range`]: before a descriptor is closed or
//!   replaced (close, dup2/dup3 onto it, close_range, closefrom). A single
//!   atomic load when `fd` has no entry; async-signal-safe;
//! - [`after_fork`]: in a fork child: it registers itself, with a copy of
//!   the entries it inherited;
//! - [`after_exec`]: in a new program image, with the connections it
//!   adopted: the image registers again, keeping when each one began.
//!
//! The read and write paths never call any of these. Every call uses raw
//! syscalls (rustix, [`crate::os`]), never the libc functions the shim
//! overrides, and none allocates or takes a lock, so a signal handler's
//! `close` and a `_Fork` child are safe.
//!
//! # Directory ([`dir`])
//! `$XDG_RUNTIME_DIR/tsss` when that variable is set (an absolute path),
//! else `/tmp/tsss-<euid>`. Created 0700; used only if it is a directory
//! (not a symlink to one) owned by our euid with no group or other access.
//! Files are opened with `O_NOFOLLOW`, never `O_CREAT` through another
//! user's link. If the directory is someone else's, nothing is registered
//! and one `TSSS_LOG=info` line says why. `TSSS_REGISTRY=0` turns it off.
//! A process whose soft RLIMIT_NOFILE is below [`MIN_NOFILE`] keeps no
//! file: the descriptor it takes would be missed.

mod dir;
pub mod format;

pub use dir::{MIN_NOFILE, TMP_PREFIX, XDG_SUBDIR, same_file, sweep};
pub use format::{
    ENTRY_SIZE, FileHeader, FormatError, HEADER_SIZE, MAX_FILE_SIZE, Record, SLOTS, State,
    Transport, decode_header, decode_record, encode_header, encode_record, is_file_name,
};

use crate::conn::Role;
use crate::os::{self, fd as osfd, proc, time::realtime_ns};
use core::fmt;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering::*};

/// What happened to a connection.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// connect/accept of a connection tsss negotiates on (the client's
    /// marker is bound).
    Negotiating(Role),
    /// connect/accept of a connection that is plain from the start.
    Plain(Role, fmt::Arguments<'a>),
    /// Still negotiating, with a segment: the server's offer, or the
    /// client's attach. `tsss stat` can read what went through already.
    Attached(Role, SegmentInfo),
    /// Its directions switched to the rings of this segment.
    Accelerated(Role, SegmentInfo),
    /// A negotiating connection stays plain after all.
    FellBack(Role, fmt::Arguments<'a>),
}

/// The segment of a connection, as its side block names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub shmid: i32,
    pub nonce: u64,
    pub cap_c2s: u32,
    pub cap_s2c: u32,
}

impl Event<'_> {
    fn role(&self) -> Role {
        match *self {
            Event::Negotiating(r)
            | Event::Plain(r, _)
            | Event::Attached(r, _)
            | Event::Accelerated(r, _)
            | Event::FellBack(r, _) => r,
        }
    }
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// `XDG_RUNTIME_DIR` as it was at load time, kept without allocating.
static RUNTIME_DIR: OnceLock<format::FixedBuf<RUNTIME_DIR_MAX>> = OnceLock::new();
const RUNTIME_DIR_MAX: usize = 400;
static STATE: AtomicU8 = AtomicU8::new(IDLE);
/// Our file's descriptor while READY, else -1, and the file it names
/// (device, inode): a number the program closed behind our back and
/// reused names its file, never written to.
static FILE: AtomicI32 = AtomicI32::new(-1);
static FILE_DEV: AtomicU64 = AtomicU64::new(0);
static FILE_INO: AtomicU64 = AtomicU64::new(0);
/// Our file's mapping (`os::page::map_file_words`), made at the first
/// registration; a later one (the program closed our descriptor, or a
/// fork child's own file) maps its file over the same words. Entries are
/// stores into it: no system call, and nothing a reused descriptor number
/// could misdirect.
static MAP: OnceLock<&'static [AtomicU64]> = OnceLock::new();
/// Stores go into the mapping: a registration of ours is current (not in
/// a fork child before its own, nor once the program closed our file).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Pages of the mapped file that have their blocks: a store goes only into
/// those (into a hole on a full file system it would raise SIGBUS).
static PAGES: [AtomicU64; PAGE_WORDS] = [const { AtomicU64::new(0) }; PAGE_WORDS];
const PAGE: u64 = 4096;
const PAGE_WORDS: usize = (MAX_FILE_SIZE.div_ceil(PAGE) as usize).div_ceil(64);
/// A thread writes the header (it spans words: two at once would mix).
static HEADER_BUSY: AtomicBool = AtomicBool::new(false);
/// Slots with an entry in our file: `forget` costs one load otherwise.
static BITS: [AtomicU64; SLOTS / 64] = [const { AtomicU64::new(0) }; SLOTS / 64];
static UNLISTED: AtomicU32 = AtomicU32::new(0);
static CREATED_NS: AtomicU64 = AtomicU64::new(0);
/// The directory was swept by this image already.
static SWEPT: AtomicBool = AtomicBool::new(false);
static ZERO_ENTRY: [u8; ENTRY_SIZE] = [0; ENTRY_SIZE];

/// Sets the registry up from the environment at load time (the shim's
/// constructor, before it adopts connections across exec): `enabled`
/// (`TSSS_REGISTRY`, default on) and `XDG_RUNTIME_DIR` (an absolute path,
/// else ignored). No syscall, no allocation: most processes of a session
/// have `XDG_RUNTIME_DIR` set, and most never make a connection.
pub fn configure(enabled: bool, runtime_dir: Option<&[u8]>) {
    if let Some(d) =
        runtime_dir.filter(|d| d.starts_with(b"/") && d.len() < RUNTIME_DIR_MAX && !d.contains(&0))
    {
        let mut b = format::FixedBuf::new();
        b.push_bytes(d);
        let _ = RUNTIME_DIR.set(b);
    }
    ENABLED.store(enabled, Relaxed);
}

/// Whether connection events are recorded at all.
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

fn runtime_dir() -> Option<&'static [u8]> {
    RUNTIME_DIR.get().map(|d| &d.buf[..d.len])
}

/// A new connection on `fd` (connect, accept), as `ev` says: its entry,
/// described from the socket (the server's address, the peer). Costs
/// getsockname or getpeername, SO_PEERCRED, and an fstat that checks our
/// file's descriptor is still ours (a program that closed it behind our
/// back took our lock: we register again); for the process's first
/// entry, creating and mapping its file. Entries are stores into that
/// mapping, and kept in memory too (the mirror), for a fork child and for
/// registering again.
pub fn connection_event(fd: BorrowedFd<'_>, ev: Event<'_>) {
    connection_event_with(fd, ev, None);
}

/// The peer's process and user, for a caller that read them already.
#[derive(Clone, Copy, Debug)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
}

/// [`connection_event`] with the peer's credentials, if known (one
/// SO_PEERCRED less).
pub fn connection_event_with(fd: BorrowedFd<'_>, ev: Event<'_>, peer: Option<PeerCred>) {
    let raw = fd.as_raw_fd();
    if !enabled() || raw < 0 {
        return;
    }
    let slot = raw as usize;
    if slot >= SLOTS {
        UNLISTED.fetch_add(1, Relaxed);
        if file().is_some() {
            write_header();
        }
        return;
    }
    // Nowhere to list it (the directory is not ours): not even the socket
    // calls that describe it.
    if STATE.load(Relaxed) == FAILED || proc::in_vfork_child() {
        return;
    }
    let _ = file();
    let now = realtime_ns();
    let mut r = fresh(fd, ev.role(), now, peer);
    apply(&mut r, ev, now);
    write_slot(slot, &r);
}

/// What became of the connection whose entry is in slot `fd` (`conn`
/// calls it, with the descriptor the connection was made on): updated in
/// place. Without an entry for that role (the registry is off, or the
/// descriptor was closed while a duplicate lives on), nothing: one atomic
/// load.
pub fn changed(fd: RawFd, ev: Event<'_>) {
    if fd < 0 || fd as usize >= SLOTS {
        return;
    }
    let slot = fd as usize;
    if BITS[slot / 64].load(Relaxed) & bit(slot) == 0 || proc::in_vfork_child() {
        return;
    }
    let Some(mut r) = read_slot(slot).filter(|r| r.role == ev.role()) else {
        return;
    };
    apply(&mut r, ev, realtime_ns());
    write_slot(slot, &r);
}

fn apply(r: &mut Record, ev: Event<'_>, now: u64) {
    r.changed_ns = now;
    match ev {
        Event::Negotiating(_) => r.state = State::Negotiating,
        Event::Plain(_, why) | Event::FellBack(_, why) => {
            r.state = State::Plain;
            r.set_reason(why);
        }
        Event::Attached(_, s) => {
            r.state = State::Negotiating;
            r.set_segment(s);
        }
        Event::Accelerated(_, s) => {
            r.state = State::Accelerated;
            r.set_segment(s);
        }
    }
}

/// `fd` is about to be closed or replaced: its entry goes. Also notices
/// the program closing our own file (a daemon closing every descriptor):
/// the next event registers again. One atomic load for a descriptor
/// without an entry.
pub fn forget(fd: RawFd, vfork: &proc::VforkCheck) {
    if fd < 0 {
        return;
    }
    if fd == FILE.load(Relaxed) {
        // (A vfork child's close of it closes its own copy only.)
        if !vfork.yes() {
            lost();
        }
        return;
    }
    let slot = fd as usize;
    if slot >= SLOTS || BITS[slot / 64].load(Relaxed) & bit(slot) == 0 {
        return;
    }
    // A vfork child has its own descriptors but our memory: its closes
    // are not ours.
    if vfork.yes() {
        return;
    }
    BITS[slot / 64].fetch_and(!bit(slot), SeqCst);
    mirror_store(slot, &ZERO_ENTRY);
    store(slot_offset(slot), &ZERO_ENTRY);
}

/// [`forget`] for every descriptor in `first..=last` (close_range,
/// closefrom).
pub fn forget_range(first: u32, last: u32) {
    let vfork = proc::VforkCheck::new();
    let f = FILE.load(Relaxed);
    if f >= 0 && (first..=last).contains(&(f as u32)) {
        if vfork.yes() {
            return;
        }
        lost();
    }
    if first as usize >= SLOTS {
        return;
    }
    let last = (last as usize).min(SLOTS - 1);
    let words = first as usize / 64..=last / 64;
    for (w, word) in BITS.iter().enumerate().filter(|(w, _)| words.contains(w)) {
        let mut bits = word.load(Relaxed);
        while bits != 0 {
            let slot = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if (first as usize..=last).contains(&slot) {
                forget(slot as RawFd, &vfork);
            }
        }
    }
}

/// In a fork child: the inherited descriptor shares the parent's lock, so
/// the child closes it and makes a file of its own with the entries of
/// the connections it inherited (from our memory: the parent may already
/// be rewriting its file). A child of a process that never registered
/// does nothing.
pub fn after_fork() {
    // Each store only if it changes something: the child is alone, and a
    // store to an unchanged page costs it a copy (most children exec at
    // once).
    // The parent's file is mapped: stores there would land in it.
    if ACTIVE.load(Relaxed) {
        ACTIVE.store(false, Release);
    }
    let parent = FILE.load(Acquire);
    if parent >= 0 {
        FILE.store(-1, Release);
    }
    if !matches!(STATE.load(Acquire), FAILED | IDLE) {
        STATE.store(IDLE, Release);
    }
    if parent < 0 {
        return;
    }
    osfd::close_raw(parent);
    if BITS.iter().any(|w| w.load(Relaxed) != 0) {
        ensure_registered();
    }
}

/// In a new program image, with the connections it adopted (descriptor
/// and current state). The previous image of this process left its file
/// under the same pid: an entry for the same connection keeps its start
/// time and address from there.
pub fn after_exec(adopted: &[(BorrowedFd<'_>, Event<'_>)]) {
    if !enabled() || adopted.is_empty() || proc::in_vfork_child() {
        return;
    }
    // Read what the previous image wrote before registering truncates it.
    let mut before: [Option<Record>; 16] = [None; 16];
    if let Some(dir) = dir::open(runtime_dir(), false)
        && let Some(old) = dir::previous_file(dir.as_fd(), proc::getpid())
    {
        for (i, (fd, _)) in adopted.iter().take(before.len()).enumerate() {
            let slot = fd.as_raw_fd() as usize;
            if slot >= SLOTS {
                continue;
            }
            let mut b = [0u8; ENTRY_SIZE];
            if rustix::io::pread(&old, &mut b, slot_offset(slot)).is_ok_and(|n| n == ENTRY_SIZE) {
                before[i] = decode_record(slot, &b).ok().flatten();
            }
        }
    }
    let now = realtime_ns();
    for (i, &(fd, ev)) in adopted.iter().enumerate() {
        let slot = fd.as_raw_fd() as usize;
        if slot >= SLOTS {
            continue;
        }
        let seg = match ev {
            Event::Accelerated(_, s) | Event::Attached(_, s) => Some(s.shmid),
            _ => None,
        };
        let prev = before
            .get(i)
            .copied()
            .flatten()
            .filter(|r| r.role == ev.role() && seg.is_none_or(|id| r.shmid == id));
        // Not found: listed as new, from this state on.
        let mut r = prev.unwrap_or_else(|| fresh(fd, ev.role(), now, None));
        apply(&mut r, ev, now);
        write_slot(slot, &r);
    }
}

fn bit(slot: usize) -> u64 {
    1 << (slot % 64)
}

/// Calls `f` with the number of each bit set in `map`.
fn for_each_bit(map: &[AtomicU64], mut f: impl FnMut(usize)) {
    for (w, word) in map.iter().enumerate() {
        let mut bits = word.load(Acquire);
        while bits != 0 {
            f(w * 64 + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
}

fn slot_offset(slot: usize) -> u64 {
    (HEADER_SIZE + slot * ENTRY_SIZE) as u64
}

/// Our file, if registered and still ours. One the program closed behind
/// our back (a raw close syscall) is lost: the next event registers again.
fn file() -> Option<RawFd> {
    if STATE.load(Acquire) != READY {
        return None;
    }
    let f = FILE.load(Acquire);
    if f < 0 {
        return None;
    }
    let ours = (FILE_DEV.load(Acquire), FILE_INO.load(Acquire));
    if osfd::identity(f) != Some(ours) {
        lost();
        return None;
    }
    Some(f)
}

/// The program closed or replaced our descriptor: its lock went with it.
/// The next event registers again, with every entry we hold in memory.
fn lost() {
    if STATE.compare_exchange(READY, IDLE, AcqRel, Relaxed).is_ok() {
        // The file's lock is free: another may take its name meanwhile.
        ACTIVE.store(false, Release);
        FILE.store(-1, Release);
        crate::log!(
            crate::log::INFO,
            "registry: the program closed our registry file; registering again at the next connection"
        );
    }
}

/// Our file, registering first if this is the process's first event (or
/// the first since a fork or since the program closed our file). While
/// another thread registers, `None`: that thread writes every entry of
/// the mirror once it is done, ours too (SeqCst: it either sees our bit,
/// or we see READY), so nobody waits.
fn ensure_registered() -> Option<RawFd> {
    loop {
        match STATE.load(SeqCst) {
            READY => match FILE.load(Acquire) {
                f if f >= 0 => return Some(f),
                // Lost just now: register again.
                _ => continue,
            },
            IDLE => {
                if STATE.compare_exchange(IDLE, BUSY, SeqCst, SeqCst).is_err() {
                    continue;
                }
                let Some(fd) = register() else {
                    STATE.store(FAILED, SeqCst);
                    return None;
                };
                FILE.store(fd, SeqCst);
                STATE.store(READY, SeqCst);
                // Entries made before (a fork child's inherited ones, a
                // re-registration's) or while we registered.
                for_each_bit(&BITS, |slot| store(slot_offset(slot), &mirror_load(slot)));
                return Some(fd);
            }
            _ => return None,
        }
    }
}

/// Creates, locks and heads this process's file (sweeping the directory
/// the first time); returns its descriptor, which we keep for the
/// process's life.
fn register() -> Option<RawFd> {
    if !dir::enough_descriptors() {
        return None;
    }
    let dir = dir::open(runtime_dir(), true)?;
    if !SWEPT.swap(true, Relaxed) {
        dir::sweep(dir.as_fd());
    }
    // Registering again (the program closed our descriptor): our own file,
    // if we get it back, is mapped already and must never shrink.
    let keep = MAP
        .get()
        .map(|_| (FILE_DEV.load(Acquire), FILE_INO.load(Acquire)));
    let f = dir::create_file(dir.as_fd(), proc::getpid(), keep)?;
    let st = rustix::fs::fstat(&f).ok()?;
    rustix::fs::ftruncate(&f, MAX_FILE_SIZE).ok()?;
    if Some((st.st_dev, st.st_ino)) != keep {
        // Stores may reach the pages they reached before (a writer racing
        // this swap): those get their blocks in the new file first, and
        // the header's page, which this registration writes.
        let raw = f.as_raw_fd();
        PAGES[0].fetch_or(1, Release);
        let mut failed = None;
        for_each_bit(&PAGES, |page| {
            if let Err(e) = osfd::allocate_raw(raw, page as u64 * PAGE, PAGE) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            crate::log!(crate::log::INFO, "registry: cannot allocate our file: {e}");
            return None;
        }
        let over = MAP.get().copied();
        let words = match os::page::map_file_words(f.as_fd(), MAX_FILE_SIZE as usize, over) {
            Ok(w) => w,
            Err(e) => {
                crate::log!(crate::log::INFO, "registry: cannot map our file: {e}");
                return None;
            }
        };
        let _ = MAP.set(words);
        FILE_DEV.store(st.st_dev, SeqCst);
        FILE_INO.store(st.st_ino, SeqCst);
    }
    ACTIVE.store(true, Release);
    CREATED_NS.store(realtime_ns(), Relaxed);
    let raw = f.into_raw_fd();
    write_header();
    Some(raw)
}

fn write_header() {
    if HEADER_BUSY.swap(true, Acquire) {
        // Another thread writes it now, with a count at most one behind.
        return;
    }
    let h = FileHeader {
        pid: proc::getpid(),
        uid: rustix::process::geteuid().as_raw(),
        created_ns: CREATED_NS.load(Relaxed),
        unlisted: UNLISTED.load(Relaxed),
        comm: proc::thread_name(),
    };
    store(0, &encode_header(&h));
    HEADER_BUSY.store(false, Release);
}

/// `bytes` into our file's mapping at `off` (within one page), if a
/// registration of ours is current and that page has its blocks.
/// Async-signal-safe: word stores, and at most once per page an fstat and
/// a fallocate.
fn store(off: u64, bytes: &[u8]) {
    if !ACTIVE.load(Acquire) {
        return;
    }
    let Some(words) = MAP.get() else { return };
    if page_ready(off / PAGE, bytes.iter().all(|&b| b == 0)) {
        put_words(&words[off as usize / 8..], bytes);
    }
}

/// `bytes` (whole words) into the front of `words`.
fn put_words(words: &[AtomicU64], bytes: &[u8]) {
    for (w, chunk) in words.iter().zip(bytes.chunks_exact(8)) {
        w.store(
            u64::from_le_bytes(chunk.try_into().unwrap_or_default()),
            Relaxed,
        );
    }
}

/// Whether `page` of our file has its blocks, giving it them if need be
/// (a full file system: no, and the entry waits in the mirror).
/// `zeros`: the store writes zeros, which a hole reads as already.
fn page_ready(page: u64, zeros: bool) -> bool {
    let (w, b) = (page as usize / 64, 1u64 << (page % 64));
    let Some(word) = PAGES.get(w) else {
        return false;
    };
    if word.load(Acquire) & b != 0 {
        return true;
    }
    // (The header's page got its blocks at registration, before FILE was
    // published.)
    let f = if zeros { -1 } else { file().unwrap_or(-1) };
    if f < 0 || osfd::allocate_raw(f, page * PAGE, PAGE).is_err() {
        return false;
    }
    word.fetch_or(b, Release);
    true
}

/// Our copy of every entry, so that a fork child (whose parent may be
/// rewriting the shared file) or a re-registration has them. 1 MiB of
/// zero pages: memory only where entries are written.
static MIRROR: [[AtomicU64; ENTRY_SIZE / 8]; SLOTS] =
    [const { [const { AtomicU64::new(0) }; ENTRY_SIZE / 8] }; SLOTS];

fn mirror_store(slot: usize, b: &[u8; ENTRY_SIZE]) {
    put_words(&MIRROR[slot], b);
}

fn mirror_load(slot: usize) -> [u8; ENTRY_SIZE] {
    let mut b = [0u8; ENTRY_SIZE];
    for (w, chunk) in MIRROR[slot].iter().zip(b.chunks_exact_mut(8)) {
        chunk.copy_from_slice(&w.load(Relaxed).to_le_bytes());
    }
    b
}

fn read_slot(slot: usize) -> Option<Record> {
    if BITS[slot / 64].load(Relaxed) & bit(slot) == 0 {
        return None;
    }
    decode_record(slot, &mirror_load(slot)).ok().flatten()
}

/// Into the mirror, then the file (registering it first if need be).
fn write_slot(slot: usize, r: &Record) {
    let b = encode_record(r);
    mirror_store(slot, &b);
    BITS[slot / 64].fetch_or(bit(slot), SeqCst);
    if ensure_registered().is_some() {
        store(slot_offset(slot), &b);
    }
}

/// A new entry: the server's address and the peer, from the socket.
fn fresh(sock: BorrowedFd<'_>, role: Role, now: u64, peer: Option<PeerCred>) -> Record {
    let mut r = Record::new(sock.as_raw_fd(), role, now);
    // The server's name: our own for the server, the peer's for a client.
    let addr = match role {
        Role::Server => rustix::net::getsockname(sock).ok(),
        Role::Client => rustix::net::getpeername(sock).ok().flatten(),
    };
    if let Some(u) = addr.and_then(|a| rustix::net::SocketAddrUnix::try_from(a).ok()) {
        if let Some(p) = u.path_bytes() {
            r.set_addr(Transport::Path, p);
        } else if let Some(a) = u.abstract_name() {
            r.set_addr(Transport::Abstract, a);
        } else {
            r.set_addr(Transport::Unnamed, &[]);
        }
    }
    let peer = peer.or_else(|| {
        let c = rustix::net::sockopt::socket_peercred(sock).ok()?;
        Some(PeerCred {
            pid: c.pid.as_raw_nonzero().get(),
            uid: c.uid.as_raw(),
        })
    });
    if let Some(c) = peer {
        r.peer_pid = c.pid;
        r.peer_uid = c.uid;
    }
    r
}
