//! The user's tools: `tsss run`, `tsss stat` over the registry,
//! `tsss doctor`, and the install paths (scripts/package-test.sh).
//!
//! Each test gives its processes a private XDG_RUNTIME_DIR, so their
//! registry files are its own, and asks `tsss stat -p` about its own pids.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// target/release/tsss. Fails if missing.
fn tsss() -> PathBuf {
    let p = root().join("target/release/tsss");
    assert!(
        p.is_file(),
        "{} does not exist: run `make` first",
        p.display()
    );
    p
}

/// A command with an explicit environment: no inherited tsss settings,
/// the test's own registry directory.
fn command(prog: impl AsRef<std::ffi::OsStr>, xdg: &Path) -> Command {
    let mut c = Command::new(prog);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k == "LD_PRELOAD" || k.starts_with("TSSS_") {
            c.env_remove(&k);
        }
    }
    c.env("XDG_RUNTIME_DIR", xdg);
    c
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private runtime directory (the registry goes in its tsss/).
fn runtime_dir(d: &TempDir) -> PathBuf {
    let x = d.path("xdg");
    std::fs::create_dir_all(&x).unwrap();
    x
}

/// `tsss stat --json -p <pids>`: (connections, warnings, stderr).
fn stat(xdg: &Path, pids: &[u32]) -> (Vec<Value>, Vec<String>, String) {
    let mut c = command(tsss(), xdg);
    c.args(["stat", "--json"]);
    for p in pids {
        c.args(["-p", &p.to_string()]);
    }
    let out = c.output().expect("run tsss stat");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "tsss stat failed: {err}");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("tsss stat --json printed no JSON ({e}): {text}"));
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    let warns = v["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (conns, warns, err)
}

fn of_pid(conns: &[Value], pid: u32) -> Vec<Value> {
    conns
        .iter()
        .filter(|c| c["pid"].as_u64() == Some(u64::from(pid)))
        .cloned()
        .collect()
}

fn redis_server(name: &str, sock: &str, dir: &Path, xdg: &Path, with_tsss: bool) -> Proc {
    assert!(
        have_cmd("redis-server"),
        "redis-server is not installed: run `make deps`"
    );
    let dir = dir.to_string_lossy();
    let args = redis_server_args(sock, &dir);
    let spec = if with_tsss {
        let mut a = vec!["run", "--", "redis-server"];
        a.extend(args);
        Spec::new(name, tsss(), &a)
    } else {
        Spec::new(name, "redis-server", &args)
    };
    let mut p = Proc::spawn(&spec.env("XDG_RUNTIME_DIR", &xdg.to_string_lossy()));
    wait_for_path(Path::new(sock), &mut p);
    p
}

/// `socat - UNIX-CONNECT:sock`, our end of a redis connection: we write
/// commands to its stdin and count the replies on its stdout.
struct Client {
    child: Child,
    stdin: ChildStdin,
    got: mpsc::Receiver<Vec<u8>>,
    out: Vec<u8>,
}

