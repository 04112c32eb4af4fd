//! Crash matrix: kill -9 one end of a connection at random moments and
//! check what the other end, the survivor, sees.
//!
//! Both ends run test-apps/victim under LD_PRELOAD. Every stream is a
//! deterministic pattern whose receiver checks each byte against its
//! position, so the bytes a survivor got before the crash must be an exact
//! prefix of what was sent. For every run:
//!   - the survivor reports EOF, EPIPE or ECONNRESET (in the connect phase
//!     also ECONNREFUSED, or NOCONN for a server whose client died before
//!     connecting) and exits, within `DETECT_LIMIT` of the kill (or of the
//!     moment it resumes reading, for a reader that was stalled or
//!     stopped), measured with CLOCK_MONOTONIC on both sides;
//!   - no byte it received was wrong;
//!   - where the phase is past negotiation, both ends logged "accelerated"
//!     before the kill;
//!   - after both are gone, no segment they logged and none they created
//!     (creator pid in /proc/sysvipc/shm) is left.
//!
//! After the whole matrix no segment created by any of its processes is left
//! either (compared with `live_shmids()` before).
//!
//! SIGPIPE: the survivor ignores it (victim's default), so that a write to a
//! dead peer is reported as EPIPE with the time and byte counts. A quarter of
//! the runs keep SIGPIPE's default action instead; a survivor that then dies
//! of SIGPIPE counts as outcome SIGPIPE (detected at its exit).
//!
//! Phases (each run draws its parameters from a seeded RNG):
//!   connect   kill 0 us..30 ms after the client starts (half of them in
//!             0..2.5 ms): before, during or just after connect and
//!             negotiation;
//!   stream    bulk transfer, either direction, killed writer or reader;
//!   pingpong  round trips, killed pinger or echoer;
//!   fullring  once accelerated, the reader stops reading (stall, on
//!             SIGUSR2) and the writer blocks on the full ring (inside one
//!             write() for 50 ms after the stall); then kill the writer
//!             (the reader resumes and must read at least everything the
//!             writer reported written, then EOF or ECONNRESET) or the
//!             reader (the blocked writer must notice);
//!   stopped   SIGSTOP the reader mid-stream; kill the writer then SIGCONT
//!             the reader (drain as above), or kill the stopped reader.
//!
//! Reproduce: the seed is printed at the start and with every failure;
//! `CRASH_SEED=<seed> [CRASH_RUN=<i>[,<j>...]] cargo test --release --test
//! crash -- --nocapture`. CRASH_THREADS sets the concurrency (default 3).

mod common;
use common::*;

use rustix::process::{Pid, Signal, kill_process};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The survivor must have seen the end of the connection by then.
const DETECT_LIMIT: Duration = Duration::from_secs(3);
/// Reaching a phase (start-up, 2 MiB of data, negotiation) under load.
const PHASE_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connect,
    Stream,
    PingPong,
    FullRing,
    Stopped,
}

const PLAN: [(Phase, usize); 5] = [
    (Phase::Connect, 60),
    (Phase::Stream, 50),
    (Phase::PingPong, 40),
    (Phase::FullRing, 35),
    (Phase::Stopped, 40),
];

// ------------------------------------------------------------------ rng

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    /// Log-uniform in [lo, hi].
    fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let u = self.below(1 << 20) as f64 / f64::from(1u32 << 20);
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        (a + u * (b - a)).exp().round() as u64
    }
}

// ------------------------------------------------------------------ cases

#[derive(Clone, Debug)]
struct Case {
    idx: usize,
    phase: Phase,
    /// Pattern seed (also seeds the victims' read/write sizes).
    seed: u64,
    server_role: &'static str,
    client_role: &'static str,
    kill_server: bool,
    ring: Option<&'static str>,
    spin: Option<&'static str>,
    chunk: u64,
    rbuf: u64,
    /// Bytes (stream roles) or round trips (ping) before "PHASE running".
    phase_at: u64,
    /// The reader stalls on SIGUSR2 (fullring).
    stall: bool,
    sigpipe_default: bool,
    /// Kill this long after the phase point (connect: after the client
    /// was spawned).
    delay_us: u64,
    /// stopped: running -> SIGSTOP; fullring: running -> stall.
    stop_us: u64,
    /// fullring/stopped with the writer killed: kill -> resume the reader.
    resume_us: u64,
}

