//! `tsss stat`: the live connections of the registry, with the byte
//! counters of their segments.
//!
//! Everything read here is untrusted: another user's directory or file (as
//! root), a file a crashed or hostile process left, a segment whose id was
//! reused. Each problem is one warning line, never a crash, and no entry
//! can make us read another user's segment or speak for another user's
//! process.

use crate::StatArgs;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tsss_core::conn::Role;
use tsss_core::os::lock;
use tsss_core::registry::{self, ENTRY_SIZE, HEADER_SIZE, MAX_FILE_SIZE, State, Transport};
use tsss_core::shm::peek;

#[derive(Serialize, Clone, Debug)]
pub struct Conn {
    pub pid: i32,
    pub command: String,
    pub uid: u32,
    pub fd: i32,
    pub role: &'static str,
    pub peer_pid: Option<i32>,
    pub transport: &'static str,
    pub address: String,
    /// accelerated, negotiating or plain.
    pub state: &'static str,
    pub reason: Option<String>,
    pub shmid: Option<i32>,
    /// Ring sizes of the directions we write and read.
    pub ring_tx: Option<u32>,
    pub ring_rx: Option<u32>,
    /// Bytes waiting in each ring.
    pub fill_tx: Option<u64>,
    pub fill_rx: Option<u64>,
    /// Bytes this end wrote and read, socket and ring together.
    pub bytes_written: Option<u64>,
    pub bytes_read: Option<u64>,
    pub since_unix_ns: u64,
    pub age_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_rate: Option<f64>,
}

#[derive(Serialize, Default)]
pub struct Snapshot {
    pub connections: Vec<Conn>,
    pub warnings: Vec<String>,
}

pub fn main(a: StatArgs) -> ExitCode {
    let Some(every) = a.watch else {
        let s = collect(&a.pid);
        show(&s, &a, false);
        return ExitCode::SUCCESS;
    };
    let mut prev: HashMap<(i32, i32, u64), (u64, u64, Instant)> = HashMap::new();
    let tty = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let mut s = collect(&a.pid);
        let now = Instant::now();
        let mut next = HashMap::new();
        for c in &mut s.connections {
            let key = (c.pid, c.fd, c.since_unix_ns);
            let (w, r) = (c.bytes_written.unwrap_or(0), c.bytes_read.unwrap_or(0));
            if let Some(&(pw, pr, t)) = prev.get(&key) {
                let dt = now.duration_since(t).as_secs_f64().max(1e-3);
                c.write_rate = Some(w.saturating_sub(pw) as f64 / dt);
                c.read_rate = Some(r.saturating_sub(pr) as f64 / dt);
            }
            next.insert(key, (w, r, now));
        }
        prev = next;
        if tty && !a.json {
            print!("\x1b[H\x1b[2J");
        } else if !first && !a.json {
            println!();
        }
        first = false;
        show(&s, &a, true);
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs_f64(every));
    }
}

fn show(s: &Snapshot, a: &StatArgs, watching: bool) {
    for w in &s.warnings {
        eprintln!("tsss: warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = serde_json::to_writer(&mut out, s);
        let _ = writeln!(out);
        return;
    }
    let _ = out.write_all(render(&s.connections, watching).as_bytes());
    let _ = out.flush();
}

/// The table, one line per connection.
pub fn render(conns: &[Conn], rates: bool) -> String {
    let mut head = vec![
        "PID", "COMMAND", "FD", "ROLE", "PEER", "ADDRESS", "RING", "FILL", "WRITTEN", "READ", "AGE",
    ];
    if rates {
        head.extend(["WRITE/s", "READ/s"]);
    }
    head.push("STATE");
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            let mut r = vec![
                c.pid.to_string(),
                c.command.clone(),
                c.fd.to_string(),
                c.role.to_string(),
                c.peer_pid.map_or_else(dash, |p| p.to_string()),
                if c.address.is_empty() {
                    dash()
                } else {
                    c.address.clone()
                },
                match (c.ring_tx, c.ring_rx) {
                    (Some(t), Some(r)) if t == r => size(u64::from(t)),
                    (Some(t), Some(r)) => format!("{}/{}", size(u64::from(t)), size(u64::from(r))),
                    _ => dash(),
                },
                match (c.fill_tx, c.fill_rx) {
                    (Some(t), Some(r)) => format!("{t}/{r}"),
                    _ => dash(),
                },
                c.bytes_written.map_or_else(dash, |b| b.to_string()),
                c.bytes_read.map_or_else(dash, |b| b.to_string()),
                age(c.age_seconds),
            ];
            if rates {
                r.push(c.write_rate.map_or_else(dash, rate));
                r.push(c.read_rate.map_or_else(dash, rate));
            }
            r.push(match &c.reason {
                Some(why) => format!("{}: {why}", c.state),
                None => c.state.to_string(),
            });
            r
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<0$} ", w[i]));
            }
        }
        s.push('\n');
    };
    line(&mut s, head.clone());
    for r in &rows {
        line(&mut s, r.iter().map(String::as_str).collect());
    }
    s
}

