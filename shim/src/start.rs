//! Start-up: the constructor that runs when the library is loaded.
#![allow(unsafe_code)]

use crate::hooks::{exec, process};
use crate::real;
use std::ffi::CStr;
use tsss_core::config::Config;

/// A variable's value as the environment holds it, without allocating.
pub(crate) fn env(name: &str) -> Option<&'static CStr> {
    let mut buf = [0u8; 64];
    let n = name.len().min(buf.len() - 1);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: a NUL-terminated name; the constructor runs before main, on
    // the only thread, so nothing changes the environment meanwhile.
    let v = unsafe { libc::getenv(buf.as_ptr().cast()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: getenv returned a C string of the environment, which stays
    // as it is while the constructor runs (callers copy what they keep).
    Some(unsafe { CStr::from_ptr(v) })
}

/// A variable's value, allocating only when it is set: most processes set
/// no TSSS_* variable, and a small one may never call malloc otherwise.
fn getenv(name: &str) -> Option<String> {
    env(name).map(|c| c.to_string_lossy().into_owned())
}

/// Runs at load time, before main: reads TSSS_* and resolves the real
/// functions so no hook has to call dlsym (which may allocate) later.
#[ctor::ctor(unsafe)]
fn init() {
    let cfg = Config::from_lookup(getenv);
    cfg.install();
    for w in &cfg.warnings {
        tsss_core::log::emit(format_args!("{w}"));
    }
    real::init();
    tsss_core::log!(
        tsss_core::log::DEBUG,
        "loaded ({}; ring {} KiB)",
        if cfg.disabled { "disabled" } else { "enabled" },
        cfg.ring_size >> 10
    );
    if cfg.disabled {
        // Inert: nothing registered, every hook passes straight to libc.
        return;
    }
    tsss_core::os::proc::set_cached_pid();
    // Where the registry goes, copied without allocating (most sessions
    // set XDG_RUNTIME_DIR); before the adoption, which registers again.
    tsss_core::registry::configure(cfg.registry, env("XDG_RUNTIME_DIR").map(CStr::to_bytes));
    exec::adopt_inherited();
    // SAFETY: registering plain function pointers: run in the parent just
    // before fork, and in the child just after.
    unsafe {
        libc::pthread_atfork(
            Some(process::before_fork),
            Some(process::after_fork_parent),
            Some(process::in_fork_child),
        )
    };
    // SAFETY: as above; runs in exit(), before the stdio flush.
    unsafe { libc::atexit(process::exiting) };
}
