//! Limits and faults: a thousand connections through one event loop, the
//! system's segment limit, shared-memory and descriptor failures, and who
//! else can reach a connection's segment.
//!
//! Whenever tsss cannot accelerate a connection, the connection must work as
//! a plain socket, byte for byte, and the TSSS_LOG line must say why.
//!
//! Needs root (setpriv to run other uids, unshare/nsenter for private IPC
//! namespaces, prlimit). Every limit is provoked for real but never changed
//! for the machine: kernel.shmmax/shmall and the segment exhaustion happen in
//! a private IPC namespace (its sysctls are its own), the others are
//! per-process rlimits. The tests of this file run one at a time (SERIAL).

mod common;
use common::*;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn need_root() {
    assert!(
        is_root(),
        "tests/limits.rs needs root (other uids, IPC namespaces)"
    );
    for c in ["setpriv", "unshare", "nsenter", "prlimit"] {
        assert!(have_cmd(c), "{c} (util-linux) is not installed");
    }
}

fn bin_s(name: &str) -> String {
    bin(name).to_string_lossy().into_owned()
}

/// `spec` run through a wrapper command (prlimit, setpriv, nsenter, ...)
/// that ends by exec'ing it: same preload, environment and name.
fn wrap(spec: &Spec, prefix: &[&str]) -> Spec {
    let mut args: Vec<&str> = prefix[1..].to_vec();
    let prog = if spec.other_user {
        for_other_users(std::path::Path::new(&spec.prog))
    } else {
        std::path::PathBuf::from(&spec.prog)
    };
    let prog = prog.to_string_lossy().into_owned();
    args.push(&prog);
    let rest: Vec<String> = spec
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.extend(rest.iter().map(String::as_str));
    let mut w = Spec::new(&spec.name, prefix[0], &args).preload(spec.preload);
    w.env = spec.env.clone();
    w.other_user = spec.other_user;
    w
}

fn as_uid(spec: &Spec, uid: u32) -> Spec {
    let u = uid.to_string();
    wrap(
        &spec.clone().other_user(),
        &[
            "setpriv",
            &format!("--reuid={u}"),
            &format!("--regid={u}"),
            "--clear-groups",
        ],
    )
}

fn in_ipc_ns_of(spec: &Spec, pid: u32) -> Spec {
    wrap(
        spec,
        &["nsenter", &format!("--ipc=/proc/{pid}/ns/ipc"), "--"],
    )
}

/// Runs `spec` in a new IPC namespace whose sysctl `name` (under
/// /proc/sys/kernel) is `value` first. The process keeps its pid through the
/// execs, so /proc/<pid>/ns/ipc names that namespace.
fn in_new_ipc_ns(spec: &Spec, name: &str, value: &str) -> Spec {
    let script = format!("echo {value} > /proc/sys/kernel/{name} && exec \"$@\"");
    wrap(spec, &["unshare", "--ipc", "--", "sh", "-c", &script, "sh"])
}

/// `key=value` of the first line of `text` starting with `prefix`.
fn field(text: &str, prefix: &str, key: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    kv(line, key).map(str::to_string)
}

fn lines_with(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .unwrap_or_else(|e| panic!("cannot read kernel.{name}: {e}"))
        .trim()
        .to_string()
}

/// The per-connection segment size at the default ring size.
const SEG_DEFAULT: u64 = 4096 + 2 * (256 << 10);

// ------------------------------------------------------------ segment table

#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    count: usize,
    bytes: u64,
    rss: u64,
}

/// Samples the segments created by `pid` until `stop`; returns the sample
/// with the most segments (and the largest resident size seen).
fn sample_segments(pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<Peak> {
    thread::spawn(move || {
        let mut peak = Peak::default();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(t) = std::fs::read_to_string("/proc/sysvipc/shm") {
                let mine: Vec<ShmRow> =
                    shm_rows(&t).into_iter().filter(|r| r.cpid == pid).collect();
                let bytes: u64 = mine.iter().map(|r| r.size).sum();
                let rss: u64 = mine.iter().map(|r| r.rss).sum();
                if mine.len() > peak.count {
                    peak.count = mine.len();
                    peak.bytes = bytes;
                }
                peak.rss = peak.rss.max(rss);
            }
            thread::sleep(Duration::from_millis(1));
        }
        peak
    })
}