fn make_case(master: u64, idx: usize, phase: Phase) -> Case {
    let seed = splitmix(master ^ splitmix(idx as u64 + 1));
    let mut r = Rng(seed);
    let kill_server = r.chance(1, 2);
    let (server_role, client_role) = match phase {
        Phase::Connect => r.pick(&[
            ("read", "write"),
            ("write", "read"),
            ("echo", "ping"),
            ("ping", "echo"),
        ]),
        Phase::Stream | Phase::FullRing | Phase::Stopped => {
            r.pick(&[("read", "write"), ("write", "read")])
        }
        Phase::PingPong => r.pick(&[("echo", "ping"), ("ping", "echo")]),
    };
    let ring = r.pick(&[None, Some("4K"), Some("64K"), Some("256K"), Some("1M")]);
    // TSSS_SPIN_US=0 is left out: it aborts the reader (conn.rs `spin`:
    // `clamp(1000, 0)` panics), which is no crash-handling matter.
    let spin = r.pick(&[None, Some("1"), Some("200")]);
    let (mut chunk, rbuf) = if phase == Phase::PingPong || server_role == "echo" {
        (
            r.pick(&[1, 64, 1000, 4096, 100_000]),
            r.pick(&[13, 4096, 65536]),
        )
    } else {
        (
            r.pick(&[7, 100, 4096, 65536, 1 << 20]),
            r.pick(&[1, 13, 4096, 65536, 1 << 20]),
        )
    };
    if rbuf == 13 {
        chunk = chunk.min(4096);
    }
    // A pinger writes its whole message before it reads the echo: a
    // message larger than the ring would deadlock by design (the echoer
    // blocks writing back), as it would with small kernel buffers.
    let ring_bytes = match ring {
        Some("4K") => 4 << 10,
        Some("64K") => 64 << 10,
        _ => 256 << 10,
    };
    if server_role == "ping" || client_role == "ping" {
        chunk = chunk.min(ring_bytes);
    }
    let phase_at = match phase {
        Phase::PingPong => r.range(10, 300),
        Phase::Stream | Phase::Stopped => r.range(64 << 10, 2 << 20),
        Phase::FullRing => r.range(512 << 10, 2 << 20),
        Phase::Connect => 1 << 20,
    };
    let stall = phase == Phase::FullRing;
    let sigpipe_default = r.chance(1, 4);
    let delay_us = match phase {
        // Start-up, connect and negotiation take about 0.3..3 ms here.
        Phase::Connect => match r.below(10) {
            0 => 0,
            1..=5 => r.range(0, 2_500),
            _ => r.log_range(5, 30_000),
        },
        _ if r.chance(1, 5) => 0,
        _ => r.range(0, 30_000),
    };
    let stop_us = r.range(0, 20_000);
    let resume_us = r.range(0, 50_000);
    Case {
        idx,
        phase,
        seed,
        server_role,
        client_role,
        kill_server,
        ring,
        spin,
        chunk,
        rbuf,
        phase_at,
        stall,
        sigpipe_default,
        delay_us,
        stop_us,
        resume_us,
    }
}

fn plan(master: u64) -> Vec<Case> {
    let mut phases: Vec<Phase> = PLAN
        .iter()
        .flat_map(|&(p, n)| std::iter::repeat_n(p, n))
        .collect();
    // Interleave the phases (Fisher-Yates), so that concurrent runs mix.
    let mut r = Rng(master ^ 0x5eed);
    for i in (1..phases.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        phases.swap(i, j);
    }
    phases
        .into_iter()
        .enumerate()
        .map(|(i, p)| make_case(master, i, p))
        .collect()
}

// ------------------------------------------------------------------ helpers

fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn pid_of(p: &Proc) -> Pid {
    Pid::from_raw(p.child.id() as i32).expect("child pid")
}

/// Sends `sig` to the process; returns the CLOCK_MONOTONIC time just before.
fn signal(p: &Proc, sig: Signal) -> u64 {
    let t = mono_ns();
    let _ = kill_process(pid_of(p), sig);
    t
}

/// The number `key=N` of a line.
fn field(line: &str, key: &str) -> Option<u64> {
    kv(line, key)?.parse().ok()
}

/// Waits for `p`'s `PHASE <name>` line and returns it.
fn wait_phase(p: &mut Proc, name: &str) -> Result<String, String> {
    let prefix = format!("PHASE {name}");
    wait_for_line(p, name, PHASE_LIMIT, |l| l.starts_with(&prefix))
}

