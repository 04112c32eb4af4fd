//! Signal handlers that write to accelerated sockets while the code they
//! interrupted is inside tsss on the same or another socket: no deadlock,
//! no torn or interleaved record, and EINTR only where the kernel gives it.
//! Before handlers were deferred, the `restart` case hung on its first
//! signal inside a write (the handler waited for its own thread's lock).

use std::time::Duration;

mod common;
use common::*;

fn sigwrite(mode: &str) {
    let d = TempDir::new(&format!("sigwrite-{mode}"));
    let sock = d.sock("s");
    let server = Spec::app("server", "sigwrite", &["server", &sock]).preload(true);
    let client = Spec::app("client", "sigwrite", &["client", &sock, "1.5", mode]).preload(true);
    let (s, c) = run_pair(&server, &sock, &client, Duration::from_secs(30));
    assert_ok(&[&s, &c]);
    assert_eq!(
        count(&c.stderr(), "accelerated"),
        2,
        "both connections must be accelerated\n{}",
        reports(&[&s, &c])
    );
    // Every record the client counted arrived.
    let nums = |p: &Proc| -> (String, String) {
        let line = p
            .stdout()
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or_default()
            .to_string();
        let field = |k: &str| kv(&line, k).unwrap_or_default().to_string();
        (field("m"), field("s"))
    };
    let (cm, cs) = nums(&c);
    assert_eq!(nums(&s), (cm.clone(), cs.clone()), "{}", reports(&[&s, &c]));
    assert!(
        cs.parse::<u64>().unwrap_or(0) > 1000,
        "too few signals were handled to prove anything\n{}",
        reports(&[&s, &c])
    );
    assert_segments_gone(&[&s, &c]);
}

#[test]
fn handler_writes_during_write_with_sa_restart() {
    sigwrite("restart");
}

#[test]
fn handler_writes_during_write_without_sa_restart() {
    sigwrite("intr");
}

#[test]
fn handler_installed_with_signal() {
    sigwrite("signal");
}

/// A one-shot handler deferred inside a write is set again for its one
/// delivery; that once recorded our own trampoline as the program's
/// handler, which then called itself until the stack overflowed.
#[test]
fn one_shot_handler_runs_once() {
    sigwrite("oneshot");
}