fn size(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

fn rate(r: f64) -> String {
    match r {
        r if r >= 1e9 => format!("{:.1}G", r / 1e9),
        r if r >= 1e6 => format!("{:.1}M", r / 1e6),
        r if r >= 1e3 => format!("{:.1}K", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn age(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The registry directories to read, each with the uid that must own it.
fn directories(me: u32) -> Vec<(PathBuf, u32)> {
    let mut v = Vec::new();
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        v.push((PathBuf::from(x).join(registry::XDG_SUBDIR), me));
    }
    v.push((
        PathBuf::from(format!("/run/user/{me}/{}", registry::XDG_SUBDIR)),
        me,
    ));
    v.push((PathBuf::from(format!("{}{me}", registry::TMP_PREFIX)), me));
    if me == 0 {
        // Everyone's: /tmp/tsss-<uid> and /run/user/<uid>/tsss.
        let tmp_name = registry::TMP_PREFIX.trim_start_matches("/tmp/");
        for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let n = e.file_name();
            if let Some(uid) = n
                .to_str()
                .and_then(|n| n.strip_prefix(tmp_name))
                .and_then(|u| u.parse::<u32>().ok())
            {
                v.push((e.path(), uid));
            }
        }
        for e in std::fs::read_dir("/run/user")
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(uid) = e.file_name().to_str().and_then(|u| u.parse::<u32>().ok()) {
                v.push((e.path().join(registry::XDG_SUBDIR), uid));
            }
        }
    }
    v
}

/// Reads every registry directory we may read.
pub fn collect(pids: &[i32]) -> Snapshot {
    let me = rustix::process::geteuid().as_raw();
    let mut snap = Snapshot::default();
    let mut seen = HashSet::new();
    for (path, owner) in directories(me) {
        let dir = match rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(d) => d,
            Err(Errno::NOENT) => continue,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                snap.warnings.push(format!(
                    "{}: a symlink or not a directory: ignored",
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                snap.warnings
                    .push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        let Ok(st) = rustix::fs::fstat(&dir) else {
            continue;
        };
        if !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        if st.st_uid != owner || st.st_mode & 0o077 != 0 {
            snap.warnings.push(format!(
                "{}: not a private directory of uid {owner} (owner {}, mode {:o}): ignored",
                path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ));
            continue;
        }
        read_dir(&dir, &path, owner, pids, &mut snap);
    }
    snap.connections.sort_by_key(|c| (c.pid, c.fd));
    snap
}

fn read_dir(dir: &OwnedFd, path: &Path, owner: u32, pids: &[i32], snap: &mut Snapshot) {
    let names: Vec<std::ffi::CString> = match rustix::fs::Dir::read_from(dir) {
        Ok(d) => d
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| registry::is_file_name(n.to_bytes()))
            .collect(),
        Err(e) => {
            snap.warnings
                .push(format!("cannot list {}: {e}", path.display()));
            return;
        }
    };
    for name in names {
        let text = name.to_string_lossy().into_owned();
        let pid: i32 = text
            .split('.')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if !pids.is_empty() && !pids.contains(&pid) {
            continue;
        }
        let shown = path.join(&text);
        if let Err(w) = read_file(dir.as_fd(), &name, pid, owner, snap) {
            snap.warnings.push(format!("{}: {w}", shown.display()));
        }
    }
}

fn read_file(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    pid: i32,
    owner: u32,
    snap: &mut Snapshot,
) -> Result<(), String> {
    let (f, st) = open_file(dir, name, owner)?;
    if !lock::held(f.as_fd()).unwrap_or(true) {
        return Err(sweep_stale(dir, name, &f, pid));
    }
    let mut data = vec![0u8; st.st_size as usize];
    let n = read_at(&f, &mut data, 0);
    data.truncate(n);
    let h = registry::decode_header(&data).map_err(|e| format!("header: {e}"))?;
    check_header(&h, pid, owner)?;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    check_process(&proc, pid, owner, &mut snap.warnings)?;
    let command = command_name(&proc, &h);
    read_records(&f, &data, pid, &command, owner, snap);
    if h.unlisted > 0 {
        snap.warnings.push(format!(
            "pid {pid}: {} connections on descriptors >= {} are not listed",
            h.unlisted,
            registry::SLOTS
        ));
    }
    Ok(())
}

/// Opens a registry file, if it is a regular file of `owner` of at most
/// a registry file's size.
fn open_file(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    owner: u32,
) -> Result<(OwnedFd, rustix::fs::Stat), String> {
    // Read-only, never following a link, never blocking (a FIFO).
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let f = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => "a symlink: ignored".to_string(),
        e => format!("cannot open: {e}"),
    })?;
    let st = rustix::fs::fstat(&f).map_err(|e| format!("cannot stat: {e}"))?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err("not a regular file: ignored".into());
    }
    if st.st_uid != owner {
        return Err(format!("owned by uid {}, not {owner}: ignored", st.st_uid));
    }
    if st.st_size as u64 > MAX_FILE_SIZE {
        return Err(format!(
            "{} bytes, larger than a registry file: ignored",
            st.st_size
        ));
    }
    Ok((f, st))
}