/// The highest `sent=` a writer reported: a lower bound of what it had
/// completely written before it was killed.
fn max_sent(p: &Proc) -> u64 {
    p.stdout()
        .lines()
        .filter(|l| l.starts_with("PHASE "))
        .filter_map(|l| field(l, "sent"))
        .max()
        .unwrap_or(0)
}

/// The segments of /proc/sysvipc/shm by shmid.
fn shm_by_id() -> BTreeMap<i64, ShmRow> {
    shm_table().into_iter().map(|r| (r.shmid, r)).collect()
}

/// Segments logged by `ps` or created by them that still exist (after a
/// short grace period), with why they count; the id is given where one of
/// `ps` created it and nothing is attached (ours to remove).
fn leaked(ps: &[&Proc]) -> Vec<(Option<i64>, String)> {
    let logged = shmids_of(ps);
    let pids: BTreeSet<u32> = ps.iter().map(|p| p.child.id()).collect();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let live = live_shmids();
        let table = shm_by_id();
        let mut left: Vec<(Option<i64>, String)> = logged
            .intersection(&live)
            .filter(|id| !table.get(id).is_some_and(|r| pids.contains(&r.cpid)))
            .map(|id| (None, format!("shmid {id} (logged)")))
            .collect();
        for (&id, &ShmRow { cpid, nattch, .. }) in &table {
            if pids.contains(&cpid) {
                left.push((
                    (nattch == 0).then_some(id),
                    format!(
                        "shmid {id} (created by pid {cpid}, nattch {nattch}{})",
                        if logged.contains(&id) {
                            ", logged"
                        } else {
                            ", never logged"
                        }
                    ),
                ));
            }
        }
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a process is doing, for a hang report.
fn diagnose(p: &Proc) -> String {
    let pid = p.child.id();
    let mut s = format!("pid {pid}:");
    for f in ["wchan", "stat", "syscall"] {
        let v = std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        s.push_str(&format!("\n  {f}: {}", v.trim()));
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let tp = t.path();
            let w = std::fs::read_to_string(tp.join("wchan")).unwrap_or_default();
            let st = std::fs::read_to_string(tp.join("stack")).unwrap_or_default();
            s.push_str(&format!(
                "\n  task {}: wchan {w}\n{}",
                t.file_name().to_string_lossy(),
                st.lines().map(|l| format!("    {l}\n")).collect::<String>()
            ));
        }
    }
    s
}

// ------------------------------------------------------------------ one run

#[derive(Clone, Debug)]
struct RunResult {
    idx: usize,
    phase: Phase,
    /// Kill delay (see `Case::delay_us`).
    delay_us: u64,
    /// "server write" etc.: who was killed.
    killed: String,
    outcome: String,
    /// Kill (or resume) to the survivor's report; None for NOCONN.
    detect: Option<Duration>,
    /// Kill (or resume) to the survivor's exit, as seen by the test.
    exit: Duration,
    /// How far the connection had got (connect phase).
    stage: &'static str,
    got: u64,
}

fn victim_spec(c: &Case, side: &str, role: &str, sock: &str) -> Spec {
    let mut args = vec![
        side.to_string(),
        sock.to_string(),
        role.to_string(),
        format!("seed={}", c.seed),
        format!("chunk={}", c.chunk),
        format!("rbuf={}", c.rbuf),
        format!("phase={}", c.phase_at),
    ];
    if c.stall && role == "read" {
        args.push("stall=1".into());
    }
    if c.sigpipe_default {
        args.push("sigpipe=1".into());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Spec::app(&format!("victim {side} {role}"), "victim", &a).preload(true);
    if let Some(r) = c.ring {
        s = s.env("TSSS_RING_SIZE", r);
    }
    if let Some(v) = c.spin {
        s = s.env("TSSS_SPIN_US", v);
    }
    s
}

fn accelerated(ps: &mut [Proc; 2]) -> Result<(), String> {
    for p in ps.iter_mut() {
        if !wait_for_log(p, "accelerated", Duration::from_secs(5)) {
            return Err(format!(
                "{} did not log \"accelerated\" before the kill: the run would prove nothing",
                p.spec.name
            ));
        }
    }
    Ok(())
}

fn stage_of(ps: &[Proc; 2]) -> &'static str {
    let err = |p: &Proc| p.stderr();
    let out = |p: &Proc| p.stdout();
    if ps.iter().any(|p| err(p).contains("accelerated")) {
        "accelerated"
    } else if ps.iter().any(|p| err(p).contains("offered shmid")) {
        "offered"
    } else if ps
        .iter()
        .any(|p| out(p).contains("PHASE accepted") || out(p).contains("PHASE connected"))
    {
        "connected"
    } else {
        "not connected"
    }
}

