//! Real servers and their clients under tsss, both sides preloaded: nginx
//! (static files, sendfile, WebDAV PUT) and PostgreSQL (psql, pgbench; the
//! postmaster forks one backend per accepted connection and closes its copy).
//!
//! Prerequisites (the tests FAIL, not skip, without them): `make` (the shim)
//! and `make deps` (nginx, curl, postgresql; setpriv when run as root, since
//! PostgreSQL refuses to run as root: it then runs as `nobody`).
//!
//! Run: `cargo test --release --test real_programs`.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T30: Duration = Duration::from_secs(30);

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

/// Sends `sig` to the process `p` (not its group).
fn signal(p: &Proc, sig: i32) {
    let pid = p.child.id() as libc::pid_t;
    // SAFETY: plain kill(2) of a child we started and have not reaped.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}) failed");
}

/// Signals `p` to stop and waits for it; false if it did not exit in time
/// (it is then killed with its process group).
fn stop(p: &mut Proc, sig: i32, timeout: Duration) -> bool {
    if !p.poll() {
        signal(p, sig);
    }
    let exited = p.wait_until(Instant::now() + timeout);
    if !exited {
        p.kill();
    }
    exited
}

/// The lines of `text` that contain any of `needles`.
fn lines_with(text: &str, needles: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Compares a downloaded file with what was served, with a useful message.
fn check_same(what: &str, got: &Path, want: &[u8], all: &[&Proc]) {
    let g = std::fs::read(got).unwrap_or_else(|e| {
        panic!(
            "{what}: cannot read {}: {e}\n{}",
            got.display(),
            reports(all)
        )
    });
    assert!(
        g == want,
        "{what}: {} bytes, expected {}{}\n{}",
        g.len(),
        want.len(),
        match g.iter().zip(want).position(|(a, b)| a != b) {
            Some(i) => format!(", first difference at byte {i}"),
            None => String::new(),
        },
        reports(all)
    );
}

// ------------------------------------------------------------------ nginx

/// A private nginx: configuration, pid, temp paths and sockets all in one
/// temporary directory; one master (running as the test's user) and one
/// worker (as `nobody` when the test runs as root).
struct Nginx {
    d: TempDir,
    www: PathBuf,
}

impl Nginx {
    /// `servers`: the `upstream`/`server` blocks of the http block, where
    /// `@D@` stands for the temporary directory.
    fn new(test: &str, servers: &str) -> Nginx {
        assert!(have_cmd("nginx"), "nginx is not installed: run `make deps`");
        assert!(have_cmd("curl"), "curl is not installed: run `make deps`");
        let d = TempDir::new(test);
        chmod(&d.0, 0o755);
        let www = d.path("www");
        std::fs::create_dir(&www).unwrap();
        let dav = d.path("dav");
        std::fs::create_dir(&dav).unwrap();
        // The worker may run as nobody: it writes uploads here.
        chmod(&dav, 0o777);
        let dir = d.0.to_string_lossy().into_owned();
        let conf = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid {dir}/nginx.pid;\n\
             error_log stderr notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             access_log off;\n\
             default_type application/octet-stream;\n\
             sendfile off;\n\
             client_body_temp_path {dir}/tmp-body;\n\
             proxy_temp_path {dir}/tmp-proxy;\n\
             fastcgi_temp_path {dir}/tmp-fastcgi;\n\
             uwsgi_temp_path {dir}/tmp-uwsgi;\n\
             scgi_temp_path {dir}/tmp-scgi;\n\
             {}\n\
             }}\n",
            servers.replace("@D@", &dir)
        );
        std::fs::write(d.path("nginx.conf"), conf).unwrap();
        Nginx { d, www }
    }

    fn file(&self, name: &str, data: &[u8]) {
        let p = self.www.join(name);
        std::fs::write(&p, data).unwrap();
        chmod(&p, 0o644);
    }

    fn start(&self, listen: &str) -> Proc {
        let dir = self.d.0.to_string_lossy().into_owned();
        let conf = self.d.path("nginx.conf").to_string_lossy().into_owned();
        let mut p = Proc::spawn(
            &Spec::new("nginx", "nginx", &["-e", "stderr", "-p", &dir, "-c", &conf]).preload(true),
        );
        wait_for_path(&self.d.path(listen), &mut p);
        p
    }

    /// Graceful shutdown (SIGQUIT to the master); asserts a clean exit.
    fn stop(&self, p: &mut Proc, all: &[&Proc]) {
        let exited = stop(p, libc::SIGQUIT, Duration::from_secs(10));
        assert!(
            exited && p.success(),
            "nginx did not exit cleanly within 10 s of SIGQUIT\n{}\n{}",
            p.report(),
            reports(all)
        );
    }

    /// curl over the Unix socket `sock`: `args` then, for each (path,
    /// output file), that URL into that file. One connection, kept alive.
    /// Prints "<code> <bytes> <new connections>" per transfer.
    fn curl(&self, name: &str, sock: &str, args: &[&str], gets: &[(&str, &Path)]) -> Proc {
        let mut a: Vec<String> = [
            "-sS",
            "--fail-early",
            "--max-time",
            "20",
            "--unix-socket",
            sock,
            "-w",
            "%{http_code} %{size_download} %{num_connects}\\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(args.iter().map(|s| s.to_string()));
        for (path, out) in gets {
            a.push("-o".into());
            a.push(out.to_string_lossy().into_owned());
            a.push(format!("http://localhost{path}"));
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_one(&Spec::new(name, "curl", &a).preload(true), T30)
    }
}

/// `curl -w` lines: each transfer must have `code`; returns (bytes, new
/// connections) per transfer.
fn transfers(c: &Proc, code: &str, n: usize, all: &[&Proc]) -> Vec<(usize, usize)> {
    assert!(c.success(), "{} failed\n{}", c.spec.name, reports(all));
    let out = c.stdout();
    let v: Vec<(usize, usize)> = out
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert!(
                w.len() == 3 && w[0] == code,
                "{}: transfer {l:?}, expected HTTP {code}\n{}",
                c.spec.name,
                reports(all)
            );
            (w[1].parse().unwrap(), w[2].parse().unwrap())
        })
        .collect();
    assert_eq!(
        v.len(),
        n,
        "{}: {} transfers reported, expected {n}\n{}",
        c.spec.name,
        v.len(),
        reports(all)
    );
    v
}