/// No process holds the file (it exited, or exec'd a program without
/// tsss connections): sweep it, as registering processes do. Our read
/// lock keeps a process from taking the name meanwhile. Returns the
/// warning to show.
fn sweep_stale(dir: BorrowedFd<'_>, name: &std::ffi::CStr, f: &OwnedFd, pid: i32) -> String {
    let gone = lock::try_read_lock(f.as_fd()).is_ok()
        && registry::same_file(dir, name, f)
        && rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok();
    if gone {
        format!("process {pid} is gone; removed its stale file")
    } else {
        format!("process {pid} is gone (stale file, not removed)")
    }
}

/// The header must be written by the process and user the file is named
/// and filed for.
fn check_header(h: &registry::FileHeader, pid: i32, owner: u32) -> Result<(), String> {
    if h.pid != pid {
        return Err(format!(
            "named for pid {pid} but written by pid {}: ignored",
            h.pid
        ));
    }
    if h.uid != owner {
        return Err(format!(
            "written by uid {}, in uid {owner}'s directory: ignored",
            h.uid
        ));
    }
    Ok(())
}

/// The pid must be a process of the file's owner: a file cannot speak
/// for another user's process.
fn check_process(
    proc: &Path,
    pid: i32,
    owner: u32,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    match std::fs::metadata(proc) {
        Ok(m) if std::os::unix::fs::MetadataExt::uid(&m) != owner => {
            return Err(format!(
                "pid {pid} is a process of uid {}, not {owner}: ignored",
                std::os::unix::fs::MetadataExt::uid(&m)
            ));
        }
        Ok(_) => {}
        Err(_) => warnings.push(format!(
            "pid {pid} is not visible here (another pid namespace?); listed as its file says"
        )),
    }
    Ok(())
}

/// The process's name from /proc, or else as the file recorded it.
fn command_name(proc: &Path, h: &registry::FileHeader) -> String {
    std::fs::read_to_string(proc.join("comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_else(|_| {
            let end = h.comm.iter().position(|&c| c == 0).unwrap_or(h.comm.len());
            String::from_utf8_lossy(&h.comm[..end]).into_owned()
        })
}