// ------------------------------------------------------------ 1. scale

/// 1000 concurrent connections through one epoll loop (echo_server) and one
/// poll loop (echo_client), both with RLIMIT_NOFILE 4096 (1000 connections
/// do not fit the common default of 1024): every byte verified, every
/// connection accelerated on both sides, no segment left. The server's
/// segments are measured while they run (printed with --nocapture).
/// `min_live`: how many segments must be seen alive at once. In `et` mode the
/// server accepts until EAGAIN, so all 1000 are; in `lt` mode it accepts one
/// per wake-up and the first connections may finish before the last is
/// accepted.
fn thousand_connections(mode: &str, min_live: usize) {
    const N: usize = 1000;
    let _g = serial();
    need_root();
    let d = TempDir::new(&format!("k{mode}"));
    let sock = d.sock("e");
    let nofile = ["prlimit", "--nofile=4096:4096", "--"];
    let server = wrap(
        &Spec::app(
            "echo_server",
            "echo_server",
            &[&sock, mode, "--max-conns", &N.to_string()],
        )
        .preload(true),
        &nofile,
    );
    let client = wrap(
        &Spec::app(
            "echo_client",
            "echo_client",
            &[&sock, &N.to_string(), "200", "1024"],
        )
        .preload(true),
        &nofile,
    );
    let t0 = Instant::now();
    let mut s = Proc::spawn(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_segments(s.child.id(), stop.clone());
    wait_for_path(Path::new(&sock), &mut s);
    let mut c = Proc::spawn(&client);
    wait_all(&mut [&mut c, &mut s], T60, "1000 connections");
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let all = [&s, &c];
    assert_ok(&all);
    let n_s = count(&s.stderr(), "accelerated (server");
    let n_c = count(&c.stderr(), "accelerated (client");
    assert!(
        n_s == N && n_c == N,
        "{n_s} server and {n_c} client connections of {N} logged \"accelerated\"\n{}",
        reports(&all)
    );
    for p in all {
        assert_not_logs(p, "plain:", &all);
    }
    let ids = assert_segments_gone(&all);
    assert_eq!(ids.len(), N, "distinct shmids logged");
    assert!(
        peak.count >= min_live && peak.bytes == peak.count as u64 * SEG_DEFAULT,
        "segments of the server while running: {peak:?}, expected at least {min_live} of {SEG_DEFAULT} bytes"
    );
    eprintln!(
        "thousand_connections {mode}: {:.2?}; peak {} live segments, {} bytes \
         ({} per connection, {:.1} MiB per 1000 connections), {:.1} MiB resident",
        t0.elapsed(),
        peak.count,
        peak.bytes,
        peak.bytes / peak.count as u64,
        (peak.bytes / peak.count as u64 * 1000) as f64 / (1 << 20) as f64,
        peak.rss as f64 / (1 << 20) as f64,
    );
}

#[test]
fn thousand_connections_epoll_et() {
    thousand_connections("et", 1000);
}

#[test]
fn thousand_connections_epoll_lt() {
    thousand_connections("lt", 1);
}

// ------------------------------------------------------------ 2. segment limit

/// shmhog in a new IPC namespace, holding every segment but `free`.
/// Returns it (killed on drop) and the number it holds.
fn hog(free: usize) -> (Proc, usize) {
    let mut h = Proc::spawn(&Spec::new(
        "shmhog",
        "unshare",
        &["--ipc", "--", &bin_s("shmhog"), &free.to_string()],
    ));
    let reported = wait_for_line(&mut h, "RESULT", Duration::from_secs(20), |l| {
        l.contains("RESULT")
    });
    assert!(reported.is_ok(), "shmhog did not report\n{}", h.report());
    let out = h.stdout();
    let num = |k| -> usize {
        field(&out, "RESULT", k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("shmhog: no {k}=\n{}", h.report()))
    };
    let (held, shmmni) = (num("held"), num("shmmni"));
    // A fresh namespace has no segments: the hog reached kernel.shmmni.
    assert_eq!(held + free, shmmni, "shmhog\n{}", h.report());
    (h, held)
}

fn says_enospc(line: &str) -> bool {
    ["ENOSPC", "No space left on device", "os error 28"]
        .iter()
        .any(|e| line.contains(e))
}

/// The segment table of `pid`'s IPC namespace.
fn ns_segments(pid: u32) -> Vec<ShmRow> {
    let p = run_one(
        &Spec::new(
            "cat /proc/sysvipc/shm",
            "nsenter",
            &[
                &format!("--ipc=/proc/{pid}/ns/ipc"),
                "--",
                "cat",
                "/proc/sysvipc/shm",
            ],
        ),
        Duration::from_secs(10),
    );
    assert!(p.success(), "{}", p.report());
    shm_rows(&p.stdout())
}

/// Echo traffic in the hog's namespace: `conns` connections.
fn echo_in(hog: u32, test: &str, conns: usize) -> (Proc, Proc) {
    let d = TempDir::new(test);
    let sock = d.sock("e");
    let n = conns.to_string();
    run_pair(
        &in_ipc_ns_of(
            &Spec::app(
                "echo_server",
                "echo_server",
                &[&sock, "lt", "--max-conns", &n],
            )
            .preload(true),
            hog,
        ),
        &sock,
        &in_ipc_ns_of(
            &Spec::app("echo_client", "echo_client", &[&sock, &n, "100", "512"]).preload(true),
            hog,
        ),
        T60,
    )
}

/// Past kernel.shmmni no segment can be made: those connections must be
/// plain (not fail), byte-exact, and the server's log must give ENOSPC.
/// The hog exhausts a private IPC namespace (its shmmni is the kernel's
/// default, as on the host), so nothing else on the machine is affected.
#[test]
fn past_the_segment_limit_connections_stay_plain() {
    let _g = serial();
    need_root();
    eprintln!("host kernel.shmmni = {}", sysctl("shmmni"));

    // Not a single segment left: every connection plain, for that reason.
    let (h, _) = hog(0);
    let (s, c) = echo_in(h.child.id(), "shmmni0", 10);
    let all = [&s, &c];
    assert_ok(&all);
    let why = lines_with(&s.stderr(), "plain: cannot create segment");
    assert!(
        why.len() == 10 && why.iter().all(|l| says_enospc(l)),
        "expected 10 server lines \"plain: cannot create segment: <ENOSPC>\", got {why:#?}\n{}",
        reports(&all)
    );
    assert_not_logs(&s, "accelerated", &all);
    assert_not_logs(&c, "accelerated", &all);
    assert_eq!(count(&c.stderr(), "plain:"), 10, "{}", reports(&all));
    drop(h);

    // Three left: the first connections get them, the rest go plain.
    // (Offered, not accelerated: a connection whose 51 KiB fit the echo
    // client's window can end before the server confirms the attach.)
    let (h, held) = hog(3);
    let (s, c) = echo_in(h.child.id(), "shmmni3", 20);
    let all = [&s, &c];
    assert_ok(&all);
    let offered = count(&s.stderr(), "offered shmid");
    let why = lines_with(&s.stderr(), "plain:");
    assert!(
        offered >= 3 && !why.is_empty() && offered + why.len() == 20,
        "20 connections with 3 segments left: {offered} offered, plain: {why:#?}\n{}",
        reports(&all)
    );
    assert!(
        why.iter()
            .all(|l| l.contains("cannot create segment") && says_enospc(l)),
        "a plain connection without the ENOSPC reason: {why:#?}"
    );
    assert_eq!(
        count(&c.stderr(), "attached shmid"),
        offered,
        "{}",
        reports(&all)
    );
    // Nothing of the connections is left in the namespace: only the hog's.
    let left = ns_segments(h.child.id());
    assert_eq!(left.len(), held, "segments left in the namespace: {left:?}");
}

// ------------------------------------------------------------ 3. faults

/// pingpong (every echoed byte compared) with the given server and client,
/// which stay plain.
fn pingpong(
    test: &str,
    server: impl Fn(Spec) -> Spec,
    client: impl Fn(Spec, u32) -> Spec,
) -> (Proc, Proc) {
    pingpong_as(test, server, client, false)
}

/// [`pingpong`], both ends accelerated or both plain.
fn pingpong_as(
    test: &str,
    server: impl Fn(Spec) -> Spec,
    client: impl Fn(Spec, u32) -> Spec,
    accelerated: bool,
) -> (Proc, Proc) {
    let d = TempDir::new(test);
    let sock = d.sock("p");
    let mut s = Proc::spawn(&server(
        Spec::app("pingpong server", "pingpong", &["server", &sock]).preload(true),
    ));
    wait_for_path(Path::new(&sock), &mut s);
    let mut c = Proc::spawn(&client(
        Spec::app(
            "pingpong client",
            "pingpong",
            &["client", &sock, "64", "2000"],
        )
        .preload(true),
        s.child.id(),
    ));
    wait_all(&mut [&mut c, &mut s], T60, test);
    let all = [&s, &c];
    assert_ok(&all);
    if accelerated {
        assert_logs(&s, "accelerated", &all);
        assert_logs(&c, "accelerated", &all);
    } else {
        assert_not_logs(&s, "accelerated", &all);
        assert_not_logs(&c, "accelerated", &all);
    }
    assert_segments_gone(&all);
    (s, c)
}

fn assert_plain_because(p: &Proc, what: &str, errs: &[&str], all: &[&Proc]) {
    let why = lines_with(&p.stderr(), "plain:");
    assert!(
        why.len() == 1 && why[0].contains(what) && errs.iter().any(|e| why[0].contains(e)),
        "{}: expected one \"plain: {what}\" line with one of {errs:?}, got {why:#?}\n{}",
        p.spec.name,
        reports(all)
    );
}

const ENOMEM: &[&str] = &["ENOMEM", "Cannot allocate memory", "os error 12"];
const EINVAL: &[&str] = &["EINVAL", "Invalid argument", "os error 22"];
const AS_LIMIT: &str = "--as=67108864"; // 64 MiB, half of a 64M+64M segment

/// The client's address space cannot take the segment (RLIMIT_AS): shmat
/// fails with ENOMEM, the client refuses the offer, both stay plain.
#[test]
fn client_cannot_map_the_segment() {
    let _g = serial();
    need_root();
    let (s, c) = pingpong(
        "asclient",
        |s| s.env("TSSS_RING_SIZE", "64M"),
        |c, _| wrap(&c, &["prlimit", AS_LIMIT, "--"]),
    );
    let all = [&s, &c];
    assert_plain_because(&c, "shmat failed", ENOMEM, &all);
    assert_plain_because(&s, "closed before the client attached", &[""], &all);
}

/// The server's address space cannot take the segment it made: no offer.
#[test]
fn server_cannot_map_the_segment() {
    let _g = serial();
    need_root();
    let (s, c) = pingpong(
        "asserver",
        |s| {
            wrap(
                &s.env("TSSS_RING_SIZE", "64M"),
                &["prlimit", AS_LIMIT, "--"],
            )
        },
        |c, _| c,
    );
    let all = [&s, &c];
    assert_plain_because(&s, "cannot create segment", ENOMEM, &all);
    assert_plain_because(&c, "server does not run tsss", &[""], &all);
}

/// TSSS_RING_SIZE beyond kernel.shmmax: shmget fails with EINVAL.
#[test]
fn ring_larger_than_shmmax() {
    let _g = serial();
    need_root();
    let host = sysctl("shmmax");
    let (s, c) = pingpong(
        "shmmax",
        |s| in_new_ipc_ns(&s.env("TSSS_RING_SIZE", "1M"), "shmmax", "1048576"),
        |c, pid| in_ipc_ns_of(&c, pid),
    );
    let all = [&s, &c];
    assert_plain_because(&s, "cannot create segment", EINVAL, &all);
    assert_plain_because(&c, "server does not run tsss", &[""], &all);
    assert_eq!(sysctl("shmmax"), host, "the host's kernel.shmmax changed");
}

/// kernel.shmall (total shared memory, in pages) smaller than one segment:
/// shmget fails with ENOSPC.
#[test]
fn shared_memory_total_exhausted() {
    let _g = serial();
    need_root();
    let host = sysctl("shmall");
    let (s, c) = pingpong(
        "shmall",
        |s| in_new_ipc_ns(&s, "shmall", "64"),
        |c, pid| in_ipc_ns_of(&c, pid),
    );
    let all = [&s, &c];
    assert_plain_because(
        &s,
        "cannot create segment",
        &["ENOSPC", "No space left on device", "os error 28"],
        &all,
    );
    assert_plain_because(&c, "server does not run tsss", &[""], &all);
    assert_eq!(sysctl("shmall"), host, "the host's kernel.shmall changed");
}

/// The accepted connection takes the server's last descriptor (RLIMIT_NOFILE
/// 5: stdio, listener, connection). tsss needs none more for it: the
/// segment and the side page are mapped without one (the side page was a
/// memfd, and such a connection stayed plain).
#[test]
fn server_out_of_descriptors() {
    let _g = serial();
    need_root();
    pingpong_as(
        "nofileserver",
        |s| wrap(&s, &["prlimit", "--nofile=5:5", "--"]),
        |c, _| c,
        true,
    );
}

// ------------------------------------------------------------ 4. isolation

const PY_CLIENT: &str = r#"
import os, socket, sys, time
path, go = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
def echo(n, seed):
    data = bytes((i * seed + i // 251) & 255 for i in range(n))
    s.sendall(data)
    got = bytearray()
    while len(got) < n:
        b = s.recv(n - len(got))
        if not b:
            sys.exit("unexpected EOF after %d of %d bytes" % (len(got), n))
        got += b
    if bytes(got) != data:
        sys.exit("MISMATCH")
# Two exchanges: the first one's reply brings the offer, the second one's
# request lets the server confirm it.
echo(1000, 3)
echo(1000, 4)
while not os.path.exists(go):
    time.sleep(0.005)
echo(300000, 5)
s.close()
print("RESULT role=pyclient ok=1")
"#;

/// While a connection between `server_uid` and `client_uid` runs
/// accelerated, `third` may neither attach its segment (read-only or
/// read-write) nor read its state; the segment is 0600, created by the
/// server, owned by the client (granted) if the uids differ.
fn isolation(test: &str, server_uid: u32, client_uid: u32, third: u32) {
    let _g = serial();
    need_root();
    // The system's python: a per-user install (pyenv under /root) is not
    // reachable for the other uids.
    let py = "/usr/bin/python3";
    assert!(Path::new(py).is_file(), "{py} is not installed");
    let d = TempDir::new(test);
    std::fs::set_permissions(
        d.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let sock = d.sock("i");
    let go = d.path("go").to_string_lossy().into_owned();
    let mut s = Proc::spawn(&as_uid(
        &Spec::app(
            "echo_server",
            "echo_server",
            &[&sock, "lt", "--max-conns", "1"],
        )
        .preload(true),
        server_uid,
    ));
    wait_for_path(Path::new(&sock), &mut s);
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut c = Proc::spawn(&as_uid(
        &Spec::new("python client", py, &["-c", PY_CLIENT, &sock, &go]).preload(true),
        client_uid,
    ));
    let acc = wait_for_log(&mut c, "accelerated (client", Duration::from_secs(10))
        && wait_for_log(&mut s, "accelerated (server", Duration::from_secs(10));
    assert!(acc, "not accelerated\n{}", reports(&[&s, &c]));
    let ids = shmids_in(&c.stderr());
    assert_eq!(ids.len(), 1, "{}", reports(&[&s, &c]));
    let id = ids.first().unwrap().to_string();

    // The segment as root sees it.
    let st = run_one(
        &Spec::app("shmpeek (root)", "shmpeek", &[&id, "stat"]),
        Duration::from_secs(10),
    );
    let out = st.stdout();
    let get = |k| field(&out, "stat: ok", k).unwrap_or_else(|| panic!("{}", st.report()));
    assert_eq!(get("mode"), "600", "mode\n{out}");
    assert_eq!(get("dest"), "1", "marked for removal\n{out}");
    assert_eq!(get("size"), SEG_DEFAULT.to_string(), "size\n{out}");
    assert_eq!(get("cuid"), server_uid.to_string(), "creator\n{out}");
    assert_eq!(get("uid"), client_uid.to_string(), "owner\n{out}");

    // A third uid gets nothing.
    let p = run_one(
        &as_uid(&Spec::app("shmpeek (third uid)", "shmpeek", &[&id]), third),
        Duration::from_secs(10),
    );
    assert!(result_ok(&p), "{}", p.report());
    let out3 = p.stdout();
    for what in ["attach_ro", "attach_rw", "stat"] {
        let line = out3
            .lines()
            .find(|l| l.starts_with(&format!("{what}:")))
            .unwrap_or_else(|| panic!("no {what} line\n{}", p.report()));
        assert!(
            ["EACCES", "EINVAL", "EIDRM"]
                .iter()
                .any(|e| line == format!("{what}: errno={e}")),
            "uid {third} on the segment of a connection between uids {server_uid} and \
             {client_uid}: {line:?}\n{out3}"
        );
    }
    eprintln!(
        "{test}: segment {id}: {}; uid {third}: {}",
        out.lines().next().unwrap_or(""),
        out3.replace('\n', "; ")
    );

    std::fs::write(&go, b"").unwrap();
    wait_all(&mut [&mut c, &mut s], T60, test);
    let all = [&s, &c];
    assert_ok(&all);
    assert_segments_gone(&all);
}

/// Both peers root; nobody tries.
#[test]
fn third_uid_cannot_reach_the_segment() {
    isolation("iso-root", 0, 0, 65534);
}

/// Server root, client nobody (granted as owner); daemon (uid 1) tries.
#[test]
fn third_uid_cannot_reach_a_granted_segment() {
    isolation("iso-grant", 0, 65534, 1);
}

/// Neither peer privileged: server nobody, client daemon (uid 1, granted by
/// an unprivileged creator); bin (uid 2) tries.
#[test]
fn third_uid_cannot_reach_an_unprivileged_pair_segment() {
    isolation("iso-unpriv", 65534, 1, 2);
}

// ------------------------------------------------------------ 3b. descriptors

/// The client's socket takes its last descriptor (RLIMIT_NOFILE 4: stdio and
/// the socket). tsss needs none more for it (see server_out_of_descriptors).
#[test]
fn client_out_of_descriptors() {
    let _g = serial();
    need_root();
    pingpong_as(
        "nofileclient",
        |s| s,
        |c, _| wrap(&c, &["prlimit", "--nofile=4:4", "--"]),
        true,
    );
}

/// An epoll server at its descriptor limit: RLIMIT_NOFILE 7 is exactly
/// enough for stdio, the epoll set, the listener and two connections
/// without tsss (checked first). tsss needs one descriptor more per epoll
/// set that watches accelerated sockets (the private epoll nested in it;
/// README, Limits): with 8 the run works, every connection accelerated or
/// plain with the reason logged.
#[test]
fn epoll_server_at_its_descriptor_limit() {
    let _g = serial();
    need_root();
    for (preload, nofile) in [(false, "--nofile=7:7"), (true, "--nofile=8:8")] {
        let d = TempDir::new("nofileepoll");
        let sock = d.sock("e");
        let (s, c) = run_pair(
            &wrap(
                &Spec::app(
                    "echo_server",
                    "echo_server",
                    &[&sock, "lt", "--max-conns", "2"],
                )
                .preload(preload),
                &["prlimit", nofile, "--"],
            ),
            &sock,
            &Spec::app("echo_client", "echo_client", &[&sock, "2", "100", "512"]).preload(preload),
            T60,
        );
        let all = [&s, &c];
        assert_ok(&all);
        if preload {
            let n = count(&s.stderr(), "accelerated (server") + count(&s.stderr(), "plain:");
            assert_eq!(
                n,
                2,
                "each connection accelerated or plain with a reason\n{}",
                reports(&all)
            );
            assert_segments_gone(&all);
        }
    }
}

/// The registry's directory on a full file system (a full /run/user
/// tmpfs). Its file is sparse and mapped: a store into a page without
/// blocks raised SIGBUS in the program. Pages now get their blocks first;
/// on ENOSPC the entry is not written and the connection works on.
#[test]
fn registry_on_a_full_file_system() {
    let _g = serial();
    need_root();
    let d = TempDir::new("fullfs");
    let mnt = d.path("fs");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "cannot mount a tmpfs on {}", mnt.display());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let rt = mnt.join("rt");
    std::fs::create_dir(&rt).unwrap();
    // As much as fits: the rest fails with ENOSPC.
    let _ = std::fs::write(mnt.join("fill"), vec![0u8; 128 * 1024]);
    let rt = rt.to_string_lossy().into_owned();
    pingpong_as(
        "fullfs",
        |s| s.env("XDG_RUNTIME_DIR", &rt),
        |c, _| c.env("XDG_RUNTIME_DIR", &rt),
        true,
    );
}
