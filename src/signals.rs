//! Signal handlers never run while their thread holds a connection lock.
//!
//! A handler may write to an accelerated socket. Had it interrupted code
//! that holds that socket's lock, it would wait for itself forever; had it
//! interrupted a half-done ring update on another socket, a second update
//! could interleave with it. So the shim installs [`trampoline`] in place of
//! every handler the program sets (its sigaction/signal overrides call
//! [`install`]), and while the thread is inside a [`Critical`] section the
//! trampoline only queues the signal. Leaving the section re-raises it to
//! the same thread with its original siginfo (rt_tgsigqueueinfo), so the
//! program's handler runs a few instructions later, with the mask and flags
//! it asked for. OpenOnload defers handlers the same way while it holds its
//! stack lock. Sections are short: no lock is held across a blocking wait.
//!
//! The trampoline also notes whether a handler that ran lacked SA_RESTART,
//! so that a writer interrupted while it sleeps on a full ring answers
//! EINTR or restarts exactly as the kernel would for that very signal.
//!
//! Faults raised by the code itself (SIGSEGV, SIGBUS, ... with a positive
//! si_code) are never deferred. Handlers set with a raw rt_sigaction
//! syscall bypass all this; see [`handler_ran`].
#![allow(unsafe_code)]

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{
    AtomicI32, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst, compiler_fence,
};

const NSIG: usize = 65;
/// Deferred signals one thread can hold; a standard signal already queued
/// is coalesced, as the kernel coalesces it.
const QUEUE: usize = 16;

/// The program's own handler for one signal (0: none of ours installed).
struct UserAction {
    handler: AtomicUsize,
    flags: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const NONE: UserAction = UserAction {
    handler: AtomicUsize::new(0),
    flags: AtomicI32::new(0),
};
static ACTIONS: [UserAction; NSIG] = [NONE; NSIG];

// SAFETY: all-zero is a valid siginfo_t (plain integers).
const EMPTY: [libc::siginfo_t; QUEUE] = unsafe { std::mem::zeroed() };

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Slots of QUEUED in use. An atomic: a signal arriving between a
    /// load and a store would get the same slot.
    static PENDING: AtomicUsize = const { AtomicUsize::new(0) };
    /// Zeroed, not uninit: a nested `defer` may read a slot reserved but
    /// not yet written (signal number 0 there, see `take`).
    static QUEUED: UnsafeCell<[libc::siginfo_t; QUEUE]> = const { UnsafeCell::new(EMPTY) };
    /// Handlers run on this thread, and how many of them lacked
    /// SA_RESTART: counters, not flags, so that a handler that itself
    /// waits in tsss (a nested wait) cannot erase what the outer wait saw.
    static RAN: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// The program's own action for one signal, as recorded when it was set
/// (`None`: none of ours is installed), to map what the kernel reports
/// back into the program's terms with [`user_view`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded(Option<(usize, i32)>);

/// What is recorded for `sig` now. Taken before [`install`] records a new
/// action, it describes the action the kernel will report as the old one.
pub fn recorded(sig: i32) -> Recorded {
    let Some(a) = usize::try_from(sig).ok().and_then(|s| ACTIONS.get(s)) else {
        return Recorded(None);
    };
    match a.handler.load(Relaxed) {
        0 => Recorded(None),
        h => Recorded(Some((h, a.flags.load(Relaxed)))),
    }
}

/// Puts back what [`recorded`] returned (the kernel refused the new action).
pub fn restore(sig: i32, r: Recorded) {
    let Some(a) = usize::try_from(sig).ok().and_then(|s| ACTIONS.get(s)) else {
        return;
    };
    let (h, f) = r.0.unwrap_or((0, 0));
    a.flags.store(f, Relaxed);
    a.handler.store(h, Relaxed);
}

/// What the kernel should be told for a program's `handler`/`flags`: our
/// trampoline with SA_SIGINFO added (the program's flags are kept for
/// calling its handler the way it expects), or `None` for SIG_DFL/SIG_IGN,
/// which pass through. Records the program's action either way.
pub fn install(sig: i32, handler: usize, flags: i32) -> Option<(usize, i32)> {
    let a = ACTIONS.get(usize::try_from(sig).ok()?)?;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        a.handler.store(0, Relaxed);
        return None;
    }
    let ours = trampoline as *const () as usize;
    if handler == ours {
        // `defer` setting a one-shot handler again: in the shim, libc's
        // sigaction is our override. Recording the trampoline as the
        // program's handler would make it call itself.
        return Some((ours, flags | libc::SA_SIGINFO));
    }
    a.flags.store(flags, Relaxed);
    a.handler.store(handler, Relaxed);
    Some((ours, flags | libc::SA_SIGINFO))
}