fn run_case(c: &Case, pids: &Mutex<BTreeSet<u32>>) -> Result<RunResult, String> {
    let d = TempDir::new(&format!("crash{}", c.idx));
    let sock = d.sock("s");
    let mut s = Proc::spawn(&victim_spec(c, "server", c.server_role, &sock));
    pids.lock().unwrap().insert(s.child.id());
    wait_phase(&mut s, "listening").map_err(|e| format!("{e}\n{}", s.report()))?;
    assert!(Path::new(&sock).exists());
    let cl = Proc::spawn(&victim_spec(c, "client", c.client_role, &sock));
    let t_spawn = Instant::now();
    pids.lock().unwrap().insert(cl.child.id());
    let mut ps = [s, cl];
    let r = drive(c, &mut ps, t_spawn);
    for p in ps.iter_mut() {
        p.kill();
    }
    let all = [&ps[0], &ps[1]];
    let left = leaked(&all);
    // Reported below; remove what our own processes created, so that a
    // failing run leaves no garbage on the machine.
    for id in left.iter().filter_map(|(id, _)| *id) {
        let _ = std::process::Command::new("ipcrm")
            .args(["-m", &id.to_string()])
            .status();
    }
    let leak = || {
        let why: Vec<&String> = left.iter().map(|(_, why)| why).collect();
        format!("LEAK: segments left after both processes exited: {why:?}")
    };
    match r {
        Ok(r) if left.is_empty() => Ok(r),
        Ok(_) => Err(format!("{}\n{}", leak(), reports(&all))),
        Err(e) if left.is_empty() => Err(format!("{e}\n{}", reports(&all))),
        Err(e) => Err(format!("{e}\n{}\n{}", leak(), reports(&all))),
    }
}

