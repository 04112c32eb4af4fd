//! The fd table: which descriptors are accelerated connections or emulated
//! epoll instances.
//!
//! read/write call `get` on every descriptor, also from signal handlers, so
//! it is lock-free and allocation-free: a two-level array of atomic pointers
//! indexed by fd. Entries are reference counted and their memory is never
//! returned to the allocator (recycled through a free list), so a lookup
//! racing with close can touch a stale entry's counter safely and then sees
//! that the slot changed.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ops::Deref;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use tsss_core::conn::Conn;
use tsss_core::readiness::EpollSet;
use tsss_core::signals::Critical;

pub enum Entry {
    Conn(Conn),
    Epoll(EpollSet<ConnRef>),
}

struct Node {
    /// References: one for the table slot, one per live Guard. 0: free.
    refs: AtomicUsize,
    entry: UnsafeCell<Option<Entry>>,
    /// The last `for_each_conn` pass that saw this node (dup()ed
    /// descriptors share it).
    visited: AtomicUsize,
}

// SAFETY: `entry` is written only while refs == 0 (exclusive: the node is
// in no slot and every lookup's increment-unless-zero fails), and read only
// through a Guard (refs > 0).
unsafe impl Sync for Node {}

const L2_BITS: usize = 10;
const L2: usize = 1 << L2_BITS;
const L1: usize = 1024;
/// Descriptors at or above this are never accelerated.
pub const MAX_FD: usize = L1 * L2;

type Chunk = [AtomicPtr<Node>; L2];

static TABLE: [AtomicPtr<Chunk>; L1] = [const { AtomicPtr::new(ptr::null_mut()) }; L1];
/// One past the highest TABLE index that may hold a chunk: scans stop
/// there, so a process that never had an entry (a shell, a compiler)
/// reads nothing of the table at fork, exec or exit.
static END: AtomicUsize = AtomicUsize::new(0);
static FREE: Mutex<Vec<&'static Node>> = Mutex::new(Vec::new());

/// Runs `f` on the free list, inside a signal section: a handler that
/// closes a descriptor would otherwise wait for the lock its own thread
/// holds.
fn with_free<T>(f: impl FnOnce(&mut Vec<&'static Node>) -> T) -> T {
    let _section = Critical::enter();
    let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut free)
}

fn slot(fd: i32, create: bool) -> Option<&'static AtomicPtr<Node>> {
    let fd = usize::try_from(fd).ok().filter(|&f| f < MAX_FD)?;
    let top = &TABLE[fd >> L2_BITS];
    let mut chunk = top.load(Acquire);
    if chunk.is_null() {
        if !create {
            return None;
        }
        END.fetch_max((fd >> L2_BITS) + 1, AcqRel);
        let fresh: Box<Chunk> = Box::new([const { AtomicPtr::new(ptr::null_mut()) }; L2]);
        let fresh = Box::into_raw(fresh);
        chunk = match top.compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire) {
            Ok(_) => fresh,
            Err(existing) => {
                // SAFETY: fresh was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                existing
            }
        };
    }
    // SAFETY: chunks are never freed.
    Some(unsafe { &(*chunk)[fd & (L2 - 1)] })
}

/// A counted reference to a table entry.
pub struct Guard(&'static Node);

impl Deref for Guard {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        // SAFETY: refs > 0 while we exist, so the entry is initialised and
        // not being written.
        match unsafe { &*self.0.entry.get() } {
            Some(e) => e,
            None => unreachable_abort(),
        }
    }
}

impl Clone for Guard {
    fn clone(&self) -> Self {
        self.0.refs.fetch_add(1, Relaxed);
        Guard(self.0)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.refs.fetch_sub(1, AcqRel) == 1 {
            // SAFETY: we dropped the last reference: nobody else can reach
            // the entry (no slot holds it, lookups fail on zero).
            let old = unsafe { (*self.0.entry.get()).take() };
            drop(old);
            with_free(|f| f.push(self.0));
        }
    }
}

fn unreachable_abort() -> ! {
    std::process::abort()
}

/// Whether `fd` has an entry now, without taking a reference: a hint
/// for the fast path of calls on other fds ([`get`] decides).
#[inline(always)]
pub fn present(fd: i32) -> bool {
    slot(fd, false).is_some_and(|s| !s.load(Relaxed).is_null())
}

/// Looks `fd` up (lock-free, allocation-free).
#[inline]
pub fn get(fd: i32) -> Option<Guard> {
    acquire(slot(fd, false)?, drop)
}