/// The program's view of an action the kernel reports, given what was
/// recorded for it *when the kernel's action was set*: our trampoline is
/// replaced by the program's handler, and the SA_SIGINFO bit we added is
/// the program's own again (also after SA_RESETHAND made the kernel reset
/// the handler to SIG_DFL, keeping our flags).
pub fn user_view(rec: Recorded, handler: usize, flags: i32) -> (usize, i32) {
    let Some((uh, uf)) = rec.0 else {
        return (handler, flags);
    };
    let ours = (flags & !libc::SA_SIGINFO) | (uf & libc::SA_SIGINFO);
    if handler == trampoline as *const () as usize {
        (uh, ours)
    } else if handler == libc::SIG_DFL && uf & libc::SA_RESETHAND != 0 {
        (handler, ours)
    } else {
        // Set behind our back (a raw rt_sigaction): theirs as it is.
        (handler, flags)
    }
}

/// Marks this thread as inside tsss while alive; the last one to drop
/// delivers the signals that arrived meanwhile.
pub struct Critical(());

impl Critical {
    #[inline]
    pub fn enter() -> Critical {
        DEPTH.with(|d| d.set(d.get() + 1));
        Critical(())
    }
}

impl Drop for Critical {
    #[inline]
    fn drop(&mut self) {
        let left = DEPTH.with(|d| {
            let v = d.get() - 1;
            d.set(v);
            v
        });
        if left == 0 && PENDING.with(|p| p.load(Relaxed)) != 0 {
            flush();
        }
    }
}

/// Re-raises the deferred signals in the order they arrived, as the
/// kernel delivers queued realtime signals.
#[cold]
fn flush() {
    let (pid, tid) = (
        rustix::process::getpid().as_raw_nonzero().get(),
        rustix::thread::gettid().as_raw_nonzero().get(),
    );
    loop {
        let mut taken = EMPTY;
        let n = take(&mut taken);
        if n == 0 {
            return;
        }
        for info in &taken[..n] {
            // SAFETY: re-queues a signal to ourselves with the siginfo the
            // kernel gave us (allowed for one's own thread group).
            unsafe {
                libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    pid,
                    tid,
                    info.si_signo,
                    info as *const libc::siginfo_t,
                )
            };
        }
    }
}

/// Moves the queue into `out` and empties it; returns the count. Taken
/// before any is raised: a handler run by the first may enter and leave a
/// section, whose own flush must not see the others. Signals arriving
/// meanwhile are deferred (DEPTH 1) and taken too.
fn take(out: &mut [libc::siginfo_t; QUEUE]) -> usize {
    DEPTH.with(|d| d.set(1));
    compiler_fence(SeqCst);
    let queue = QUEUED.with(|q| q.get());
    let mut got = 0;
    PENDING.with(|p| {
        loop {
            let n = p.load(Relaxed);
            while got < n.min(QUEUE) {
                // SAFETY: this thread's own queue; a nested `defer` has
                // written its slot completely before we resume. The number
                // is cleared so that a later `defer` cannot coalesce with
                // an entry already taken.
                unsafe {
                    out[got] = (*queue)[got];
                    (*queue)[got].si_signo = 0;
                }
                got += 1;
            }
            if p.compare_exchange(n, 0, Relaxed, Relaxed).is_ok() {
                break;
            }
        }
    });
    compiler_fence(SeqCst);
    DEPTH.with(|d| d.set(0));
    got
}

/// Where this thread's handler record stands (before a wait).
#[derive(Clone, Copy)]
pub struct Mark((u32, u32));

pub fn mark() -> Mark {
    Mark(RAN.with(Cell::get))
}

/// After a wait returned EINTR: `Some(true)` if every handler that ran
/// since `m` had SA_RESTART (restart the wait), `Some(false)` if one did
/// not, `None` if none of ours ran (a handler installed behind our back:
/// the caller must guess).
pub fn handler_ran(m: Mark) -> Option<bool> {
    let (ran, norestart) = RAN.with(Cell::get);
    (ran != m.0.0).then_some(norestart == m.0.1)
}

fn synchronous(sig: i32, code: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP | libc::SIGSYS
    ) && code > 0
}

