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

/// Every way of setting and reading back a disposition (sigaction,
/// signal, bsd_signal, sysv_signal, sigset, siginterrupt), for every pair
/// of old and new handlers and flags: the transcript is the kernel's and
/// glibc's, preloaded or not, and with TSSS_DISABLE. sigaction once
/// reported the new handler as the old one, also with TSSS_DISABLE.
#[test]
fn signal_api_matches_plain() {
    let run = |name: &str, preload: bool, disable: bool| {
        let mut spec = Spec::app(name, "sigapi", &[]).preload(preload);
        if disable {
            spec = spec.env("TSSS_DISABLE", "1");
        }
        let p = run_one(&spec, Duration::from_secs(20));
        assert!(result_ok(&p), "{}", p.report());
        p.stdout()
    };
    let plain = run("plain", false, false);
    for (name, disable) in [("preloaded", false), ("disabled", true)] {
        let got = run(name, true, disable);
        assert!(
            got == plain,
            "the signal API differs from plain ({name}):\n{}",
            line_diff(&plain, &got, "plain", name)
        );
    }
}

/// An interactive bash under the preload survives terminal resizes:
/// readline's SIGWINCH handler chains to the handler it saved as the old
/// one, which tsss once reported as readline's own (it recursed until the
/// stack overflowed, so every shell in a preloaded tmux died on attach).
#[test]
fn interactive_bash_survives_sigwinch() {
    if !have_cmd("bash") {
        eprintln!("skipped: no bash");
        return;
    }
    let script = r#"
import os, pty, sys, time, fcntl, termios, struct, select
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
env.update(PS1="READY> ", TERM="dumb", HOME=sys.argv[2], INPUTRC="/dev/null")
if sys.argv[1]:
    env["LD_PRELOAD"] = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
out = b""
def until(pat, secs=10):
    global out
    end = time.time() + secs
    while pat not in out:
        left = end - time.time()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        try:
            out += os.read(fd, 4096)
        except OSError:
            return False
    return True
ok = until(b"READY> ")
for rows, cols in [(30, 100), (40, 120), (25, 80)]:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    time.sleep(0.1)
os.write(fd, b"echo alive-$((6*7))\n")
ok = ok and until(b"alive-42")
os.write(fd, b"exit 7\n")
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print("RESULT ok=%d exit=%d" % (int(ok and code == 7), code))
print(repr(out[-300:]), file=sys.stderr)
"#;
    let d = TempDir::new("bashwinch");
    let home = d.0.to_string_lossy().into_owned();
    let lib = lib().to_string_lossy().into_owned();
    for (name, l) in [("plain", ""), ("preloaded", lib.as_str())] {
        let p = run_one(
            &Spec::new(name, "python3", &["-c", script, l, &home]),
            Duration::from_secs(30),
        );
        assert!(
            result_ok(&p),
            "bash did not survive SIGWINCH ({name}): {}",
            p.report()
        );
    }
}