/// Brings the pair to the case's phase, kills, checks the survivor.
fn drive(c: &Case, ps: &mut [Proc; 2], t_spawn: Instant) -> Result<RunResult, String> {
    let (v, sv) = if c.kill_server { (0, 1) } else { (1, 0) };
    let role = |i: usize| if i == 0 { c.server_role } else { c.client_role };
    let reader = if c.server_role == "read" { 0 } else { 1 };
    let writer = 1 - reader;
    let us = |n: u64| Duration::from_micros(n);
    let mut nudged = false;

    // `start`: when the survivor had every reason to notice (the kill, or
    // its own resumption).
    let (start_ns, start_at) = match c.phase {
        Phase::Connect => {
            thread::sleep(us(c.delay_us).saturating_sub(t_spawn.elapsed()));
            let t = signal(&ps[v], Signal::KILL);
            let at = Instant::now();
            ps[v].kill();
            if v == 1 && !ps[0].stdout().contains("PHASE accepted") {
                // The client is gone: whatever it connected is queued now;
                // a server still in accept() must give up if nothing is.
                let _ = kill_process(pid_of(&ps[0]), Signal::USR2);
                nudged = true;
            }
            (t, at)
        }
        Phase::Stream | Phase::PingPong => {
            let w = if c.phase == Phase::Stream {
                reader
            } else if c.server_role == "ping" {
                0
            } else {
                1
            };
            wait_phase(&mut ps[w], "running")?;
            accelerated(ps)?;
            thread::sleep(us(c.delay_us));
            let t = signal(&ps[v], Signal::KILL);
            (t, Instant::now())
        }
        Phase::FullRing => {
            // Stall only once the connection runs over the ring: a reader
            // that stops early can leave a big writer blocked in a plain
            // kernel write() that never switches.
            wait_phase(&mut ps[reader], "running")?;
            accelerated(ps)?;
            thread::sleep(us(c.stop_us));
            signal(&ps[reader], Signal::USR2);
            let stalled = wait_phase(&mut ps[reader], "stalled")?;
            let t_stall = field(&stalled, "t").unwrap_or(0);
            // Inside one write() for 50 ms while the reader was stalled.
            wait_for_line(&mut ps[writer], "blocked", PHASE_LIMIT, |l| {
                l.starts_with("PHASE blocked")
                    && field(l, "now").is_some_and(|n| n >= t_stall + 50_000_000)
            })?;
            accelerated(ps)?;
            thread::sleep(us(c.delay_us));
            let t = signal(&ps[v], Signal::KILL);
            let at = Instant::now();
            if v == writer {
                ps[v].kill();
                thread::sleep(us(c.resume_us));
                (signal(&ps[reader], Signal::USR1), Instant::now())
            } else {
                (t, at)
            }
        }
        Phase::Stopped => {
            wait_phase(&mut ps[reader], "running")?;
            accelerated(ps)?;
            thread::sleep(us(c.stop_us));
            signal(&ps[reader], Signal::STOP);
            thread::sleep(us(c.delay_us));
            let t = signal(&ps[v], Signal::KILL);
            let at = Instant::now();
            if v == writer {
                ps[v].kill();
                thread::sleep(us(c.resume_us));
                (signal(&ps[reader], Signal::CONT), Instant::now())
            } else {
                (t, at)
            }
        }
    };

    // The survivor must end by itself.
    let deadline = start_at + DETECT_LIMIT;
    while !ps[sv].poll() {
        if Instant::now() >= deadline {
            let diag = diagnose(&ps[sv]);
            return Err(format!(
                "HANG: the survivor ({} {}) did not exit within {DETECT_LIMIT:?} after the kill \
                 of the {} {}\n{diag}",
                if sv == 0 { "server" } else { "client" },
                role(sv),
                if v == 0 { "server" } else { "client" },
                role(v),
            ));
        }
        thread::sleep(Duration::from_micros(500));
    }
    let exit = start_at.elapsed();
    ps[v].kill();
    // An exit with a status printed its RESULT line first; the collector
    // thread may lag behind under load: wait for the line, not for quiet.
    let drained = Instant::now() + Duration::from_secs(2);
    while ps[sv].status.is_some_and(|s| s.code().is_some())
        && !ps[sv].stdout().contains("RESULT ")
        && Instant::now() < drained
    {
        thread::sleep(Duration::from_millis(2));
    }
    ps[sv].wait_until(Instant::now());
    for p in ps.iter() {
        if p.stdout().contains("MISMATCH") || p.stderr().contains("MISMATCH") {
            return Err(format!("CORRUPTION: {} received a wrong byte", p.spec.name));
        }
    }
    let vs = ps[v].status.expect("victim reaped");
    if vs.signal() != Some(9) {
        return Err(format!(
            "the victim {} ended with {vs:?} before it was killed",
            ps[v].spec.name
        ));
    }
    let st = ps[sv].status.expect("survivor exited");
    let out = ps[sv].stdout();
    let result = out.lines().find(|l| l.starts_with("RESULT "));
    let (outcome, detect, got) = match (st.signal(), result) {
        (Some(13), _) if c.sigpipe_default => ("SIGPIPE".to_string(), Some(exit), 0),
        (None, Some(l)) if st.success() && l.contains(" ok=1") => {
            let t = field(l, "t").ok_or("RESULT without t=")?;
            let o = kv(l, "outcome").unwrap_or("?").to_string();
            let detect = (o != "NOCONN").then(|| Duration::from_nanos(t.saturating_sub(start_ns)));
            (o, detect, field(l, "got").unwrap_or(0))
        }
        _ => {
            return Err(format!(
                "the survivor {} ended with {st:?}, result {result:?}",
                ps[sv].spec.name
            ));
        }
    };
    let mut allowed = vec!["EOF", "EPIPE", "ECONNRESET"];
    if c.sigpipe_default {
        allowed.push("SIGPIPE");
    }
    if c.phase == Phase::Connect {
        allowed.push("ECONNREFUSED");
        if nudged {
            allowed.push("NOCONN");
        }
    }
    if !allowed.contains(&outcome.as_str()) {
        return Err(format!(
            "the survivor {} saw {outcome}, expected one of {allowed:?}",
            ps[sv].spec.name
        ));
    }
    if let Some(d) = detect
        && d > DETECT_LIMIT
    {
        return Err(format!(
            "SLOW: the survivor {} saw {outcome} only {d:?} after the kill (limit {DETECT_LIMIT:?})",
            ps[sv].spec.name
        ));
    }
    // A reader whose writer died must still get every byte that writer
    // had completely written (it is in the ring, which the reader maps).
    if sv == reader && matches!(c.phase, Phase::FullRing | Phase::Stopped) {
        let sent = max_sent(&ps[writer]);
        if got < sent || !matches!(outcome.as_str(), "EOF" | "ECONNRESET") {
            return Err(format!(
                "LOST DATA: the writer had written at least {sent} bytes, the reader got {got} \
                 then {outcome}"
            ));
        }
    }
    Ok(RunResult {
        idx: c.idx,
        phase: c.phase,
        delay_us: c.delay_us,
        killed: format!("{} {}", if v == 0 { "server" } else { "client" }, role(v)),
        outcome,
        detect,
        exit,
        stage: stage_of(ps),
        got,
    })
}

