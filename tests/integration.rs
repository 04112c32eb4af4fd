//! End-to-end tests of the LD_PRELOAD shim with real processes.
//!
//! Prerequisites (the tests FAIL, not skip, without them):
//!   cargo build --release        -> target/release/libtsss.so (or env TSSS_LIB)
//!   make -C test-apps            -> test-apps/bin/*
//!   make deps                    -> socat (socat_transfer)
//!
//! Run: `cargo test --release --test integration`.
//!
//! Every test works in its own temporary directory, starts its processes
//! with an explicit environment (LD_PRELOAD only where intended, TSSS_LOG=debug
//! so that stderr names every shared-memory segment), kills everything and
//! fails after a timeout, and checks that every segment its processes logged
//! is gone from `ipcs -m` once they have exited.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ setup

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shim: $TSSS_LIB or target/release/libtsss.so. Fails if missing.
fn lib() -> PathBuf {
    let p = match std::env::var_os("TSSS_LIB") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => root().join("target/release/libtsss.so"),
    };
    assert!(
        p.is_file(),
        "the shim {} does not exist: run `make` (or `cargo build --release`) first, \
         or point TSSS_LIB at libtsss.so",
        p.display()
    );
    p
}

/// A test application from test-apps/bin. Fails if missing.
fn bin(name: &str) -> PathBuf {
    let p = root().join("test-apps/bin").join(name);
    assert!(
        p.is_file(),
        "test application {} does not exist: run `make` (or `make -C test-apps`) first",
        p.display()
    );
    p
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let d = base.join(format!(
            "tsss-it-{}-{}-{}",
            std::process::id(),
            test,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A socket path (well below the 108-byte sun_path limit).
    fn sock(&self, name: &str) -> String {
        let p = self.path(name).to_string_lossy().into_owned();
        assert!(p.len() < 100, "socket path too long: {p}");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------------ processes

/// What to run.
#[derive(Clone)]
struct Spec {
    name: String,
    prog: OsString,
    args: Vec<OsString>,
    preload: bool,
    env: Vec<(String, String)>,
}

impl Spec {
    fn new(name: &str, prog: impl Into<OsString>, args: &[&str]) -> Spec {
        Spec {
            name: name.to_string(),
            prog: prog.into(),
            args: args.iter().map(OsString::from).collect(),
            preload: false,
            env: Vec::new(),
        }
    }

    fn app(name: &str, app: &str, args: &[&str]) -> Spec {
        Spec::new(name, bin(app), args)
    }

    fn preload(mut self, on: bool) -> Spec {
        self.preload = on;
        self
    }

    fn env(mut self, k: &str, v: &str) -> Spec {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if self.preload {
            s.push_str("LD_PRELOAD=libtsss.so ");
        }
        s.push_str(&self.prog.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

type Buf = Arc<Mutex<Vec<u8>>>;

fn collect(mut r: impl Read + Send + 'static, buf: Buf) {
    thread::spawn(move || {
        let mut b = [0u8; 16384];
        loop {
            match r.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&b[..n]),
            }
        }
    });
}

/// A running process (in its own process group), its output collected by
/// background threads. Killed with its whole group on drop.
struct Proc {
    spec: Spec,
    child: Child,
    out: Buf,
    err: Buf,
    status: Option<ExitStatus>,
    started: Instant,
    ended: Option<Instant>,
}

impl Proc {
    fn spawn(spec: &Spec) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&spec.prog);
        cmd.args(&spec.args);
        // An explicit environment: no inherited tsss settings.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k == "LD_PRELOAD" || k.starts_with("TSSS_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("TSSS_LOG", "debug");
        if spec.preload {
            cmd.env("LD_PRELOAD", lib());
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", spec.describe()));
        let out: Buf = Default::default();
        let err: Buf = Default::default();
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), err.clone());
        Proc {
            spec: spec.clone(),
            child,
            out,
            err,
            status: None,
            started: Instant::now(),
            ended: None,
        }
    }

    fn poll(&mut self) -> bool {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
            self.ended = Some(Instant::now());
        }
        self.status.is_some()
    }

    /// Waits until `deadline`; true if the process exited.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        while !self.poll() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        // Let the collector threads drain the pipes.
        let t = Instant::now();
        let mut last = (usize::MAX, usize::MAX);
        while t.elapsed() < Duration::from_millis(500) {
            let cur = (
                self.out.lock().unwrap().len(),
                self.err.lock().unwrap().len(),
            );
            if cur == last {
                break;
            }
            last = cur;
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// SIGKILL to the process group.
    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait().map(|s| {
                self.status = Some(s);
                self.ended = Some(Instant::now());
            });
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn runtime(&self) -> Duration {
        self.ended.unwrap_or_else(Instant::now) - self.started
    }

    fn report(&self) -> String {
        format!(
            "--- {} [{}] status {:?} after {:.2?}\n--- stdout:\n{}--- stderr:\n{}",
            self.spec.name,
            self.spec.describe(),
            self.status,
            self.runtime(),
            tail(&self.stdout(), 60),
            tail(&self.stderr(), 60),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut r = String::new();
    if skip > 0 {
        r.push_str(&format!("[... {skip} lines ...]\n"));
    }
    for l in &lines[skip..] {
        r.push_str(l);
        r.push('\n');
    }
    r
}

fn reports(ps: &[&Proc]) -> String {
    ps.iter().map(|p| p.report()).collect::<Vec<_>>().join("\n")
}

/// Waits for all of `ps` until `timeout`; on timeout kills them all and
/// panics with their output.
fn wait_all(ps: &mut [&mut Proc], timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    let mut late = Vec::new();
    for p in ps.iter_mut() {
        if !p.wait_until(deadline) {
            late.push(p.spec.name.clone());
        }
    }
    if !late.is_empty() {
        for p in ps.iter_mut() {
            p.kill();
        }
        let r: Vec<&Proc> = ps.iter().map(|p| &**p).collect();
        panic!(
            "{what}: {late:?} did not exit within {timeout:?}\n{}",
            reports(&r)
        );
    }
}

fn wait_for_path(p: &Path, server: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        if server.poll() {
            panic!(
                "server exited before creating {}\n{}",
                p.display(),
                server.report()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within 10 s\n{}",
            p.display(),
            server.report()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a server, waits for its socket, runs the client, waits for both.
fn run_pair(server: &Spec, sock: &str, client: &Spec, timeout: Duration) -> (Proc, Proc) {
    let mut s = Proc::spawn(server);
    wait_for_path(Path::new(sock), &mut s);
    let mut c = Proc::spawn(client);
    wait_all(&mut [&mut c, &mut s], timeout, "run_pair");
    (s, c)
}

// ------------------------------------------------------------------ checks

fn result_ok(p: &Proc) -> bool {
    p.success()
        && p.stdout()
            .lines()
            .any(|l| l.starts_with("RESULT ") && l.split_whitespace().any(|w| w == "ok=1"))
}

fn assert_ok(ps: &[&Proc]) {
    for p in ps {
        assert!(
            result_ok(p),
            "{} did not succeed (exit 0 with RESULT ... ok=1)\n{}",
            p.spec.name,
            reports(ps)
        );
    }
}

fn count(hay: &str, needle: &str) -> usize {
    hay.lines().filter(|l| l.contains(needle)).count()
}

fn assert_logs(p: &Proc, needle: &str, all: &[&Proc]) {
    assert!(
        p.stderr().contains(needle),
        "{}: stderr does not contain {needle:?}\n{}",
        p.spec.name,
        reports(all)
    );
}

fn assert_not_logs(p: &Proc, needle: &str, all: &[&Proc]) {
    assert!(
        !p.stderr().contains(needle),
        "{}: stderr unexpectedly contains {needle:?}\n{}",
        p.spec.name,
        reports(all)
    );
}

/// Every `shmid N` in `text`.
fn shmids_in(text: &str) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("shmid ") {
        rest = &rest[i + 6..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(v) = digits.parse() {
            ids.insert(v);
        }
    }
    ids
}

fn shmids_of(ps: &[&Proc]) -> BTreeSet<i64> {
    ps.iter().flat_map(|p| shmids_in(&p.stderr())).collect()
}

/// The shmid column of `ipcs -m`.
fn live_shmids() -> BTreeSet<i64> {
    let out = Command::new("ipcs")
        .arg("-m")
        .output()
        .expect("cannot run `ipcs -m` (util-linux)");
    assert!(out.status.success(), "ipcs -m failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let key = w.next()?;
            if !key.starts_with("0x") {
                return None;
            }
            w.next()?.parse().ok()
        })
        .collect()
}

/// Asserts that none of the segments logged by `ps` (all exited) is left.
fn assert_segments_gone(ps: &[&Proc]) -> BTreeSet<i64> {
    for p in ps {
        assert!(p.status.is_some(), "{} is still running", p.spec.name);
    }
    let ids = shmids_of(ps);
    if ids.is_empty() {
        return ids;
    }
    // Exit has detached everything by the time wait() returns; allow a
    // short grace period anyway.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let live = live_shmids();
        let left: Vec<i64> = ids.intersection(&live).copied().collect();
        if left.is_empty() {
            return ids;
        }
        if Instant::now() >= deadline {
            let ipcs = Command::new("ipcs")
                .arg("-m")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "shared memory segments {left:?} (of {} logged) still exist after all processes exited\n\
                 ipcs -m:\n{ipcs}\n{}",
                ids.len(),
                reports(ps)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        v.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A unified-diff-like listing of the lines that differ (LCS based).
fn line_diff(a: &str, b: &str, la: &str, lb: &str) -> String {
    let x: Vec<&str> = a.lines().collect();
    let y: Vec<&str> = b.lines().collect();
    let (n, m) = (x.len(), y.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if x[i] == y[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, line number in a, text)
    let mut ops: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && x[i] == y[j] {
            ops.push((' ', i, x[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, x[i]));
            i += 1;
        } else {
            ops.push(('+', i, y[j]));
            j += 1;
        }
    }
    const CTX: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = format!("--- {la}\n+++ {lb}\n");
    let mut last_printed: Option<usize> = None;
    for &k in &changed {
        let from = k.saturating_sub(CTX);
        let from = match last_printed {
            Some(l) if l + 1 >= from => l + 1,
            _ => {
                out.push_str(&format!("@@ near line {} @@\n", ops[from].1 + 1));
                from
            }
        };
        let to = (k + CTX).min(ops.len() - 1);
        for (q, op) in ops.iter().enumerate().take(to + 1).skip(from) {
            if last_printed.is_some_and(|l| q <= l) {
                continue;
            }
            out.push_str(&format!("{}{}\n", op.0, op.2));
            last_printed = Some(q);
        }
    }
    out
}

const T60: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ tests

#[test]
fn both_sides_accelerated() {
    let d = TempDir::new("both");
    let sock = d.sock("s");
    let (s, c) = run_pair(
        &Spec::app("stream server", "stream", &["server", &sock]).preload(true),
        &sock,
        &Spec::app("stream client", "stream", &["client", &sock, "4096", "64m"]).preload(true),
        T60,
    );
    assert_ok(&[&s, &c]);
    assert_logs(&s, "accelerated", &[&s, &c]);
    assert_logs(&c, "accelerated", &[&s, &c]);
    assert!(!assert_segments_gone(&[&s, &c]).is_empty());

    let sock = d.sock("p");
    let (s, c) = run_pair(
        &Spec::app("pingpong server", "pingpong", &["server", &sock]).preload(true),
        &sock,
        &Spec::app(
            "pingpong client",
            "pingpong",
            &["client", &sock, "64", "2000"],
        )
        .preload(true),
        T60,
    );
    assert_ok(&[&s, &c]);
    assert_logs(&s, "accelerated", &[&s, &c]);
    assert_logs(&c, "accelerated", &[&s, &c]);
    assert!(!assert_segments_gone(&[&s, &c]).is_empty());
}

/// One side preloaded: must work plain, without delay.
fn one_side(server_preload: bool) {
    let d = TempDir::new(if server_preload { "srvonly" } else { "cltonly" });
    let cases: [(&str, Vec<&str>); 2] = [
        ("stream", vec!["4096", "64m"]),
        ("pingpong", vec!["64", "2000"]),
    ];
    for (app, cargs) in cases {
        let sock = d.sock(app);
        let mut ca = vec!["client", sock.as_str()];
        ca.extend(cargs);
        let t0 = Instant::now();
        let (s, c) = run_pair(
            &Spec::app(&format!("{app} server"), app, &["server", &sock]).preload(server_preload),
            &sock,
            &Spec::app(&format!("{app} client"), app, &ca).preload(!server_preload),
            T60,
        );
        let took = t0.elapsed();
        let all = [&s, &c];
        assert_ok(&all);
        let pre = if server_preload { &s } else { &c };
        assert_logs(pre, "plain:", &all);
        assert_not_logs(&s, "accelerated", &all);
        assert_not_logs(&c, "accelerated", &all);
        assert!(
            took < Duration::from_secs(10),
            "{app}: the run took {took:?} (limit 10 s): a hang or delay in the fallback\n{}",
            reports(&all)
        );
        assert_segments_gone(&all);
    }
}

#[test]
fn server_only() {
    one_side(true);
}

#[test]
fn client_only() {
    one_side(false);
}

#[test]
fn statically_linked_peer() {
    let d = TempDir::new("static");
    // Preloaded dynamic server, static client (LD_PRELOAD set but ignored).
    let sock = d.sock("a");
    let (s, c) = run_pair(
        &Spec::app("pingpong server", "pingpong", &["server", &sock]).preload(true),
        &sock,
        &Spec::app(
            "pingpong_static client",
            "pingpong_static",
            &["client", &sock, "64", "2000"],
        )
        .preload(true),
        T60,
    );
    let all = [&s, &c];
    assert_ok(&all);
    assert_logs(&s, "plain:", &all);
    assert_not_logs(&s, "accelerated", &all);
    assert!(
        c.stderr().trim().is_empty(),
        "the static client printed something on stderr\n{}",
        reports(&all)
    );
    assert_segments_gone(&all);

    // Static server, preloaded dynamic client.
    let sock = d.sock("b");
    let (s, c) = run_pair(
        &Spec::app(
            "pingpong_static server",
            "pingpong_static",
            &["server", &sock],
        )
        .preload(true),
        &sock,
        &Spec::app(
            "pingpong client",
            "pingpong",
            &["client", &sock, "64", "2000"],
        )
        .preload(true),
        T60,
    );
    let all = [&s, &c];
    assert_ok(&all);
    assert_logs(&c, "plain:", &all);
    assert_not_logs(&c, "accelerated", &all);
    assert_segments_gone(&all);
}

/// Waits until `p` logged `needle` (or exited / timed out).
fn wait_for_log(p: &mut Proc, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if p.stderr().contains(needle) {
            return true;
        }
        if p.poll() || Instant::now() >= deadline {
            return p.stderr().contains(needle);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kill9_mid_stream() {
    let d = TempDir::new("kill9");
    for kill_server in [true, false] {
        let sock = d.sock(if kill_server { "ks" } else { "kc" });
        let mut s =
            Proc::spawn(&Spec::app("stream server", "stream", &["server", &sock]).preload(true));
        wait_for_path(Path::new(&sock), &mut s);
        let mut c = Proc::spawn(
            &Spec::app(
                "stream client",
                "stream",
                &["client", &sock, "65536", "100g"],
            )
            .preload(true),
        );
        let acc = wait_for_log(&mut s, "accelerated", Duration::from_secs(10))
            && wait_for_log(&mut c, "accelerated", Duration::from_secs(10));
        assert!(
            acc,
            "the connection was not accelerated\n{}",
            reports(&[&s, &c])
        );
        thread::sleep(Duration::from_millis(500));
        assert!(
            !s.poll() && !c.poll(),
            "a side exited before the kill\n{}",
            reports(&[&s, &c])
        );
        let (victim, survivor) = if kill_server {
            (&mut s, &mut c)
        } else {
            (&mut c, &mut s)
        };
        victim.kill();
        let t0 = Instant::now();
        let exited = survivor.wait_until(t0 + Duration::from_secs(5));
        let took = t0.elapsed();
        if !exited {
            survivor.kill();
        }
        let all = [&s, &c];
        assert!(
            exited,
            "after kill -9 of the {}, the {} did not exit within 5 s\n{}",
            if kill_server { "server" } else { "client" },
            if kill_server { "client" } else { "server" },
            reports(&all)
        );
        eprintln!(
            "kill9 ({} killed): survivor exited after {took:?} with {:?}",
            if kill_server { "server" } else { "client" },
            if kill_server { c.status } else { s.status }
        );
        assert!(!assert_segments_gone(&all).is_empty());
    }
}

fn echo(test: &str, mode: &[&str], conns: &str, msgs: &str, size: &str) -> (Proc, Proc) {
    let d = TempDir::new(test);
    let sock = d.sock("e");
    let mut sargs: Vec<&str> = vec![sock.as_str()];
    sargs.extend_from_slice(mode);
    sargs.push("--max-conns");
    sargs.push(conns);
    let (s, c) = run_pair(
        &Spec::app("echo_server", "echo_server", &sargs).preload(true),
        &sock,
        &Spec::app("echo_client", "echo_client", &[&sock, conns, msgs, size]).preload(true),
        T60,
    );
    assert_ok(&[&s, &c]);
    assert_logs(&s, "accelerated", &[&s, &c]);
    assert_logs(&c, "accelerated", &[&s, &c]);
    assert!(!assert_segments_gone(&[&s, &c]).is_empty());
    (s, c)
}

#[test]
fn hundred_connections() {
    let (s, c) = echo("hundred", &["lt"], "100", "100", "512");
    let n = count(&s.stderr(), "accelerated");
    assert!(
        n >= 100,
        "only {n} of 100 server connections logged \"accelerated\"\n{}",
        reports(&[&s, &c])
    );
    let ids = shmids_of(&[&s, &c]);
    assert!(
        ids.len() >= 100,
        "only {} distinct shmids logged",
        ids.len()
    );
}

#[test]
fn epoll_echo_lt() {
    echo("echolt", &["lt"], "10", "200", "1000");
}

#[test]
fn epoll_echo_et() {
    echo("echoet", &["et"], "10", "200", "1000");
}

#[test]
fn epoll_echo_lt_one_byte() {
    echo("echo1", &["lt", "--one-byte"], "10", "200", "1000");
}

#[test]
fn differential_semantics() {
    let sc = bin("sockcheck");
    let d = TempDir::new("diff");
    let tmp = d.0.to_string_lossy().into_owned();
    let plain = Spec::new("sockcheck (plain)", sc.clone(), &["all"]).env("TMPDIR", &tmp);
    let pre = Spec::new("sockcheck (LD_PRELOAD)", sc, &["all"])
        .env("TMPDIR", &tmp)
        .preload(true);
    // The two runs are independent: run them side by side.
    let mut a = Proc::spawn(&plain);
    let mut b = Proc::spawn(&pre);
    wait_all(&mut [&mut a, &mut b], Duration::from_secs(120), "sockcheck");
    let (ta, tb) = (a.stdout(), b.stdout());
    assert!(
        a.success(),
        "plain sockcheck failed: the checker itself is broken\n{}",
        a.report()
    );
    let same = ta == tb;
    let diff = if same {
        String::new()
    } else {
        line_diff(&ta, &tb, "plain", "LD_PRELOAD=libtsss.so")
    };
    assert!(
        b.success() && same,
        "sockcheck under LD_PRELOAD {}{}\n{diff}\n--- preloaded stderr:\n{}",
        if b.success() {
            String::new()
        } else {
            format!("failed ({:?}); ", b.status)
        },
        if same {
            "".to_string()
        } else {
            "differs from the plain transcript:".to_string()
        },
        tail(&b.stderr(), 80)
    );
    assert_logs(&b, "accelerated", &[&b]);
    assert!(!assert_segments_gone(&[&a, &b]).is_empty());
}

#[test]
fn idle_cpu() {
    let d = Arc::new(TempDir::new("idle"));
    let modes = ["read", "epoll", "poll", "fullring"];
    // The modes are independent and mostly asleep: run them side by side.
    let hs: Vec<_> = modes
        .iter()
        .map(|&m| {
            let d = d.clone();
            thread::spawn(move || {
                let sock = d.sock(m);
                let (s, c) = run_pair(
                    &Spec::app("idle server", "idle", &["server", &sock, m]).preload(true),
                    &sock,
                    &Spec::app("idle client", "idle", &["client", &sock, m, "2"]).preload(true),
                    T60,
                );
                (m, s, c)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in hs {
        let (m, s, c) = h.join().expect("idle thread panicked");
        let all = [&s, &c];
        if !result_ok(&s) || !result_ok(&c) {
            failures.push(format!("mode {m}: a side failed\n{}", reports(&all)));
            continue;
        }
        if !s.stderr().contains("accelerated") || !c.stderr().contains("accelerated") {
            failures.push(format!("mode {m}: not accelerated\n{}", reports(&all)));
            continue;
        }
        let line = s
            .stdout()
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .unwrap()
            .to_string();
        let cpu: f64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("cpu_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::MAX);
        eprintln!("idle_cpu: {line}");
        if cpu >= 100.0 {
            failures.push(format!(
                "mode {m}: the idle server used {cpu} ms of CPU in 2 s (limit 100): it spins\n{}",
                reports(&all)
            ));
        }
        assert_segments_gone(&all);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn python() -> String {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

const PY: &str = r#"
import hashlib, os, random, socket, sys, threading, time
role, path = sys.argv[1], sys.argv[2]
if role == "server":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    c, _ = s.accept()
    s.close()
    os.unlink(path)
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
        n += len(b)
    c.close()
    print(f"RESULT role=server bytes={n} ok=1")
else:
    data = random.Random(1).randbytes(5_000_000)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.time() + 10
    while True:
        try:
            c.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.time() > deadline:
                raise
            time.sleep(0.01)
    got = []
    def reader():
        while True:
            b = c.recv(65536)
            if not b:
                break
            got.append(b)
    t = threading.Thread(target=reader)
    t.start()
    rng = random.Random(2)
    off = 0
    while off < len(data):
        k = rng.randint(1, 100000)
        c.sendall(data[off:off + k])
        off += k
    c.shutdown(socket.SHUT_WR)
    t.join()
    c.close()
    echo = b"".join(got)
    ok = hashlib.sha256(echo).digest() == hashlib.sha256(data).digest()
    print(f"RESULT role=client sent={len(data)} got={len(echo)} sha256_equal={int(ok)} ok={int(ok)}")
    sys.exit(0 if ok else 1)
"#;

#[test]
fn python_socket() {
    let d = TempDir::new("python");
    let sock = d.sock("py");
    let py = python();
    let (s, c) = run_pair(
        &Spec::new("python server", py.clone(), &["-c", PY, "server", &sock]).preload(true),
        &sock,
        &Spec::new("python client", py, &["-c", PY, "client", &sock]).preload(true),
        T60,
    );
    let all = [&s, &c];
    assert_ok(&all);
    assert_logs(&s, "accelerated", &all);
    assert_logs(&c, "accelerated", &all);
    assert!(!assert_segments_gone(&all).is_empty());
}

#[test]
fn socat_transfer() {
    let have = Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(have, "socat is not installed: run `make deps`");
    let d = TempDir::new("socat");
    let input = d.path("in.bin");
    let data = random_bytes(50 << 20, 7);
    std::fs::write(&input, &data).expect("write input file");
    let inp = input.to_string_lossy().into_owned();
    for server_sends in [false, true] {
        let sock = d.sock(if server_sends { "r" } else { "f" });
        let out = d.path(if server_sends {
            "out-r.bin"
        } else {
            "out-f.bin"
        });
        let outp = out.to_string_lossy().into_owned();
        let listen = format!("UNIX-LISTEN:{sock}");
        let connect = format!("UNIX-CONNECT:{sock}");
        let fin = format!("FILE:{inp}");
        let fout = format!("FILE:{outp},create");
        let (sargs, cargs) = if server_sends {
            (
                [fin.as_str(), listen.as_str()],
                [connect.as_str(), fout.as_str()],
            )
        } else {
            (
                [listen.as_str(), fout.as_str()],
                [fin.as_str(), connect.as_str()],
            )
        };
        let mut sa = vec!["-u"];
        sa.extend(sargs);
        let mut ca = vec!["-u"];
        ca.extend(cargs);
        let (s, c) = run_pair(
            &Spec::new("socat server", "socat", &sa).preload(true),
            &sock,
            &Spec::new("socat client", "socat", &ca).preload(true),
            T60,
        );
        let all = [&s, &c];
        assert!(
            s.success() && c.success(),
            "socat failed (server sends: {server_sends})\n{}",
            reports(&all)
        );
        let got = std::fs::read(&out).expect("read output file");
        assert!(
            got.len() == data.len() && got == data,
            "socat transfer (server sends: {server_sends}): output differs from input \
             ({} of {} bytes{})\n{}",
            got.len(),
            data.len(),
            match got.iter().zip(&data).position(|(a, b)| a != b) {
                Some(i) => format!(", first difference at byte {i}"),
                None => String::new(),
            },
            reports(&all)
        );
        assert_logs(&s, "accelerated", &all);
        assert_logs(&c, "accelerated", &all);
        assert!(!assert_segments_gone(&all).is_empty());
        let _ = std::fs::remove_file(&out);
    }
}

#[test]
fn diff_helper_lists_changes() {
    let d = line_diff("a\nb\nc\n", "a\nB\nc\n", "x", "y");
    assert!(d.contains("-b\n") && d.contains("+B\n"), "{d}");
    assert_eq!(
        shmids_in("fd 3: offered shmid 12 (x)\nshmid 7, rings"),
        [7, 12].into()
    );
}

// ------------------------------------------------------------------ webproxy/cache

/// The webproxy/cache pair from tssx: a cache with a boss thread and a
/// worker pool, a proxy with concurrent connections; bodies verified.
fn webcache(name: &str, sendfile: bool) {
    let t = TempDir::new(name);
    let dir = t.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let dir_s = dir.to_str().unwrap().to_string();
    let mk = Command::new(bin("webcache"))
        .args(["mkfiles", &dir_s, "12"])
        .output()
        .unwrap();
    assert!(
        mk.status.success(),
        "mkfiles failed: {}",
        String::from_utf8_lossy(&mk.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.push("missing.dat".into());
    let sock = t.sock("cache");
    let mut sargs = vec!["cache", &sock, &dir_s, "4", "--max-conns", "8"];
    if sendfile {
        sargs.push("--sendfile");
    }
    let server = Spec::app("cache", "webcache", &sargs)
        .preload(true)
        .env("WEBCACHE_TIMEOUT", "60");
    let mut cargs = vec!["webproxy", sock.as_str(), "8", "100"];
    cargs.extend(names.iter().map(String::as_str));
    let client = Spec::app("webproxy", "webcache", &cargs)
        .preload(true)
        .env("WEBCACHE_TIMEOUT", "60");
    let (s, c) = run_pair(&server, &sock, &client, Duration::from_secs(90));
    assert_ok(&[&s, &c]);
    assert_eq!(
        count(&s.stderr(), "accelerated"),
        8,
        "{}",
        reports(&[&s, &c])
    );
    assert_segments_gone(&[&s, &c]);
}

#[test]
fn webcache_read_write() {
    webcache("webcache_rw", false);
}

/// sendfile(2) into an accelerated socket goes file -> ring.
#[test]
fn webcache_sendfile() {
    webcache("webcache_sf", true);
}

// ------------------------------------------------------------------ pubsub

/// A hub forwards every publisher's memfd (SCM_RIGHTS) with a small header
/// to every subscriber; all preloaded: descriptors must arrive with exactly
/// the message they were sent with, in both the plain and the ring phase.
#[test]
fn pubsub_passes_descriptors() {
    let t = TempDir::new("pubsub");
    let sock = t.sock("hub");
    let (subs, pubs, msgs) = (3, 2, 500);
    let hub = Spec::app(
        "hub",
        "pubsub",
        &["hub", &sock, &subs.to_string(), &pubs.to_string()],
    )
    .preload(true)
    .env("PUBSUB_TIMEOUT", "60");
    let mut h = Proc::spawn(&hub);
    wait_for_path(Path::new(&sock), &mut h);
    let total = (pubs * msgs).to_string();
    let mut ps: Vec<Proc> = (0..subs)
        .map(|i| {
            Proc::spawn(
                &Spec::app(&format!("sub{i}"), "pubsub", &["sub", &sock, &total])
                    .preload(true)
                    .env("PUBSUB_TIMEOUT", "60"),
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    for p in 0..pubs {
        let size = if p == 0 { "4096" } else { "1" };
        ps.push(Proc::spawn(
            &Spec::app(
                &format!("pub{p}"),
                "pubsub",
                &["pub", &sock, &(p + 1).to_string(), &msgs.to_string(), size],
            )
            .preload(true)
            .env("PUBSUB_TIMEOUT", "60"),
        ));
    }
    let mut all: Vec<&mut Proc> = ps.iter_mut().collect();
    all.push(&mut h);
    wait_all(&mut all, Duration::from_secs(90), "pubsub");
    let refs: Vec<&Proc> = ps.iter().chain(std::iter::once(&h)).collect();
    assert_ok(&refs);
    assert!(
        count(&h.stderr(), "accelerated") >= subs,
        "{}",
        reports(&refs)
    );
    assert_segments_gone(&refs);
}