/// No nginx message of level error or worse, no connection of the shim's
/// left plain.
fn assert_nginx_clean(ngx: &Proc, clients: &[&Proc], all: &[&Proc]) {
    let bad = lines_with(
        &ngx.stderr(),
        &["[error]", "[crit]", "[alert]", "[emerg]", "plain:"],
    );
    assert!(bad.is_empty(), "nginx logged {bad:#?}\n{}", reports(all));
    for c in clients {
        assert_not_logs(c, "plain:", all);
    }
}

/// nginx serves static files to curl: an 8 MiB random file with
/// `sendfile off` (read + writev) and with `sendfile on`, a few small ones,
/// all on one kept-alive connection, then an 8 MiB WebDAV PUT upload on
/// another. Every byte is compared; both connections must be accelerated on
/// both sides.
#[test]
fn nginx_static_files_and_upload() {
    let ngx = Nginx::new(
        "nginx",
        "server {\n\
             listen unix:@D@/ngx.sock;\n\
             root @D@/www;\n\
             location /sf/ { alias @D@/www/; sendfile on; }\n\
             location /dav/ { root @D@; dav_methods PUT; client_max_body_size 64m; }\n\
         }",
    );
    let big = random_bytes(8 << 20, 21);
    let smalls: Vec<Vec<u8>> = [0usize, 1, 1000, 100_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| random_bytes(n, 30 + i as u64))
        .collect();
    ngx.file("big.bin", &big);
    for (i, s) in smalls.iter().enumerate() {
        ngx.file(&format!("s{i}.bin"), s);
    }
    let upload = random_bytes(8 << 20, 22);
    let up_in = ngx.d.path("upload.bin");
    std::fs::write(&up_in, &upload).unwrap();

    let sock = ngx.d.sock("ngx.sock");
    let mut s = ngx.start("ngx.sock");

    let put = ngx.curl(
        "curl PUT",
        &sock,
        &[
            "-T",
            &up_in.to_string_lossy(),
            "http://localhost/dav/up.bin",
        ],
        &[],
    );
    let out = |n: &str| ngx.d.path(n);
    let mut gets: Vec<(String, PathBuf)> = vec![
        ("/big.bin".into(), out("o-big")),
        ("/sf/big.bin".into(), out("o-sf-big")),
        ("/dav/up.bin".into(), out("o-up")),
    ];
    for i in 0..smalls.len() {
        gets.push((format!("/s{i}.bin"), out(&format!("o-s{i}"))));
        gets.push((format!("/sf/s{i}.bin"), out(&format!("o-sf-s{i}"))));
    }
    let g: Vec<(&str, &Path)> = gets
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_path()))
        .collect();
    let get = ngx.curl("curl GET (keep-alive)", &sock, &[], &g);
    ngx.stop(&mut s, &[&put, &get]);
    let all = [&s, &put, &get];

    transfers(&put, "201", 1, &all);
    let t = transfers(&get, "200", gets.len(), &all);
    let conns: usize = t.iter().map(|x| x.1).sum();
    assert_eq!(
        conns,
        1,
        "curl opened {conns} connections for {} transfers, expected 1 (keep-alive)\n{}",
        t.len(),
        reports(&all)
    );
    check_same(
        "uploaded file on disk",
        &ngx.d.path("dav/up.bin"),
        &upload,
        &all,
    );
    check_same("GET /big.bin", &out("o-big"), &big, &all);
    check_same("GET /sf/big.bin (sendfile)", &out("o-sf-big"), &big, &all);
    check_same("GET /dav/up.bin", &out("o-up"), &upload, &all);
    for (i, want) in smalls.iter().enumerate() {
        check_same(
            &format!("GET /s{i}.bin"),
            &out(&format!("o-s{i}")),
            want,
            &all,
        );
        check_same(
            &format!("GET /sf/s{i}.bin (sendfile)"),
            &out(&format!("o-sf-s{i}")),
            want,
            &all,
        );
    }

    assert_nginx_clean(&s, &[&put, &get], &all);
    for c in [&put, &get] {
        assert_eq!(
            count(&c.stderr(), "accelerated (client"),
            1,
            "{}: expected one accelerated client connection\n{}",
            c.spec.name,
            reports(&all)
        );
    }
    assert_eq!(
        count(&s.stderr(), "accelerated (server"),
        2,
        "nginx: expected two accelerated server connections\n{}",
        reports(&all)
    );
    assert_eq!(assert_segments_gone(&all).len(), 2);
}