// ------------------------------------------------------------------ the matrix

fn master_seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) if !s.is_empty() => {
            let s = s.trim();
            let v = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            v.unwrap_or_else(|_| panic!("CRASH_SEED={s}: not a number"))
        }
        _ => splitmix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id()),
        ),
    }
}

fn fmt_d(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn stats(ds: &mut [Duration]) -> String {
    if ds.is_empty() {
        return "-".into();
    }
    ds.sort();
    format!(
        "median {} max {} (n={})",
        fmt_d(ds[ds.len() / 2]),
        fmt_d(ds[ds.len() - 1]),
        ds.len()
    )
}

fn summary(results: &[RunResult]) {
    println!("\ncrash matrix summary ({} runs):", results.len());
    let phases: BTreeSet<Phase> = results.iter().map(|r| r.phase).collect();
    for ph in phases {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.phase == ph).collect();
        let mut killed: BTreeMap<&str, usize> = BTreeMap::new();
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        let mut stages: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rs {
            *killed.entry(&r.killed).or_default() += 1;
            *outcomes.entry(&r.outcome).or_default() += 1;
            *stages.entry(r.stage).or_default() += 1;
        }
        let mut det: Vec<Duration> = rs.iter().filter_map(|r| r.detect).collect();
        let mut ex: Vec<Duration> = rs.iter().map(|r| r.exit).collect();
        let got: u64 = rs.iter().map(|r| r.got).sum();
        println!("  {ph:?}: {} runs", rs.len());
        println!("    killed:    {killed:?}");
        println!("    outcomes:  {outcomes:?}");
        if ph == Phase::Connect {
            println!("    stage at kill: {stages:?}");
        }
        println!("    detection: {}", stats(&mut det));
        println!("    exit:      {}", stats(&mut ex));
        println!("    bytes verified by survivors: {got}");
    }
    let mut det: Vec<Duration> = results.iter().filter_map(|r| r.detect).collect();
    let mut ex: Vec<Duration> = results.iter().map(|r| r.exit).collect();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in results {
        *outcomes.entry(&r.outcome).or_default() += 1;
    }
    println!("  all: outcomes {outcomes:?}");
    let mut slow: Vec<&RunResult> = results.iter().filter(|r| r.detect.is_some()).collect();
    slow.sort_by_key(|r| std::cmp::Reverse(r.detect));
    for r in slow.iter().take(3) {
        println!(
            "  slow: run {} {:?}, delay {} us, killed {}, {} after {} (stage {})",
            r.idx,
            r.phase,
            r.delay_us,
            r.killed,
            r.outcome,
            fmt_d(r.detect.unwrap_or_default()),
            r.stage
        );
    }
    println!("  all: survivor detection time {}", stats(&mut det));
    println!("  all: survivor exit time      {}", stats(&mut ex));
}

#[test]
fn crash_matrix() {
    matrix("crash matrix", false);
}

/// The same runs while a CPU-bound process runs on every core: a survivor
/// competes for the CPU with them (once, one was still running 5 s after
/// its peer's kill in such a run).
#[test]
fn crash_matrix_with_busy_cpus() {
    matrix("crash matrix, every CPU busy", true);
}