impl Client {
    fn start(sock: &str, xdg: &Path, with_tsss: bool) -> Client {
        assert!(have_cmd("socat"), "socat is not installed: run `make deps`");
        let target = format!("UNIX-CONNECT:{sock}");
        let mut c = if with_tsss {
            let mut c = command(tsss(), xdg);
            c.args(["run", "--", "socat", "-", &target]);
            c
        } else {
            let mut c = command("socat", xdg);
            c.args(["-", &target]);
            c
        };
        c.env("TSSS_LOG", "info");
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Client {
            child,
            stdin,
            got,
            out: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One PING, and its PONG read back (7 bytes, exactly).
    fn ping(&mut self) {
        let want = self.out.len() + 7;
        self.stdin.write_all(b"PING\r\n").expect("write to socat");
        self.stdin.flush().unwrap();
        let t = Instant::now();
        while self.out.len() < want {
            let left = Duration::from_secs(10).saturating_sub(t.elapsed());
            match self.got.recv_timeout(left) {
                Ok(b) => self.out.extend(b),
                Err(_) => panic!(
                    "no PONG from redis within 10 s; got {:?}",
                    String::from_utf8_lossy(&self.out)
                ),
            }
        }
        assert_eq!(self.out.len(), want, "more than PONG came back");
        assert!(
            self.out.ends_with(b"+PONG\r\n"),
            "{:?}",
            String::from_utf8_lossy(&self.out)
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ run

#[test]
fn run_preloads_execs_and_keeps_the_exit_status() {
    let d = TempDir::new("run");
    let xdg = runtime_dir(&d);
    let lib = std::fs::canonicalize(root().join("target/release/libtsss.so")).unwrap();
    // The library is loaded (its own debug line), LD_PRELOAD names it, and
    // the program's exit status is the program's.
    let mut c = command(tsss(), &xdg);
    c.args(["run", "--log", "debug", "--ring-size", "64K", "--"]);
    c.args([
        "sh",
        "-c",
        "echo \"$LD_PRELOAD|$TSSS_RING_SIZE|$$\"; exit 42",
    ]);
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(42), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{}|64K|{pid}", lib.display()),
        "LD_PRELOAD, the option's variable, and the same pid (exec, not spawn)"
    );
    assert!(
        stderr.contains("loaded (enabled"),
        "library not loaded: {stderr}"
    );

    // Appended to what is there, never twice.
    let mut c = command(tsss(), &xdg);
    c.env("LD_PRELOAD", "/nonexistent/other.so");
    c.args(["run", "--", "sh", "-c", "echo \"$LD_PRELOAD\""]);
    let out = c.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("/nonexistent/other.so:{}", lib.display())
    );
    let mut c = command(tsss(), &xdg);
    c.env("LD_PRELOAD", &lib);
    c.args(["run", "--", "sh", "-c", "echo \"$LD_PRELOAD\""]);
    let out = c.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        lib.to_string_lossy()
    );

    // A signal is the program's own.
    let st = command(tsss(), &xdg)
        .args(["run", "--", "sh", "-c", "kill -TERM $$"])
        .status()
        .unwrap();
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");

    // A static program: said on stderr, and run all the same.
    let out = command(tsss(), &xdg)
        .args(["run", "--"])
        .arg(bin("pingpong_static"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("statically linked"), "{stderr}");
    assert!(
        stderr.contains("usage: "),
        "the program did not run: {stderr}"
    );

    // None of these made a connection: no registry directory, no file.
    assert!(
        !xdg.join("tsss").exists(),
        "a process without connections created the registry"
    );
}

// ------------------------------------------------------------------ stat

#[test]
fn stat_lists_a_live_redis_connection_with_exact_byte_counts() {
    let d = TempDir::new("stat-redis");
    let xdg = runtime_dir(&d);
    let sock = d.sock("redis.sock");
    let mut server = redis_server("redis-server", &sock, &d.0, &xdg, true);
    let mut client = Client::start(&sock, &xdg, true);
    let (sp, cp) = (server.child.id(), client.pid());

    // Round trips until both ends report the switch (three at most by
    // the protocol), then one more for good measure.
    let mut pings = 0;
    let both = |conns: &[Value]| {
        let s = of_pid(conns, sp);
        let c = of_pid(conns, cp);
        s.len() == 1
            && c.len() == 1
            && s[0]["state"] == "accelerated"
            && c[0]["state"] == "accelerated"
    };
    loop {
        client.ping();
        pings += 1;
        let (conns, _, _) = stat(&xdg, &[sp, cp]);
        if both(&conns) {
            break;
        }
        assert!(
            pings < 10,
            "not accelerated after {pings} round trips: {conns:?}\n{}",
            server.report()
        );
    }
    for _ in 0..5 {
        client.ping();
        pings += 1;
    }
    let (conns, warns, _) = stat(&xdg, &[sp, cp]);
    assert!(warns.is_empty(), "{warns:?}");
    let s = &of_pid(&conns, sp)[0];
    let c = &of_pid(&conns, cp)[0];
    let (sent, replies) = (6 * pings, 7 * pings);
    assert_eq!(c["role"], "client");
    assert_eq!(s["role"], "server");
    assert_eq!(c["peer_pid"].as_u64(), Some(u64::from(sp)));
    assert_eq!(s["peer_pid"].as_u64(), Some(u64::from(cp)));
    assert_eq!(c["address"], sock.as_str());
    assert_eq!(s["address"], sock.as_str());
    assert_eq!(c["command"], "socat");
    assert_eq!(s["command"], "redis-server");
    assert_eq!(c["shmid"], s["shmid"]);
    assert_eq!(c["ring_tx"].as_u64(), Some(256 << 10));
    for (end, written, read) in [(c, sent, replies), (s, replies, sent)] {
        assert_eq!(
            (end["bytes_written"].as_u64(), end["bytes_read"].as_u64()),
            (Some(written), Some(read)),
            "{} after {pings} PING/PONG: {end}",
            end["role"]
        );
        assert_eq!(end["fill_tx"].as_u64(), Some(0));
        assert_eq!(end["fill_rx"].as_u64(), Some(0));
    }

    // The table says the same.
    let out = command(tsss(), &xdg)
        .args(["stat", "-p", &sp.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&sp.to_string()))
        .unwrap_or_else(|| panic!("no line for redis-server: {text}"));
    assert!(
        line.contains("redis-server") && line.ends_with("accelerated"),
        "{text}"
    );
    assert!(
        line.contains(&format!(" {replies} ")) && line.contains(&format!(" {sent} ")),
        "{text}"
    );

    // --watch refreshes, with rates from the second frame on.
    let out = command("timeout", &xdg)
        .args(["1.2"])
        .arg(tsss())
        .args(["stat", "--watch=0.3", "-p", &sp.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = text.split("\n\n").collect();
    assert!(frames.len() >= 2, "fewer than two frames in 1.2 s: {text}");
    assert!(
        frames[0].starts_with("PID") && frames[0].contains("WRITE/s"),
        "{text}"
    );
    let later = frames[1]
        .lines()
        .find(|l| l.starts_with(&sp.to_string()))
        .unwrap_or_else(|| panic!("no redis line in the second frame: {text}"));
    let w: Vec<&str> = later.split_whitespace().collect();
    assert_eq!(
        w[w.len() - 3..],
        ["0", "0", "accelerated"],
        "an idle connection's rates are 0: {later}"
    );

    drop(client);
    server.kill();
}

#[test]
fn stat_says_why_a_one_sided_connection_is_plain() {
    let d = TempDir::new("stat-plain");
    let xdg = runtime_dir(&d);
    // tsss client, server without tsss: the client learns it from the
    // server's first bytes.
    let sock = d.sock("plain-server.sock");
    let mut server = redis_server("redis-server (plain)", &sock, &d.0, &xdg, false);
    let mut client = Client::start(&sock, &xdg, true);
    client.ping();
    client.ping();
    let (conns, _, _) = stat(&xdg, &[client.pid()]);
    let c = of_pid(&conns, client.pid());
    assert_eq!(c.len(), 1, "{conns:?}");
    assert_eq!(c[0]["state"], "plain");
    assert_eq!(
        c[0]["reason"],
        "server does not run tsss (first bytes are application data)"
    );
    assert_eq!(
        client.out, b"+PONG\r\n+PONG\r\n",
        "stray bytes on a plain connection"
    );
    drop(client);
    server.kill();

    // Client without tsss, tsss server: known at accept.
    let sock = d.sock("plain-client.sock");
    let mut server = redis_server("redis-server", &sock, &d.0, &xdg, true);
    let mut client = Client::start(&sock, &xdg, false);
    client.ping();
    let (conns, _, _) = stat(&xdg, &[server.child.id()]);
    let s = of_pid(&conns, server.child.id());
    assert_eq!(s.len(), 1, "{conns:?}");
    assert_eq!(s[0]["state"], "plain");
    assert_eq!(
        s[0]["reason"],
        "client does not run tsss (no marker address)"
    );
    assert_eq!(s[0]["peer_pid"].as_u64(), Some(u64::from(client.pid())));
    assert!(
        s[0]["bytes_written"].is_null(),
        "a plain connection has no segment"
    );
    drop(client);
    server.kill();
}

#[test]
fn kill9_entry_is_swept_and_no_segment_is_left() {
    let d = TempDir::new("stat-kill9");
    let xdg = runtime_dir(&d);
    let sock = d.sock("redis.sock");
    let mut server = redis_server("redis-server", &sock, &d.0, &xdg, true);
    let mut client = Client::start(&sock, &xdg, true);
    let (sp, cp) = (server.child.id(), client.pid());
    let mut shmid = None;
    for _ in 0..10 {
        client.ping();
        let (conns, _, _) = stat(&xdg, &[cp]);
        if let Some(c) = of_pid(&conns, cp).first()
            && c["state"] == "accelerated"
        {
            shmid = c["shmid"].as_i64();
            break;
        }
    }
    let shmid = shmid.expect("the connection never got accelerated");
    // `<pid>`, or `<pid>.n` when a `tsss stat` swept the name between the
    // client's create and its lock (the file is unlocked for that instant).
    let dir = xdg.join("tsss");
    let file = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == cp.to_string() || n.starts_with(&format!("{cp}.")))
        })
        .unwrap_or_else(|| panic!("no registry file for pid {cp} in {}", dir.display()));

    client.child.kill().unwrap();
    client.child.wait().unwrap();
    // The next stat removes the dead process's file, and says so.
    let (conns, warns, _) = stat(&xdg, &[cp, sp]);
    assert!(of_pid(&conns, cp).is_empty(), "{conns:?}");
    assert!(
        warns
            .iter()
            .any(|w| w.contains(&format!("process {cp} is gone; removed"))),
        "{warns:?}"
    );
    assert!(!file.exists(), "{} is still there", file.display());
    // The server sees EOF and closes its end: its entry goes, and so does
    // the segment.
    wait_for("redis to drop the entry", Duration::from_secs(10), || {
        of_pid(&stat(&xdg, &[sp]).0, sp).is_empty()
    });
    wait_for("the segment to go", Duration::from_secs(10), || {
        !live_shmids().contains(&shmid)
    });
    server.kill();
}

#[test]
fn fork_child_registers_itself() {
    let d = TempDir::new("stat-fork");
    let xdg = runtime_dir(&d);
    let sock = d.sock("fork.sock");
    // Accept, fork; the child serves the connection, the parent closes its
    // copy (the classic forking server).
    let server = format!(
        "import os,socket,sys,time\n\
         s=socket.socket(socket.AF_UNIX); s.bind({sock:?}); s.listen()\n\
         c,_=s.accept(); c.recv(5)\n\
         pid=os.fork()\n\
         if pid==0:\n    c.sendall(b'hello'); c.recv(5); print('CHILD', os.getpid(), flush=True); time.sleep(30); os._exit(0)\n\
         c.close(); print('PARENT', os.getpid(), flush=True); time.sleep(30)\n"
    );
    let client = format!(
        "import socket,time\n\
         c=socket.socket(socket.AF_UNIX); c.connect({sock:?}); c.sendall(b'12345')\n\
         c.recv(5); c.sendall(b'67890'); time.sleep(30)\n"
    );
    let x = xdg.to_string_lossy().into_owned();
    let ts = tsss();
    let mut sp = Proc::spawn(
        &Spec::new("server", &ts, &["run", "--", "python3", "-c", &server])
            .env("XDG_RUNTIME_DIR", &x),
    );
    wait_for_path(Path::new(&sock), &mut sp);
    let mut cp = Proc::spawn(
        &Spec::new("client", &ts, &["run", "--", "python3", "-c", &client])
            .env("XDG_RUNTIME_DIR", &x),
    );
    wait_for("the fork", Duration::from_secs(10), || {
        sp.stdout().contains("PARENT") && sp.stdout().contains("CHILD")
    });
    let child: u32 = sp
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("CHILD ")?.trim().parse().ok())
        .unwrap();
    let parent = sp.child.id();
    let (conns, warns, _) = stat(&xdg, &[parent, child]);
    assert!(
        of_pid(&conns, parent).is_empty(),
        "the parent closed its copy: {conns:?}"
    );
    let c = of_pid(&conns, child);
    assert_eq!(
        c.len(),
        1,
        "the fork child lists the connection: {conns:?} {warns:?}"
    );
    assert_eq!(c[0]["role"], "server");
    assert_eq!(c[0]["peer_pid"].as_u64(), Some(u64::from(cp.child.id())));
    cp.kill();
    sp.kill();
}

// ------------------------------------------------------------------ other users

fn as_nobody(prog: &Path, args: &[&str], xdg: Option<&Path>) -> std::process::Output {
    let prog = for_other_users(prog);
    let mut c = command("setpriv", xdg.unwrap_or(Path::new("/nonexistent")));
    if xdg.is_none() {
        c.env_remove("XDG_RUNTIME_DIR");
    }
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(prog)
        .args(args)
        .output()
        .expect("run setpriv")
}

#[test]
fn another_uid_sees_nothing_and_cannot_plant_or_redirect() {
    assert!(is_root(), "tests/tools.rs: the other-uid test needs root");
    assert!(have_cmd("setpriv"), "setpriv (util-linux) is not installed");
    let d = TempDir::new("stat-uid");
    std::fs::set_permissions(&d.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let xdg = runtime_dir(&d);
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sock = d.sock("redis.sock");
    let mut server = redis_server("redis-server", &sock, &d.0, &xdg, true);
    let mut client = Client::start(&sock, &xdg, true);
    for _ in 0..3 {
        client.ping();
    }
    let (sp, cp) = (server.child.id(), client.pid());
    assert_eq!(stat(&xdg, &[sp, cp]).0.len(), 2, "root sees its two ends");

    // Another uid's stat, with our runtime directory or its own: nothing.
    for x in [Some(xdg.as_path()), None] {
        let out = as_nobody(&tsss(), &["stat", "--json"], x);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        let mine: Vec<&Value> = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["uid"] != 65534)
            .collect();
        assert!(
            mine.is_empty(),
            "uid 65534 sees root's connections: {mine:?}"
        );
    }
    let out = as_nobody(&tsss(), &["stat"], Some(&xdg));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");

    // It cannot put a file into our registry.
    let planted = xdg.join("tsss").join("1");
    let out = as_nobody(
        Path::new("/bin/sh"),
        &["-c", &format!("echo x > {}", planted.display())],
        None,
    );
    assert!(
        !out.status.success() && !planted.exists(),
        "uid 65534 wrote {}",
        planted.display()
    );

    // A registry directory squatted by another uid (a symlink to its own
    // directory, or a directory of its own) is refused by our processes:
    // nothing of ours lands there, and stat says why.
    let shared = d.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let theirs = shared.join("theirs");
    for squat in ["ln -s {theirs} {shared}/tsss", "mkdir -m 700 {shared}/tsss"] {
        let _ = std::fs::remove_dir_all(&theirs);
        let _ = std::fs::remove_file(shared.join("tsss"));
        let _ = std::fs::remove_dir_all(shared.join("tsss"));
        let cmd = squat
            .replace("{theirs}", &theirs.to_string_lossy())
            .replace("{shared}", &shared.to_string_lossy());
        let out = as_nobody(
            Path::new("/bin/sh"),
            &["-c", &format!("mkdir -m 700 {} && {cmd}", theirs.display())],
            None,
        );
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c2 = Client::start(&sock, &shared, true);
        c2.ping();
        c2.ping();
        let pid = c2.pid();
        let found_theirs = std::fs::read_dir(&theirs).map_or(0, |d| d.count());
        let found_squat = std::fs::read_dir(shared.join("tsss")).map_or(0, |d| d.count());
        assert_eq!(
            (found_theirs, found_squat),
            (0, 0),
            "{cmd}: our entry landed in their directory"
        );
        let (conns, warns, _) = stat(&shared, &[pid]);
        assert!(of_pid(&conns, pid).is_empty(), "{conns:?}");
        assert!(
            warns
                .iter()
                .any(|w| w.contains("ignored") && w.contains("shared/tsss")),
            "{cmd}: {warns:?}"
        );
        drop(c2);
    }

    // A file in its own registry that names our redis and our segment:
    // root's stat does not take it for ours.
    let (conns, _, _) = stat(&xdg, &[sp]);
    let shmid = conns[0]["shmid"].as_i64().unwrap() as i32;
    let forged = forged_file(sp as i32, 65534, shmid);
    let hex: String = forged.iter().map(|b| format!("{b:02x}")).collect();
    let dir = "/tmp/tsss-65534";
    let holder = format!(
        "import os,fcntl,struct,sys,time\n\
         os.makedirs({dir:?}, mode=0o700, exist_ok=True)\n\
         p=os.path.join({dir:?}, '{sp}')\n\
         fd=os.open(p, os.O_RDWR|os.O_CREAT|os.O_TRUNC, 0o600)\n\
         os.write(fd, bytes.fromhex('{hex}'))\n\
         fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))\n\
         print('HELD', flush=True); time.sleep(30)\n"
    );
    let py = for_other_users(Path::new("/usr/bin/python3"));
    let mut h = Proc::spawn(&Spec::new(
        "forger",
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &py.to_string_lossy(),
            "-c",
            &holder,
        ],
    ));
    wait_for("the forged file", Duration::from_secs(10), || {
        h.stdout().contains("HELD")
    });
    let (conns, warns, _) = stat(&xdg, &[sp]);
    h.kill();
    let _ = std::fs::remove_file(format!("{dir}/{sp}"));
    let nobody: Vec<&Value> = conns.iter().filter(|c| c["uid"] == 65534).collect();
    assert!(nobody.is_empty(), "a forged entry was listed: {nobody:?}");
    assert!(
        warns
            .iter()
            .any(|w| w.contains(&format!("pid {sp} is a process of uid 0, not 65534"))),
        "{warns:?}"
    );
    drop(client);
    server.kill();
}

