//! Shared by the integration test files: processes with an explicit
//! environment, temporary directories, output checks and the segment-leak
//! check. Each test file uses only part of it.
#![allow(dead_code)]

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

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shim: $TSSS_LIB or target/release/libtsss.so. Fails if missing.
pub fn lib() -> PathBuf {
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
pub fn bin(name: &str) -> PathBuf {
    let p = root().join("test-apps/bin").join(name);
    assert!(
        p.is_file(),
        "test application {} does not exist: run `make` (or `make -C test-apps`) first",
        p.display()
    );
    p
}

/// Whether a process of another uid can reach `p`: every directory on
/// the way searchable by others, the file itself readable (and, for a
/// program, executable) by others.
fn others_can_use(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |q: &Path| std::fs::metadata(q).map_or(0, |m| m.permissions().mode());
    let file = mode(p);
    p.ancestors()
        .skip(1)
        .all(|d| d.as_os_str().is_empty() || mode(d) & 0o001 != 0)
        && file & 0o004 != 0
        && (file & 0o100 == 0 || file & 0o001 != 0)
}

/// `p` as a process of another uid can load or run it: `p` itself when it
/// can, else a copy in a fresh 0755 directory of this test process (a
/// checkout under a 0700 home directory is out of other users' reach).
pub fn for_other_users(p: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    // A bare name is found on PATH: a system program.
    if !p.is_absolute() || others_can_use(p) {
        return p.to_path_buf();
    }
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = PathBuf::from(format!("/tmp/tsss-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create the shared directory");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the shared directory");
        d
    });
    let name = p.file_name().expect("a file");
    let to = dir.join(name);
    if !to.exists() {
        let tmp = dir.join(format!(".{}.part", name.to_string_lossy()));
        std::fs::copy(p, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", p.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
        std::fs::rename(&tmp, &to).expect("rename the copy");
    }
    assert!(
        others_can_use(&to),
        "{} is not reachable by other users (is /tmp private?)",
        to.display()
    );
    to
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A socket path (well below the 108-byte sun_path limit).
    pub fn sock(&self, name: &str) -> String {
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
pub struct Spec {
    pub name: String,
    pub prog: OsString,
    pub args: Vec<OsString>,
    pub preload: bool,
    /// Runs as another uid: the library is preloaded from where that uid
    /// can read it (see [`for_other_users`]).
    pub other_user: bool,
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new(name: &str, prog: impl Into<OsString>, args: &[&str]) -> Spec {
        Spec {
            name: name.to_string(),
            prog: prog.into(),
            args: args.iter().map(OsString::from).collect(),
            preload: false,
            other_user: false,
            env: Vec::new(),
        }
    }

    pub fn app(name: &str, app: &str, args: &[&str]) -> Spec {
        Spec::new(name, bin(app), args)
    }

    pub fn preload(mut self, on: bool) -> Spec {
        self.preload = on;
        self
    }

    /// The program will switch to another uid (setpriv): the library and
    /// the program must be usable by it.
    pub fn other_user(mut self) -> Spec {
        self.other_user = true;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Spec {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn describe(&self) -> String {
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

pub type Buf = Arc<Mutex<Vec<u8>>>;

pub fn collect(mut r: impl Read + Send + 'static, buf: Buf) {
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
pub struct Proc {
    pub spec: Spec,
    pub child: Child,
    pub out: Buf,
    pub err: Buf,
    pub status: Option<ExitStatus>,
    pub started: Instant,
    pub ended: Option<Instant>,
}

impl Proc {
    pub fn spawn(spec: &Spec) -> Proc {
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
        // Every connection offered, whatever its life: tests count their
        // accelerated connections. (`conn::offers`' own test sets
        // `adaptive`, the default.)
        cmd.env("TSSS_OFFER", "always");
        if spec.preload {
            let l = lib();
            cmd.env(
                "LD_PRELOAD",
                if spec.other_user {
                    for_other_users(&l)
                } else {
                    l
                },
            );
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

    pub fn poll(&mut self) -> bool {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
            self.ended = Some(Instant::now());
        }
        self.status.is_some()
    }

    /// Waits until `deadline`; true if the process exited.
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
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
    pub fn kill(&mut self) {
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

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn runtime(&self) -> Duration {
        self.ended.unwrap_or_else(Instant::now) - self.started
    }

    pub fn report(&self) -> String {
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

pub fn tail(s: &str, n: usize) -> String {
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

pub fn reports(ps: &[&Proc]) -> String {
    ps.iter().map(|p| p.report()).collect::<Vec<_>>().join("\n")
}

/// Waits for all of `ps` until `timeout`; on timeout kills them all and
/// panics with their output.
pub fn wait_all(ps: &mut [&mut Proc], timeout: Duration, what: &str) {
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

pub fn wait_for_path(p: &Path, server: &mut Proc) {
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
pub fn run_pair(server: &Spec, sock: &str, client: &Spec, timeout: Duration) -> (Proc, Proc) {
    let mut s = Proc::spawn(server);
    wait_for_path(Path::new(sock), &mut s);
    let mut c = Proc::spawn(client);
    wait_all(&mut [&mut c, &mut s], timeout, "run_pair");
    (s, c)
}

// ------------------------------------------------------------------ checks

pub fn result_ok(p: &Proc) -> bool {
    p.success()
        && p.stdout()
            .lines()
            .any(|l| l.starts_with("RESULT ") && l.split_whitespace().any(|w| w == "ok=1"))
}

pub fn assert_ok(ps: &[&Proc]) {
    for p in ps {
        assert!(
            result_ok(p),
            "{} did not succeed (exit 0 with RESULT ... ok=1)\n{}",
            p.spec.name,
            reports(ps)
        );
    }
}

/// The value of the whitespace-separated word `key=value` of `line` (the
/// first such word).
pub fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn count(hay: &str, needle: &str) -> usize {
    hay.lines().filter(|l| l.contains(needle)).count()
}

pub fn assert_logs(p: &Proc, needle: &str, all: &[&Proc]) {
    assert!(
        p.stderr().contains(needle),
        "{}: stderr does not contain {needle:?}\n{}",
        p.spec.name,
        reports(all)
    );
}

pub fn assert_not_logs(p: &Proc, needle: &str, all: &[&Proc]) {
    assert!(
        !p.stderr().contains(needle),
        "{}: stderr unexpectedly contains {needle:?}\n{}",
        p.spec.name,
        reports(all)
    );
}

/// Every `shmid N` in `text`.
pub fn shmids_in(text: &str) -> BTreeSet<i64> {
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

pub fn shmids_of(ps: &[&Proc]) -> BTreeSet<i64> {
    ps.iter().flat_map(|p| shmids_in(&p.stderr())).collect()
}

/// The shmid column of `ipcs -m`.
pub fn live_shmids() -> BTreeSet<i64> {
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

/// One row of /proc/sysvipc/shm (what `ipcs -m` reads).
#[derive(Debug, Clone, Copy)]
pub struct ShmRow {
    pub shmid: i64,
    pub size: u64,
    /// Creator pid.
    pub cpid: u32,
    pub nattch: u64,
    /// Resident bytes.
    pub rss: u64,
}

/// The rows of a /proc/sysvipc/shm text: this namespace's ([`shm_table`])
/// or another's (read through nsenter).
pub fn shm_rows(text: &str) -> Vec<ShmRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 15 {
                return None;
            }
            Some(ShmRow {
                shmid: w[1].parse().ok()?,
                size: w[3].parse().ok()?,
                cpid: w[4].parse().ok()?,
                nattch: w[6].parse().ok()?,
                rss: w[14].parse().ok()?,
            })
        })
        .collect()
}

/// This IPC namespace's segments, from /proc/sysvipc/shm.
pub fn shm_table() -> Vec<ShmRow> {
    let t = std::fs::read_to_string("/proc/sysvipc/shm").expect("read /proc/sysvipc/shm");
    shm_rows(&t)
}

/// Asserts that none of the segments logged by `ps` (all exited) is left.
pub fn assert_segments_gone(ps: &[&Proc]) -> BTreeSet<i64> {
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
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
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
pub fn line_diff(a: &str, b: &str, la: &str, lb: &str) -> String {
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

pub const T60: Duration = Duration::from_secs(60);

/// Waits until `p` logged `needle` (or exited / timed out).
pub fn wait_for_log(p: &mut Proc, needle: &str, timeout: Duration) -> bool {
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

/// Waits for a stdout line of `p` that satisfies `pred` and returns it; the
/// error says that `p` exited first or did not get there in time (`what`
/// names the line).
pub fn wait_for_line(
    p: &mut Proc,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = p.stdout().lines().find(|l| pred(l)) {
            return Ok(l.to_string());
        }
        if p.poll() {
            // Let the collector threads catch up once.
            thread::sleep(Duration::from_millis(20));
            if let Some(l) = p.stdout().lines().find(|l| pred(l)) {
                return Ok(l.to_string());
            }
            return Err(format!("{} exited before {what}", p.spec.name));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not reach {what} within {timeout:?}",
                p.spec.name
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the tests run as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn have_cmd(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", "command -v \"$1\"", "sh", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `spec` to completion (killed and failing after `timeout`).
pub fn run_one(spec: &Spec, timeout: Duration) -> Proc {
    let mut p = Proc::spawn(spec);
    wait_all(&mut [&mut p], timeout, &spec.name);
    p
}

pub fn stdout_bytes(p: &Proc) -> Vec<u8> {
    p.out.lock().unwrap().clone()
}

/// redis-server's arguments for a test: a Unix socket only, nothing saved,
/// its files in `dir`, in the foreground, logging to stdout.
pub fn redis_server_args<'a>(sock: &'a str, dir: &'a str) -> [&'a str; 14] {
    [
        "--port",
        "0",
        "--unixsocket",
        sock,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        "",
        "--dir",
        dir,
    ]
}