/// One matrix at a time: the busy one would slow the other down.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn matrix(name: &str, busy: bool) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    // Dropped (killed with their process groups) when the matrix ends.
    let _busy: Vec<Proc> = (0..if busy { cpus } else { 0 })
        .map(|i| {
            Proc::spawn(&Spec::new(
                &format!("busy loop {i}"),
                "sh",
                &["-c", "while :; do :; done"],
            ))
        })
        .collect();
    let _ = lib();
    let _ = bin("victim");
    let master = master_seed();
    let only: Option<BTreeSet<usize>> = std::env::var("CRASH_RUN")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().parse().expect("CRASH_RUN: run numbers"))
                .collect()
        });
    let threads: usize = std::env::var("CRASH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let verbose = std::env::var_os("CRASH_VERBOSE").is_some();
    let cases: Vec<Case> = plan(master)
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.contains(&c.idx)))
        .filter(|c| {
            std::env::var("CRASH_PHASE")
                .is_ok_and(|p| !p.is_empty())
                .then(|| std::env::var("CRASH_PHASE").unwrap())
                .is_none_or(|p| format!("{:?}", c.phase).eq_ignore_ascii_case(&p))
        })
        .collect();
    println!(
        "{name}: seed {master:#x}, {} runs, {threads} threads \
         (reproduce: CRASH_SEED={master:#x} [CRASH_RUN=i])",
        cases.len()
    );

    let before = live_shmids();
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let pids = Mutex::new(BTreeSet::new());
    let results = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = cases.get(i) else { break };
                    match run_case(c, &pids) {
                        Ok(r) => {
                            if verbose {
                                println!(
                                    "run {} {:?} delay {} us, killed {}: {} after {:?} (stage {}, got {}, chunk {} rbuf {} ring {:?})",
                                    c.idx,
                                    c.phase,
                                    c.delay_us,
                                    r.killed,
                                    r.outcome,
                                    r.detect,
                                    r.stage,
                                    r.got,
                                    c.chunk,
                                    c.rbuf,
                                    c.ring
                                );
                            }
                            results.lock().unwrap().push(r)
                        }
                        Err(e) => {
                            println!("run {} FAILED: {}", c.idx, e.lines().next().unwrap_or(""));
                            failures.lock().unwrap().push(format!(
                                "run {} (CRASH_SEED={master:#x} CRASH_RUN={}) {c:?}\n{e}",
                                c.idx, c.idx
                            ));
                        }
                    }
                }
            });
        }
    });
    let took = t0.elapsed();
    let results = results.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    summary(&results);
    println!(
        "  runtime {:.1} s, {} runs ok, {} failed",
        took.as_secs_f64(),
        results.len(),
        failures.len()
    );

    // Nothing of ours may be left. Segments of other concurrent users come
    // and go; wait for the transient ones.
    let pids = pids.into_inner().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mine, other) = loop {
        let new: BTreeSet<i64> = live_shmids().difference(&before).copied().collect();
        let table = shm_by_id();
        let (mine, other): (Vec<i64>, Vec<i64>) = new
            .iter()
            .partition(|id| table.get(id).is_some_and(|r| pids.contains(&r.cpid)));
        if new.is_empty() || Instant::now() >= deadline {
            break (mine, other);
        }
        thread::sleep(Duration::from_millis(50));
    };
    println!(
        "  segments: {} before, new after the matrix: {} of ours, {} of other processes",
        before.len(),
        mine.len(),
        other.len()
    );
    if !failures.is_empty() || !mine.is_empty() {
        panic!(
            "{} of {} crash runs failed, {} segments of the matrix's processes left {mine:?} \
             (seed {master:#x}); the first failures:\n\n{}",
            failures.len(),
            cases.len(),
            mine.len(),
            failures
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
    assert!(
        took < Duration::from_secs(120),
        "the matrix took {took:?}, more than 2 minutes"
    );
}

/// The checker itself: a reader expecting another pattern must report
/// MISMATCH (so a clean matrix means the bytes were right).
#[test]
fn victim_detects_corruption() {
    let d = TempDir::new("crashneg");
    let sock = d.sock("s");
    let mut s = Proc::spawn(
        &Spec::app(
            "victim server read",
            "victim",
            &["server", &sock, "read", "seed=1"],
        )
        .preload(true),
    );
    wait_phase(&mut s, "listening").unwrap();
    let mut c = Proc::spawn(
        &Spec::app(
            "victim client write",
            "victim",
            &["client", &sock, "write", "seed=2"],
        )
        .preload(true),
    );
    wait_all(&mut [&mut s], Duration::from_secs(20), "corrupt reader");
    c.kill();
    let all = [&s, &c];
    assert_eq!(
        s.status.and_then(|st| st.code()),
        Some(1),
        "{}",
        reports(&all)
    );
    assert!(
        s.stdout().lines().any(|l| l.starts_with("RESULT ")
            && l.contains("outcome=MISMATCH")
            && l.ends_with(" ok=0")),
        "{}",
        reports(&all)
    );
    assert_segments_gone(&all);
}