/// A well-formed registry file claiming that `pid` of `uid` has an
/// accelerated connection on segment `shmid`.
fn forged_file(pid: i32, uid: u32, shmid: i32) -> Vec<u8> {
    use tsss_core::registry::*;
    let mut v = encode_header(&FileHeader {
        pid,
        uid,
        created_ns: 1,
        unlisted: 0,
        comm: *b"forged\0\0\0\0\0\0\0\0\0\0",
    })
    .to_vec();
    v.resize(HEADER_SIZE + 4 * ENTRY_SIZE, 0);
    // Slot 3: taken from a real record's encoding, re-pointed.
    let mut e = [0u8; ENTRY_SIZE];
    e[0] = 2; // accelerated
    e[1] = 1; // client
    e[2] = 1; // path
    e[4..8].copy_from_slice(&3i32.to_le_bytes());
    e[8..12].copy_from_slice(&shmid.to_le_bytes());
    e[20..24].copy_from_slice(&(256u32 << 10).to_le_bytes());
    e[24..28].copy_from_slice(&(256u32 << 10).to_le_bytes());
    let sum = e[..ENTRY_SIZE - 8]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
        });
    e[ENTRY_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
    assert!(
        decode_record(3, &e).unwrap().is_some(),
        "the forged record is well-formed"
    );
    v[HEADER_SIZE + 3 * ENTRY_SIZE..HEADER_SIZE + 4 * ENTRY_SIZE].copy_from_slice(&e);
    v
}