/// A counted reference to the entry in `s`: the count is taken only if
/// not zero (a node being freed stays free), and kept only if `s` still
/// holds the node after (it may have been recycled for another fd); a
/// reference taken in vain goes to `release`.
#[inline]
fn acquire(s: &AtomicPtr<Node>, release: fn(Guard)) -> Option<Guard> {
    let p = s.load(Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: nodes are never freed.
    let node: &'static Node = unsafe { &*p };
    let mut r = node.refs.load(Relaxed);
    loop {
        if r == 0 {
            return None;
        }
        match node.refs.compare_exchange_weak(r, r + 1, Acquire, Relaxed) {
            Ok(_) => break,
            Err(now) => r = now,
        }
    }
    let g = Guard(node);
    if s.load(Acquire) == p {
        Some(g)
    } else {
        release(g);
        None
    }
}

/// Drops `g` unless it is the last reference, which is leaked instead:
/// freeing takes the FREE mutex and runs the entry's destructor, and
/// `for_each_conn` may run in a signal handler.
fn release_unless_last(g: Guard) {
    let refs = &g.0.refs;
    let mut r = refs.load(Relaxed);
    while r > 1 {
        match refs.compare_exchange_weak(r, r - 1, Release, Relaxed) {
            Ok(_) => break,
            Err(now) => r = now,
        }
    }
    std::mem::forget(g);
}

/// Installs `entry` for `fd`, replacing (and releasing) any stale one.
pub fn insert(fd: i32, entry: Entry) -> Option<Guard> {
    let s = slot(fd, true)?;
    let recycled = with_free(Vec::pop);
    let node: &'static Node = recycled.unwrap_or_else(|| {
        Box::leak(Box::new(Node {
            refs: AtomicUsize::new(0),
            entry: UnsafeCell::new(None),
            visited: AtomicUsize::new(0),
        }))
    });
    // SAFETY: refs == 0 and the node is in no slot: exclusive access.
    unsafe { *node.entry.get() = Some(entry) };
    // One for the slot, one for the returned guard.
    node.refs.store(2, Release);
    let old = s.swap(node as *const Node as *mut Node, AcqRel);
    if !old.is_null() {
        // SAFETY: nodes are never freed; this releases the slot's reference.
        drop(Guard(unsafe { &*old }));
    }
    Some(Guard(node))
}

/// Makes `fd` name the same entry as `g` (dup). A stale entry at `fd` is
/// released; the caller has already dealt with a live one.
pub fn alias(fd: i32, g: &Guard) {
    let Some(s) = slot(fd, true) else { return };
    g.0.refs.fetch_add(1, Relaxed);
    let old = s.swap(g.0 as *const Node as *mut Node, AcqRel);
    if !old.is_null() {
        // SAFETY: nodes are never freed; this releases the slot's reference.
        drop(Guard(unsafe { &*old }));
    }
}

/// Descriptors in `first..=last` that have an entry.
pub fn fds_in(first: u32, last: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Some(past) = (END.load(Acquire) << L2_BITS).checked_sub(1) else {
        return out;
    };
    let end = (last as usize).min(past);
    let mut fd = first as usize;
    while fd <= end {
        let chunk = TABLE[fd >> L2_BITS].load(Acquire);
        if chunk.is_null() {
            fd = (fd | (L2 - 1)) + 1;
            continue;
        }
        // SAFETY: chunks are never freed.
        if !unsafe { &*chunk }[fd & (L2 - 1)].load(Acquire).is_null() {
            out.push(fd as i32);
        }
        fd += 1;
    }
    out
}

/// Whether no descriptor ever had an entry: nothing to tell at fork or
/// exit.
pub fn never_used() -> bool {
    END.load(Acquire) == 0
}

/// Removes `fd`'s entry; the returned guard holds what the slot held.
pub fn remove(fd: i32) -> Option<Guard> {
    let s = slot(fd, false)?;
    let old = s.swap(ptr::null_mut(), AcqRel);
    // SAFETY: nodes are never freed; we take over the slot's reference.
    (!old.is_null()).then(|| Guard(unsafe { &*old }))
}

/// Removes `fd`'s entry only if it is still `conn`.
pub fn remove_conn(fd: i32, conn: &Conn) {
    let Some(s) = slot(fd, false) else { return };
    let Some(g) = get(fd) else { return };
    if matches!(&*g, Entry::Conn(c) if ptr::eq(c, conn)) {
        let p = g.0 as *const Node as *mut Node;
        if s.compare_exchange(p, ptr::null_mut(), AcqRel, Acquire)
            .is_ok()
        {
            drop(Guard(g.0));
        }
    }
}

/// Calls `f` once on every connection, with one of its descriptors.
/// Allocation-free: `_exit` runs it, and may be called in a signal handler.
/// Each entry is held while `f` runs: another thread may close its fd.
pub fn for_each_conn(mut f: impl FnMut(i32, &Conn)) {
    static PASS: AtomicUsize = AtomicUsize::new(0);
    let end = END.load(Acquire);
    if end == 0 {
        return;
    }
    let pass = PASS.fetch_add(1, Relaxed) + 1;
    for (i, top) in TABLE[..end].iter().enumerate() {
        let chunk = top.load(Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: chunks are never freed.
        for (j, s) in unsafe { &*chunk }.iter().enumerate() {
            let Some(g) = acquire(s, release_unless_last) else {
                continue;
            };
            if let Entry::Conn(c) = &*g
                && g.0.visited.swap(pass, Relaxed) != pass
            {
                f(((i << L2_BITS) | j) as i32, c);
            }
            release_unless_last(g);
        }
    }
}

/// A guard known to hold a connection: what epoll watches keep.
#[derive(Clone)]
pub struct ConnRef(Guard);

impl ConnRef {
    pub fn new(g: Guard) -> Option<ConnRef> {
        matches!(&*g, Entry::Conn(_)).then_some(ConnRef(g))
    }

    /// Whether `fd` still names this entry: one load, no count taken. Our
    /// own count keeps the node from being recycled meanwhile, so a slot
    /// that holds it holds this very entry.
    pub fn named_by(&self, fd: i32) -> bool {
        slot(fd, false).is_some_and(|s| ptr::eq(s.load(Acquire), self.0.0))
    }
}

impl Deref for ConnRef {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match &*self.0 {
            Entry::Conn(c) => c,
            Entry::Epoll(_) => unreachable_abort(),
        }
    }
}