/// nginx as a reverse proxy: the front server passes /up/ to an upstream
/// server (same nginx) on another Unix socket, with upstream keep-alive.
/// Both hops (curl -> nginx, nginx -> nginx) must be accelerated and every
/// byte of an 8 MiB file and some small ones must come through.
#[test]
fn nginx_reverse_proxy_to_unix_upstream() {
    let ngx = Nginx::new(
        "nginxproxy",
        "upstream backend { server unix:@D@/up.sock; keepalive 4; }\n\
         server {\n\
             listen unix:@D@/front.sock;\n\
             location /up/ {\n\
                 proxy_pass http://backend/;\n\
                 proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n\
             }\n\
         }\n\
         server { listen unix:@D@/up.sock; root @D@/www; }",
    );
    let big = random_bytes(8 << 20, 41);
    let small = random_bytes(3000, 42);
    ngx.file("big.bin", &big);
    ngx.file("small.bin", &small);
    let sock = ngx.d.sock("front.sock");
    let mut s = ngx.start("front.sock");
    wait_for_path(&ngx.d.path("up.sock"), &mut s);
    let out = |n: &str| ngx.d.path(n);
    let get = ngx.curl(
        "curl GET via proxy",
        &sock,
        &[],
        &[
            ("/up/small.bin", &out("o1")),
            ("/up/big.bin", &out("o2")),
            ("/up/small.bin", &out("o3")),
            ("/up/big.bin", &out("o4")),
        ],
    );
    ngx.stop(&mut s, &[&get]);
    let all = [&s, &get];
    transfers(&get, "200", 4, &all);
    check_same("GET /up/small.bin", &out("o1"), &small, &all);
    check_same("GET /up/big.bin", &out("o2"), &big, &all);
    check_same("GET /up/small.bin (again)", &out("o3"), &small, &all);
    check_same("GET /up/big.bin (again)", &out("o4"), &big, &all);
    assert_nginx_clean(&s, &[&get], &all);
    assert_logs(&get, "accelerated (client", &all);
    // nginx is the client of the upstream hop and the server of both.
    assert_logs(&s, "accelerated (client", &all);
    let ns = count(&s.stderr(), "accelerated (server");
    assert!(
        ns >= 2,
        "nginx: {ns} accelerated server connections, expected at least 2 (curl's, its own upstream's)\n{}",
        reports(&all)
    );
    assert!(!assert_segments_gone(&all).is_empty());
}