/// The handler the kernel calls for every signal the program handles.
///
/// # Safety
/// Called by the kernel with a valid siginfo.
pub unsafe extern "C" fn trampoline(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(a) = usize::try_from(sig).ok().and_then(|s| ACTIONS.get(s)) else {
        return;
    };
    let (handler, flags) = (a.handler.load(Relaxed), a.flags.load(Relaxed));
    // SAFETY: per the contract; read only.
    let code = unsafe { (*info).si_code };
    if DEPTH.with(Cell::get) > 0 && !synchronous(sig, code) {
        defer(sig, info, flags);
        return;
    }
    RAN.with(|r| {
        let (ran, norestart) = r.get();
        let no = u32::from(flags & libc::SA_RESTART == 0);
        r.set((ran.wrapping_add(1), norestart.wrapping_add(no)));
    });
    if handler == 0 {
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program registered this function as an sa_sigaction.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the program registered this function as an sa_handler.
        let f: extern "C" fn(i32) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

fn defer(sig: i32, info: *mut libc::siginfo_t, flags: i32) {
    let queue = QUEUED.with(|q| q.get());
    let n = PENDING.with(|p| p.load(Relaxed)).min(QUEUE);
    // SAFETY: this thread's own queue of plain data; a slot reserved by a
    // `defer` this one interrupted reads as signal 0 or its new entry.
    let dup = (0..n).any(|i| unsafe { (*queue)[i].si_signo } == sig);
    if sig < libc::SIGRTMIN() && dup {
        return;
    }
    // The slot is ours before we write it: a signal arriving meanwhile
    // defers into the next one.
    let slot = PENDING.with(|p| p.fetch_add(1, Relaxed));
    if slot >= QUEUE {
        PENDING.with(|p| p.fetch_sub(1, Relaxed));
        return;
    }
    compiler_fence(SeqCst);
    // SAFETY: as above; `info` is valid per the trampoline's contract.
    unsafe { (*queue)[slot] = *info };
    if flags & libc::SA_RESETHAND != 0 {
        // The kernel already reset the action to SIG_DFL; the re-raised
        // signal must still reach the program's handler once.
        // SAFETY: a zeroed sigaction is valid; filled in before use.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = trampoline as *const () as usize;
        act.sa_flags = flags | libc::SA_SIGINFO;
        // SAFETY: installs our own handler for this signal (libc's
        // sigaction supplies the restorer; in the shim it is our override,
        // and `install` passes the trampoline through).
        unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    static HITS: AtomicU32 = AtomicU32::new(0);
    static DEPTH_SEEN: AtomicU32 = AtomicU32::new(u32::MAX);

    extern "C" fn on_usr1(_: i32) {
        HITS.fetch_add(1, SeqCst);
        DEPTH_SEEN.store(DEPTH.with(Cell::get), SeqCst);
    }

    fn set(sig: i32, h: usize, flags: i32) {
        let (k, kf) = install(sig, h, flags).unwrap();
        // SAFETY: zeroed sigaction then filled.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = k;
        act.sa_flags = kf;
        // SAFETY: installing the trampoline.
        let r = unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
        assert_eq!(r, 0);
    }

    fn raise(sig: i32) {
        // SAFETY: signal to our own thread.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), sig) };
    }

    #[test]
    fn deferred_inside_a_section_delivered_after() {
        set(
            libc::SIGUSR1,
            on_usr1 as *const () as usize,
            libc::SA_RESTART,
        );
        let before = HITS.load(SeqCst);
        {
            let _c = Critical::enter();
            raise(libc::SIGUSR1);
            raise(libc::SIGUSR1);
            assert_eq!(HITS.load(SeqCst), before, "ran inside the section");
        }
        // Standard signals coalesce: one delivery, outside any section.
        assert_eq!(HITS.load(SeqCst), before + 1);
        assert_eq!(DEPTH_SEEN.load(SeqCst), 0);
        let m = mark();
        assert_eq!(handler_ran(m), None);
        raise(libc::SIGUSR1);
        assert_eq!(HITS.load(SeqCst), before + 2);
        assert_eq!(handler_ran(m), Some(true));
        let (h, f) = user_view(
            recorded(libc::SIGUSR1),
            trampoline as *const () as usize,
            libc::SA_SIGINFO,
        );
        assert_eq!(h, on_usr1 as *const () as usize);
        assert_eq!(f & libc::SA_SIGINFO, 0);
    }

    static RT_HITS: AtomicU32 = AtomicU32::new(0);
    /// The values in delivery order, as decimal digits.
    static RT_ORDER: AtomicU32 = AtomicU32::new(0);

    extern "C" fn on_rt(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        RT_HITS.fetch_add(1, SeqCst);
        // SAFETY: sent with sigqueue: si_value is set.
        let v = unsafe { (*info).si_value().sival_ptr } as usize as u32;
        RT_ORDER.store(RT_ORDER.load(SeqCst) * 10 + v, SeqCst);
    }

    #[test]
    fn realtime_signals_queue_with_their_values_in_order() {
        let sig = libc::SIGRTMIN() + 3;
        set(sig, on_rt as *const () as usize, libc::SA_SIGINFO);
        {
            let _c = Critical::enter();
            for v in 1..=3usize {
                let val = libc::sigval {
                    sival_ptr: v as *mut libc::c_void,
                };
                // SAFETY: queue a signal to ourselves (one thread group;
                // the other test threads may get it, so block elsewhere is
                // not needed: only this thread is in a section).
                unsafe { libc::pthread_sigqueue(libc::pthread_self(), sig, val) };
            }
            assert_eq!(RT_HITS.load(SeqCst), 0);
        }
        assert_eq!(RT_HITS.load(SeqCst), 3);
        assert_eq!(RT_ORDER.load(SeqCst), 123, "delivered in the order sent");
        let m = mark();
        let val = libc::sigval {
            sival_ptr: std::ptr::null_mut(),
        };
        // SAFETY: as above.
        unsafe { libc::pthread_sigqueue(libc::pthread_self(), sig, val) };
        assert_eq!(handler_ran(m), Some(false), "no SA_RESTART: EINTR");
    }
}