// ------------------------------------------------------------------ doctor

#[test]
fn doctor_checks_the_machine_and_a_program() {
    let d = TempDir::new("doctor");
    let xdg = runtime_dir(&d);
    let out = command(tsss(), &xdg)
        .args(["doctor", "--ring-size", "1M"])
        .arg(bin("pingpong"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "kernel.shmmax",
        "kernel.shmall",
        "kernel.shmmni",
        "1024 KiB per direction",
        "accelerated connections at once",
        "IPC namespace",
        "membarrier",
        "registry",
        "LD_PRELOAD      applies",
    ] {
        assert!(text.contains(want), "doctor does not say {want:?}:\n{text}");
    }
    let over = text
        .lines()
        .find(|l| l.contains(" of its ") && l.contains("socket calls"))
        .unwrap_or_else(|| panic!("no overridden line:\n{text}"));
    for call in ["socket", "connect", "accept", "read", "write", "close"] {
        assert!(
            over.split_whitespace().any(|w| w == call),
            "{call} not listed: {over}"
        );
    }
    // A static program: LD_PRELOAD cannot apply, and doctor fails.
    let out = command(tsss(), &xdg)
        .arg("doctor")
        .arg(bin("pingpong_static"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  LD_PRELOAD") && text.contains("statically linked"),
        "{text}"
    );
}

// ------------------------------------------------------------------ install

#[test]
fn install_and_debian_package() {
    let mut c = Command::new(root().join("scripts/package-test.sh"));
    if !is_root() {
        eprintln!("not root: checking make install/uninstall only, not the package");
        c.arg("--no-deb");
    }
    let out = c
        .current_dir(root())
        .output()
        .expect("run scripts/package-test.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/package-test.sh failed:\n{text}"
    );
    assert!(text.contains("package-test: ok"), "{text}");
}

// ------------------------------------------------------------------ off

#[test]
fn registry_off_keeps_no_file() {
    let d = TempDir::new("stat-off");
    let xdg = runtime_dir(&d);
    let x = xdg.to_string_lossy().into_owned();
    let sock = d.sock("off.sock");
    let server = format!(
        "import socket,time\n\
         s=socket.socket(socket.AF_UNIX); s.bind({sock:?}); s.listen()\n\
         c,_=s.accept(); c.sendall(c.recv(5)); c.recv(1); print('RESULT role=server ok=1')\n"
    );
    let client = format!(
        "import socket\n\
         c=socket.socket(socket.AF_UNIX); c.connect({sock:?}); c.sendall(b'12345')\n\
         assert c.recv(5) == b'12345'; c.sendall(b'.'); print('RESULT role=client ok=1')\n"
    );
    let spec = |name: &str, code: &str| {
        Spec::new(
            name,
            tsss(),
            &["run", "--log", "info", "--", "python3", "-c", code],
        )
        .env("XDG_RUNTIME_DIR", &x)
        .env("TSSS_REGISTRY", "off")
    };
    let (s, c) = run_pair(
        &spec("server", &server),
        &sock,
        &spec("client", &client),
        T60,
    );
    assert_ok(&[&s, &c]);
    assert_logs(&s, "accelerated (server", &[&s, &c]);
    assert!(
        !xdg.join("tsss").exists(),
        "TSSS_REGISTRY=off still made the registry"
    );
}

// ------------------------------------------------------------------ closed behind our back

/// A program that closes our registry file with a raw close syscall (not
/// seen by the shim) and gets its number back for a file of its own: the
/// registry never writes into that file, and registers again.
#[test]
fn registry_file_closed_behind_our_back_is_never_written() {
    let d = TempDir::new("stat-rawclose");
    let xdg = runtime_dir(&d);
    let x = xdg.to_string_lossy().into_owned();
    let sock = d.sock("raw.sock");
    let mine = d.path("mine");
    let server = format!(
        "import socket\n\
         s=socket.socket(socket.AF_UNIX); s.bind({sock:?}); s.listen()\n\
         c,_=s.accept(); c.sendall(c.recv(5))\n\
         c2,_=s.accept(); c2.sendall(c2.recv(1)); print('RESULT role=server ok=1')\n"
    );
    let client = format!(
        "import os,socket,ctypes,fcntl\n\
         c=socket.socket(socket.AF_UNIX); c.connect({sock:?}); c.sendall(b'12345')\n\
         assert c.recv(5) == b'12345'\n\
         def target(f):\n    try: return os.readlink('/proc/self/fd/'+f)\n    except OSError: return ''\n\
         reg=[int(f) for f in os.listdir('/proc/self/fd') if target(f).startswith({reg:?})]\n\
         assert len(reg) == 1, reg\n\
         nr={{'x86_64': 3, 'aarch64': 57}}[os.uname().machine]\n\
         assert ctypes.CDLL(None).syscall(nr, reg[0]) == 0\n\
         p=open({mine:?}, 'wb'); p.write(b'x' * (1 << 20)); p.flush()\n\
         assert fcntl.fcntl(p.fileno(), fcntl.F_DUPFD, reg[0]) == reg[0]\n\
         c.close()\n\
         c2=socket.socket(socket.AF_UNIX); c2.connect({sock:?}); c2.sendall(b'.')\n\
         assert c2.recv(1) == b'.'; print('RESULT role=client ok=1')\n",
        reg = format!("{x}/tsss/"),
        mine = mine.to_string_lossy(),
    );
    let spec = |name: &str, code: &str| {
        Spec::new(
            name,
            tsss(),
            &["run", "--log", "info", "--", "python3", "-c", code],
        )
        .env("XDG_RUNTIME_DIR", &x)
    };
    let (s, c) = run_pair(
        &spec("server", &server),
        &sock,
        &spec("client", &client),
        T60,
    );
    assert_ok(&[&s, &c]);
    assert_logs(
        &c,
        "registry: the program closed our registry file",
        &[&s, &c],
    );
    let data = std::fs::read(&mine).unwrap();
    assert!(
        data.len() == 1 << 20 && data.iter().all(|&b| b == b'x'),
        "the registry wrote into the program's file"
    );
    // Registered again for the second connection: the file names the
    // client's pid in its header.
    let file = xdg.join("tsss").join(c.child.id().to_string());
    let head = std::fs::read(&file).unwrap_or_default();
    let h = tsss_core::registry::decode_header(&head)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(h.pid as u32, c.child.id());
}