// ------------------------------------------------------------------ PostgreSQL

/// /usr/lib/postgresql/<highest version>/bin (Debian), else `pg_config --bindir`.
fn pg_bindir() -> PathBuf {
    let has_all = |d: &Path| {
        ["postgres", "initdb", "psql", "pgbench"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v: Option<u32> = e.file_name().to_str().and_then(|s| s.parse().ok());
            let bin = e.path().join("bin");
            if let Some(v) = v
                && has_all(&bin)
                && best.as_ref().is_none_or(|(b, _)| v > *b)
            {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, b)) = best {
        return b;
    }
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output();
    if let Ok(o) = out {
        let b = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if has_all(&b) {
            return b;
        }
    }
    panic!("PostgreSQL (postgres, initdb, psql, pgbench) is not installed: run `make deps`");
}

/// PostgreSQL refuses to run as root: then the server side runs as nobody.
fn as_pg_user(name: &str, prog: &Path, args: &[&str]) -> Spec {
    let prog = prog.to_string_lossy().into_owned();
    if is_root() {
        assert!(
            have_cmd("setpriv"),
            "setpriv (util-linux) is needed to run PostgreSQL as nobody: run `make deps`"
        );
        let mut a = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            prog.as_str(),
        ];
        a.extend_from_slice(args);
        Spec::new(name, "setpriv", &a)
    } else {
        Spec::new(name, prog, args)
    }
    .env("LC_ALL", "C")
    .preload(true)
    .other_user()
}