/// The connections of the file's slots.
fn read_records(
    f: &OwnedFd,
    data: &[u8],
    pid: i32,
    command: &str,
    owner: u32,
    snap: &mut Snapshot,
) {
    let now = realtime_ns();
    let slots = data.len().saturating_sub(HEADER_SIZE) / ENTRY_SIZE;
    for slot in 0..slots {
        match decode_slot(f, data, slot) {
            Ok(Some(r)) => {
                snap.connections
                    .push(connection(pid, command, owner, &r, now, &mut snap.warnings))
            }
            Ok(None) => {}
            Err(e) => snap.warnings.push(format!("pid {pid}: slot {slot}: {e}")),
        }
    }
}

fn decode_slot(
    f: &OwnedFd,
    data: &[u8],
    slot: usize,
) -> Result<Option<registry::Record>, registry::FormatError> {
    let at = HEADER_SIZE + slot * ENTRY_SIZE;
    match registry::decode_record(slot, &data[at..at + ENTRY_SIZE]) {
        Ok(r) => Ok(r),
        Err(_) => {
            // Maybe torn by a write racing our read: once more.
            let mut b = [0u8; ENTRY_SIZE];
            read_at(f, &mut b, at as u64);
            registry::decode_record(slot, &b)
        }
    }
}

fn read_at(f: &OwnedFd, buf: &mut [u8], mut off: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::pread(f, &mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    n
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn connection(
    pid: i32,
    command: &str,
    owner: u32,
    r: &registry::Record,
    now: u64,
    warnings: &mut Vec<String>,
) -> Conn {
    let (tx, rx) = match r.role {
        Role::Client => (0, 1),
        Role::Server => (1, 0),
    };
    let mut c = Conn {
        pid,
        command: command.to_string(),
        uid: owner,
        fd: r.fd,
        role: match r.role {
            Role::Client => "client",
            Role::Server => "server",
        },
        peer_pid: (r.peer_pid > 0).then_some(r.peer_pid),
        transport: match r.transport {
            Transport::Path => "unix",
            Transport::Abstract => "unix-abstract",
            Transport::Unnamed => "unix-unnamed",
            Transport::Unknown => "unix?",
        },
        address: match r.transport {
            Transport::Abstract => format!("@{}", printable(r.addr())),
            _ => printable(r.addr()),
        },
        state: match r.state {
            State::Accelerated => "accelerated",
            State::Negotiating => "negotiating",
            State::Plain => "plain",
        },
        reason: (r.state == State::Plain).then(|| printable(r.reason())),
        shmid: (r.shmid >= 0 && r.state != State::Plain).then_some(r.shmid),
        ring_tx: None,
        ring_rx: None,
        fill_tx: None,
        fill_rx: None,
        bytes_written: None,
        bytes_read: None,
        since_unix_ns: r.since_ns,
        age_seconds: now.saturating_sub(r.since_ns) as f64 / 1e9,
        write_rate: None,
        read_rate: None,
    };
    if let Some(id) = c.shmid {
        match peek::read(id, owner, r.caps, r.nonce) {
            Ok(s) => {
                c.ring_tx = Some(r.caps[tx]);
                c.ring_rx = Some(r.caps[rx]);
                c.fill_tx = Some(s[tx].fill());
                c.fill_rx = Some(s[rx].fill());
                c.bytes_written = s[tx].written();
                c.bytes_read = Some(s[rx].read());
            }
            Err(e) => warnings.push(format!("pid {pid} fd {}: {e}", r.fd)),
        }
    }
    c
}

/// Text from an untrusted file, safe to print on a terminal: control
/// characters are escaped.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(size(256 << 10), "256K");
        assert_eq!(size(4 << 20), "4M");
        assert_eq!(age(75.0), "1m15s");
        assert_eq!(age(7200.0), "2h00m");
        assert_eq!(printable(b"a\x1b[2Jb"), "a\\u{1b}[2Jb");
    }
}
