//! Handler registration goes through `tsss_core::signals`, which defers a
//! handler while its thread holds a connection lock. The program sees its
//! own handlers and flags in every query; the kernel sees our trampoline.
//!
//! glibc's signal(), sysv_signal(), sigset() and siginterrupt() call its
//! internal sigaction, not the exported one, so each is redone here on top
//! of ours with glibc's own flags and masks.

use crate::real;
use libc::{c_int, sighandler_t};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tsss_core::signals;

/// glibc's SIG_HOLD (not in the libc crate).
const SIG_HOLD: sighandler_t = 2;

/// Signals made interrupting by siginterrupt(sig, 1) (glibc's `_sigintr`).
static INTERRUPTING: AtomicU64 = AtomicU64::new(0);

fn bit(sig: c_int) -> u64 {
    if (1..=64).contains(&sig) {
        1 << (sig - 1)
    } else {
        0
    }
}

fn empty_action() -> libc::sigaction {
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, empty mask).
    unsafe { std::mem::zeroed() }
}

hook! {
    fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
        // What the program set before this call: the kernel's old action is
        // mapped back through it, never through the action installed here.
        let before = signals::recorded(sig);
        let mut k;
        let knew = if act.is_null() {
            std::ptr::null()
        } else {
            // SAFETY: the caller passes a valid action.
            k = unsafe { *act };
            if let Some((h, f)) = signals::install(sig, k.sa_sigaction, k.sa_flags) {
                k.sa_sigaction = h;
                k.sa_flags = f;
            }
            &k as *const libc::sigaction
        };
        let mut prev = empty_action();
        // SAFETY: valid pointers; the old action comes from the same call.
        let r = unsafe { real::sigaction(sig, knew, &mut prev) };
        if r != 0 {
            signals::restore(sig, before);
            return Done(r);
        }
        if !old.is_null() {
            let (h, f) = signals::user_view(before, prev.sa_sigaction, prev.sa_flags);
            prev.sa_sigaction = h;
            prev.sa_flags = f;
            // SAFETY: the caller's buffer.
            unsafe { *old = prev };
        }
        Done(r)
    }
}

hook! {
    fn __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
        // SAFETY: same contract.
        Done(unsafe { sigaction(sig, act, old) })
    }
}

fn set(sig: c_int, handler: sighandler_t, mask_self: bool, flags: c_int) -> sighandler_t {
    let mut act = empty_action();
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    // SAFETY: a valid sigset in our own struct.
    unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        if mask_self {
            libc::sigaddset(&mut act.sa_mask, sig);
        }
    }
    let mut old = empty_action();
    // SAFETY: valid pointers.
    if unsafe { sigaction(sig, &act, &mut old) } < 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

hook! {
    /// BSD semantics, as glibc: the signal blocked in its handler, SA_RESTART
    /// unless siginterrupt() said otherwise.
    ///
    fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
        if handler == libc::SIG_ERR || bit(sig) == 0 {
            // SAFETY: errno slot of this thread.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            return Done(libc::SIG_ERR);
        }
        let restart = if INTERRUPTING.load(Relaxed) & bit(sig) != 0 {
            0
        } else {
            libc::SA_RESTART
        };
        Done(set(sig, handler, true, restart))
    }
}

hook! {
    fn bsd_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
        // SAFETY: same contract.
        Done(unsafe { signal(sig, handler) })
    }
}

hook! {
    /// System V semantics: one-shot, not blocked in its handler, interrupting.
    ///
    fn sysv_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
        if handler == libc::SIG_ERR || bit(sig) == 0 {
            // SAFETY: errno slot of this thread.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            return Done(libc::SIG_ERR);
        }
        Done(set(sig, handler, false, libc::SA_RESETHAND | libc::SA_NODEFER))
    }
}

hook! {
    fn __sysv_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
        // SAFETY: same contract.
        Done(unsafe { sysv_signal(sig, handler) })
    }
}

hook! {
    fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int {
        let mut act = empty_action();
        // SAFETY: query into our own struct.
        if unsafe { sigaction(sig, std::ptr::null(), &mut act) } < 0 {
            return Done(-1);
        }
        if interrupt != 0 {
            INTERRUPTING.fetch_or(bit(sig), Relaxed);
            act.sa_flags &= !libc::SA_RESTART;
        } else {
            INTERRUPTING.fetch_and(!bit(sig), Relaxed);
            act.sa_flags |= libc::SA_RESTART;
        }
        // SAFETY: a valid action.
        Done(unsafe { sigaction(sig, &act, std::ptr::null_mut()) })
    }
}

hook! {
    /// System V sigset(): SIG_HOLD blocks the signal, anything else sets the
    /// handler and unblocks it; returns SIG_HOLD if it was blocked.
    ///
    fn sigset(sig: c_int, disp: sighandler_t) -> sighandler_t {
        if disp == libc::SIG_ERR || bit(sig) == 0 {
            // SAFETY: errno slot of this thread.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            return Done(libc::SIG_ERR);
        }
        // SAFETY: sigset_t manipulation on our own values.
        let (mut one, mut was) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: as above.
        unsafe {
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
        }
        if disp == SIG_HOLD {
            let mut old = empty_action();
            // SAFETY: valid pointers.
            if unsafe { sigaction(sig, std::ptr::null(), &mut old) } < 0 {
                return Done(libc::SIG_ERR);
            }
            // SAFETY: valid sets.
            if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &one, &mut was) } != 0 {
                return Done(libc::SIG_ERR);
            }
            // SAFETY: a valid set.
            return Done(if unsafe { libc::sigismember(&was, sig) } == 1 {
                SIG_HOLD
            } else {
                old.sa_sigaction
            });
        }
        let old = set(sig, disp, false, 0);
        if old == libc::SIG_ERR {
            return Done(old);
        }
        // SAFETY: valid sets.
        if unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, &mut was) } != 0 {
            return Done(libc::SIG_ERR);
        }
        // SAFETY: a valid set.
        Done(if unsafe { libc::sigismember(&was, sig) } == 1 {
            SIG_HOLD
        } else {
            old
        })
    }
}