/// PostgreSQL with its socket in a temporary directory, no TCP. psql creates
/// a table, inserts a 1 MiB value in one statement and reads it back;
/// `pgbench -i` loads its tables (COPY); `pgbench -S` runs 4 clients for
/// 3 s, then `pgbench -S -C` opens a new connection per transaction (one
/// forked backend each). Every connection must be accelerated on both sides,
/// without errors, and the server must shut down cleanly.
#[test]
fn postgres_psql_and_pgbench() {
    let bin = pg_bindir();
    let d = TempDir::new("pg");
    if is_root() {
        std::os::unix::fs::chown(&d.0, Some(65534), Some(65534)).expect("chown temp dir to nobody");
    }
    chmod(&d.0, 0o755);
    let dir = d.0.to_string_lossy().into_owned();
    let data_dir = d.path("data").to_string_lossy().into_owned();

    let initdb = run_one(
        &as_pg_user(
            "initdb",
            &bin.join("initdb"),
            &[
                "-D",
                &data_dir,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        ),
        T30,
    );
    assert!(initdb.success(), "initdb failed\n{}", initdb.report());

    let mut s = Proc::spawn(&as_pg_user(
        "postgres",
        &bin.join("postgres"),
        &[
            "-D",
            &data_dir,
            "-k",
            &dir,
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "max_connections=20",
        ],
    ));
    assert!(
        wait_for_log(&mut s, "ready to accept connections", T30),
        "postgres did not become ready\n{}",
        s.report()
    );

    let conn = ["-h", dir.as_str(), "-U", "postgres"];
    let psql = |name: &str, args: &[&str]| {
        let mut a = vec!["-X", "-q", "-v", "ON_ERROR_STOP=1"];
        a.extend_from_slice(&conn);
        a.extend_from_slice(&["-d", "postgres"]);
        a.extend_from_slice(args);
        run_one(&Spec::new(name, bin.join("psql"), &a).preload(true), T30)
    };
    let pgbench = |name: &str, args: &[&str]| {
        let mut a: Vec<&str> = conn.to_vec();
        a.extend_from_slice(args);
        a.push("postgres");
        run_one(&Spec::new(name, bin.join("pgbench"), &a).preload(true), T30)
    };

    // 1 MiB of [0-9a-z] in one INSERT, then read back whole.
    let value: String = random_bytes(1 << 20, 51)
        .iter()
        .map(|b| char::from_digit(u32::from(*b) % 36, 36).unwrap())
        .collect();
    let sql = d.path("insert.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE big (id int PRIMARY KEY, v text);\n\
             INSERT INTO big VALUES (1, '{value}');\n"
        ),
    )
    .unwrap();
    let mut clients = vec![
        psql(
            "psql CREATE + INSERT 1 MiB",
            &["-f", &sql.to_string_lossy()],
        ),
        psql(
            "psql SELECT length",
            &["-At", "-c", "SELECT length(v) FROM big WHERE id = 1"],
        ),
        psql(
            "psql SELECT 1 MiB",
            &["-At", "-c", "SELECT v FROM big WHERE id = 1"],
        ),
        pgbench("pgbench -i", &["-i", "-s", "1", "-q"]),
        pgbench(
            "pgbench -S -c 4",
            &["-S", "-n", "-T", "3", "-c", "4", "-j", "2"],
        ),
        pgbench(
            "pgbench -S -C -c 2",
            &["-S", "-n", "-C", "-T", "1", "-c", "2"],
        ),
    ];
    let stopped = stop(&mut s, libc::SIGINT, Duration::from_secs(15));
    let all: Vec<&Proc> = std::iter::once(&s)
        .chain(std::iter::once(&initdb))
        .chain(clients.iter())
        .collect();
    assert!(
        stopped && s.success(),
        "postgres did not shut down cleanly within 15 s of SIGINT\n{}",
        reports(&all)
    );
    for c in &clients {
        assert!(c.success(), "{} failed\n{}", c.spec.name, reports(&all));
    }
    assert_eq!(
        clients[1].stdout().trim(),
        "1048576",
        "length of the stored value\n{}",
        reports(&all)
    );
    let got = clients[2].stdout();
    assert!(
        got.strip_suffix('\n') == Some(value.as_str()),
        "SELECT v: {} bytes, expected {} + newline{}\n{}",
        got.len(),
        value.len(),
        match got.bytes().zip(value.bytes()).position(|(a, b)| a != b) {
            Some(i) => format!(", first difference at byte {i}"),
            None => String::new(),
        },
        reports(&all)
    );

    // pgbench: transactions done, none failed.
    let processed = |p: &Proc| -> usize {
        let out = p.stdout();
        assert!(
            out.contains("number of failed transactions: 0"),
            "{}: failed transactions\n{}",
            p.spec.name,
            reports(&all)
        );
        out.lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no transaction count\n{}", p.spec.name, reports(&all)))
    };
    let n_s = processed(&clients[4]);
    let n_c = processed(&clients[5]);
    assert!(
        n_s >= 100,
        "pgbench -S: only {n_s} transactions\n{}",
        reports(&all)
    );
    assert!(
        n_c >= 10,
        "pgbench -C: only {n_c} transactions\n{}",
        reports(&all)
    );
    eprintln!(
        "pgbench -S -c 4: {}",
        clients[4]
            .stdout()
            .lines()
            .find(|l| l.starts_with("tps"))
            .unwrap_or("")
    );

    // Every client connection accelerated, and served by an accelerated
    // backend; nothing plain, no server-side error.
    let mut client_conns = 0;
    for c in &clients {
        let n = count(&c.stderr(), "accelerated (client");
        assert!(
            n >= 1,
            "{}: no accelerated connection\n{}",
            c.spec.name,
            reports(&all)
        );
        assert_not_logs(c, "plain:", &all);
        client_conns += n;
    }
    assert!(
        count(&clients[5].stderr(), "accelerated (client") >= n_c,
        "pgbench -C: fewer accelerated connections than transactions ({n_c})\n{}",
        reports(&all)
    );
    let server_conns = count(&s.stderr(), "accelerated (server");
    assert_eq!(
        server_conns,
        client_conns,
        "postgres backends accelerated {server_conns} connections, clients {client_conns}\n{}",
        reports(&all)
    );
    let bad = lines_with(
        &s.stderr(),
        &[
            "ERROR:",
            "FATAL:",
            "PANIC:",
            "terminated by signal",
            "unexpected EOF",
            "could not receive data",
            "could not send data",
            "plain:",
        ],
    );
    assert!(
        bad.is_empty(),
        "postgres logged {bad:#?}\n{}",
        reports(&all)
    );
    assert_logs(&s, "database system is shut down", &all);
    clients.push(initdb);
    let mut all: Vec<&Proc> = clients.iter().collect();
    all.push(&s);
    assert!(!assert_segments_gone(&all).is_empty());
}
