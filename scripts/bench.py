#!/usr/bin/env python3
"""tsss benchmark driver (Python 3 standard library only).

    python3 scripts/bench.py [--quick] [--out bench-results]
                             [--lib target/release/libtsss.so]
                             [--bin test-apps/bin] [--repeats R]
                             [--cases stream,pingpong,syscall,pipe,file,pubsub,
                                      webcache,redis,socat,ringsize,nginx,
                                      postgres,limit,startup,busy,load,conns]
                             [--plain-only] [--timeout 120]

Runs every case plain and with LD_PRELOAD=<lib> on BOTH client and server,
interleaved (plain/tsss alternate, the order flips every repeat), R times
each (default 5, --quick 2), and reports medians (pipe/file: the best of 9
runs per mode, since they measure the preload's overhead, which noise
only ever inflates):

  * stream    throughput, message sizes 16 B .. 1 MiB   (GB/s and M msg/s)
  * pingpong  round-trip time, 16 B .. 16 KiB           (median and p99, us)
  * pipe/file throughput through non-socket fds          (GB/s)
  * webcache  file cache server (boss + 4 worker threads) and a client with
              8 keep-alive connections fetching 20 files of 1 KiB..4 MiB
              (test-apps/webcache; size column = connections)
                                                         (req/s and GB/s)
  * redis     redis-benchmark -c 50 against redis-server on a Unix socket,
              geometric mean over set,get,incr,lpush,lpop, without and with
              -P 16 pipelining (size column = clients); SKIPPED when
              redis-server / redis-benchmark are not installed   (req/s)
  * socat     a 200 MiB file through socat -u UNIX-LISTEN / UNIX-CONNECT,
              wall time, output compared with the input; SKIPPED when
              socat is not installed                     (GB/s)
  * ringsize  TSSS_RING_SIZE 16K .. 4M (size column): stream throughput at
              64 B, 4 KiB and 64 KiB messages and ping-pong RTT at 64 B and
              16 KiB (plain ignores the variable: same-time baseline)
  * nginx     one curl fetches a 64 MiB file 16 times over one keep-alive
              connection from nginx (sendfile on) on a Unix socket; size
              column = file size; SKIPPED when nginx / curl are not
              installed                                  (GB/s)
  * postgres  pgbench -S (select only, scale 1) for 3 s against PostgreSQL
              on a Unix socket, 1 and 4 clients (size column); one forked
              backend per connection; SKIPPED when PostgreSQL is not
              installed                                  (transactions/s)
              nginx and postgres: server on the last CPU, client on CPU 0
              (unpinned, the scheduler's placement alone moves plain
              pgbench -c 1 between ~14k and ~50k tx/s from run to run)
  * limit     the hardware limit, one mode: a naive spinning SPSC ring in
              shared memory between two processes (test-apps/shmring,
              256 KiB ring, no syscalls), 64 B, 4 KiB and 64 KiB messages,
              the stream group's totals; best of 5 runs.  Its own table
              beside the stream group's rows (tsss / limit)
                                                 (GB/s and M msg/s)
  * startup   process start-up: a bash script running /bin/true 500 times
              (ms per script; the tsss run preloads bash and every
              /bin/true), and 1000 fork+exec of /bin/true from a C driver
              (test-apps/execbench, us per exec); 10 paired runs per mode
  * busy      a CPU-bound process (sh busy loop) pinned to every CPU during
              each run, same in both modes: stream at 64 B, 4 KiB and
              64 KiB (busy_stream) and the 64 B ping-pong round trip
              (busy_pingpong); TSSS_LOG=info, a connection not accelerated
              fails the run
  * load      default settings, unpinned: pgbench -S with 1, 4, 16 and 64
              clients, -j min(clients, 2) (postgres_unpinned), and 1 and 4
              redis-benchmark processes at once (-c 50 -t set,get each,
              the sum of their rates, geometric mean of the tests;
              redis_procs, size column = processes); every connection must
              be accelerated.  Also runs the busy group
  * conns     test-apps/connbench: a single-threaded level-triggered epoll
              echo server with N = 10 .. 10,000 open connections (size
              column), 10 of them active round-robin with 64 B requests:
              round trip (median, p99), the server's CPU time per request
              (getrusage user+sys over the measured requests), time to open
              the N connections, connections accelerated (beyond
              kernel.shmmni segments they stay plain, ENOSPC, by design;
              any other plain connection, or an active one not
              accelerated, fails the run); 3 repeats, 1 s each

ratio is always "> 1 means tsss is better": tsss/plain for throughput,
plain/tsss for latency.

Outputs: a table on stdout, OUT/bench.csv (medians), OUT/raw.csv (every
run), OUT/throughput.svg, OUT/rtt.svg, OUT/summary.md.  The header names
the date, CPU, kernel and glibc and the load average at the start and the
end (a loaded machine makes every figure noisier).  In bench.csv the rows
of case "limit" carry the ring's value in the column `limit`, the stream
group's medians at that size in plain and tsss, and tsss / limit as ratio.

Any run that exits non-zero, times out, lacks a "RESULT ... ok=1" line, or
whose preload could not be loaded is a FAILURE: its stderr is printed and
the script exits 1 at the end.  Falling short of a performance target is
reported but is not a failure.

To add a case, write a function `fn(runner, mode)` returning a dict
{metric_name: value} (or a list of (metric, value) pairs) and append a
Case(...) to the list built in build_cases().  A case whose tools are
missing raises SkipCase: it is reported as SKIPPED, not as a failure.
TSSS_BENCH_EXTRA is reserved for extra cases and currently ignored.
"""

import argparse
import atexit
import csv
import datetime
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("plain", "tsss")

K, M, G = 1 << 10, 1 << 20, 1 << 30

# stream: message size -> total bytes, chosen so a plain run takes ~0.3-1 s
STREAM_TOTALS = {
    16: 16 * M,
    64: 64 * M,
    256: 256 * M,
    1024: 512 * M,
    4096: 1 * G,
    16384: 4 * G,
    65536: 4 * G,
    262144: 4 * G,
    1048576: 4 * G,
}
PINGPONG_ITERS = {16: 20000, 64: 20000, 1024: 20000, 16384: 10000}
PIPEFILE_TOTALS = {("pipe", 4096): 1 * G, ("pipe", 65536): 512 * M,
                   ("file", 4096): 512 * M, ("file", 65536): 1 * G}

# webcache: cache workers, client connections, requests per connection
# (~4 GB of file bytes, ~0.4 s plain), number of files from mkfiles
WEBCACHE = {"workers": 4, "conns": 8, "reqs": 1000, "files": 20}
# redis-benchmark: requests per test without / with -P 16 (~1.1 s + ~0.4 s
# per run plain; the whole case ~16 s with the default 5 repeats), clients,
# tests
# tests=(): redis-benchmark's own default test set (about 20 commands).
REDIS = {"n": 20000, "n_p16": 100000, "clients": 50, "tests": ()}
SOCAT_BYTES = 200 * M
# ringsize: TSSS_RING_SIZE values (bytes per direction), then stream totals
# per message size and ping-pong iterations per message size (~1.7 s plain,
# ~0.3 s tsss per ring size and repeat)
RING_SIZES = (16 * K, 64 * K, 256 * K, 1 * M, 4 * M)
RING_STREAM = {64: 32 * M, 4096: 512 * M, 65536: 2 * G}
RING_PINGPONG = {64: 10000, 16384: 5000}

# nginx: file size, GETs of it on one keep-alive connection (~0.5 s plain)
NGINX = {"size": 64 * M, "gets": 16}
# pgbench -S: seconds per run, client counts (one case each)
PGBENCH = {"seconds": 3, "clients": (1, 4)}

# conns: open connections (one case each), active ones, seconds of
# measurement per run (--quick: 0.3), repeats per mode.  With tsss the
# 10,000 row takes ~40 s per run on its own (connections beyond
# kernel.shmmni each pay a failed shmget and tsss's orphan sweep), so it
# has no warm-up run.
CONNS = {"counts": (10, 100, 1000, 10000), "active": 10, "seconds": 1.0, "repeats": 3,
         "no_warmup_from": 10000}
# load: pgbench -S unpinned (seconds per run, client counts, -j min(c, 2));
# redis-benchmark processes at once against one server (-c, -n per process
# and test, tests)
LOAD_PGBENCH = {"seconds": 2, "clients": (1, 4, 16, 64), "jobs": 2}
LOAD_REDIS = {"procs": (1, 4), "clients": 50, "n": 50000, "tests": ("set", "get")}
# busy: a CPU-bound process on every CPU during the run.  Stream totals
# and ping-pong iterations are small because tsss is slow here (2 vCPUs,
# 2026-12: 0.02-0.16 GB/s at 4 and 64 KiB, 128 MiB take up to ~6 s; round
# trips of a time slice, ~12 ms, at p99, in some runs at the median too:
# 500 then take ~6 s), plain is fast (1-4 GB/s, ~4 us).
BUSY_STREAM = {64: 16 * M, 4096: 64 * M, 65536: 128 * M}
BUSY_PINGPONG = {64: 500}
# startup: /bin/true runs per bash script, fork+execs per execbench run,
# paired repeats per mode (median)
STARTUP = {"script_runs": 500, "execs": 1000, "repeats": 10}
# limit: message sizes; totals as the stream group's, also with --quick
# (the ring moves 4 GiB in ~0.35 s); best of 5 runs (--quick: 3)
LIMIT_SIZES = (64, 4096, 65536)

ALL_GROUPS = ("stream", "pingpong", "syscall", "pipe", "file",
              "webcache", "redis", "socat", "pubsub", "ringsize",
              "nginx", "postgres", "limit", "startup", "busy", "load", "conns")
# test-app binaries each group needs
GROUP_BINS = {"stream": ("stream",), "pingpong": ("pingpong",),
              "syscall": ("syscost",), "pipe": ("pipefile",),
              "file": ("pipefile",), "webcache": ("webcache",),
              "pubsub": ("pubsub",), "ringsize": ("stream", "pingpong"),
              "conns": ("connbench",), "busy": ("stream", "pingpong"),
              "load": ("stream", "pingpong"), "startup": ("execbench",),
              "limit": ("shmring",)}

# (case, size, metric, minimum ratio) -- reported as PASS / FALL SHORT
TARGETS = [
    ("stream", 64, "gbps", 10.0),
    ("stream", 4096, "gbps", 4.0),
    ("pingpong", 64, "rtt_med_us", 20.0),
    ("syscall", 64, "ns_per_call", 0.95),
    ("pipe", 4096, "gbps", 0.95),
    ("pipe", 65536, "gbps", 0.95),
    ("file", 4096, "gbps", 0.95),
    ("file", 65536, "gbps", 0.95),
    ("startup_bash", 500, "ms_per_script", 0.95),
    ("startup_exec", 1000, "us_per_exec", 0.95),
]


class Metric:
    def __init__(self, name, unit, higher_is_better):
        self.name = name
        self.unit = unit
        self.higher_is_better = higher_is_better


M_GBPS = Metric("gbps", "GB/s", True)
M_NS_CALL = Metric("ns_per_call", "ns", False)
M_MMSGS = Metric("mmsgs", "Mmsg/s", True)
M_RTT_MED = Metric("rtt_med_us", "us", False)
M_RTT_P99 = Metric("rtt_p99_us", "us", False)
M_RPS = Metric("rps", "req/s", True)
M_RPS_P16 = Metric("rps_p16", "req/s", True)
M_KMSGS_FWD = Metric("kmsgs_fwd", "k msg/s", True)
M_TPS = Metric("tps", "tx/s", True)
M_SRV_CPU = Metric("srv_cpu_us", "us CPU/req", False)
M_SETUP = Metric("setup_s", "s", False)
M_ACCEL = Metric("accel", "conns", True)
M_MS_SCRIPT = Metric("ms_per_script", "ms", False)
M_US_EXEC = Metric("us_per_exec", "us", False)
# ringsize: one metric per message size
M_RING = ([Metric("gbps_%s" % svgplot.size_label(sz), "GB/s", True) for sz in RING_STREAM]
          + [Metric("rtt_%s_us" % svgplot.size_label(sz), "us", False)
             for sz in RING_PINGPONG])


class Case:
    """One benchmark case.  fn(runner, mode) -> {metric: value}."""

    def __init__(self, group, size, metrics, fn, best_of=0, reps=None, warmup=None,
                 modes=None, sel=None):
        # best_of > 0: an overhead case (pipe/file under LD_PRELOAD): run it
        # best_of times per mode and report the best run. Interference only
        # ever slows a run down, so the best run is the estimate of the
        # cost itself; medians of 5 spread +-10% here, too wide for 5%.
        self.best_of = best_of
        # reps / warmup: this case's own repeat and warm-up counts (median
        # of reps), instead of --repeats / --warmup
        self.reps = reps
        self.warmup = warmup
        # modes: the modes this case runs in; None: plain and tsss.
        # ("limit",): a single-mode reference (no preload), reported in its
        # own table (see limit_rows)
        self.modes = modes
        self.group = group
        # sel: the --cases group that selected this case (run time per group)
        self.sel = sel or group
        self.size = size
        self.metrics = metrics
        self.fn = fn
        # samples[mode][metric] -> list of values
        self.samples = {m: {x.name: [] for x in metrics} for m in MODES + ("limit",)}
        self.failed = False
        self.secs = 0.0

    def label(self):
        return "%s %s" % (self.group, svgplot.size_label(self.size))

    def median(self, mode, metric):
        """The reported value: median, or best run for overhead cases."""
        v = self.samples[mode][metric]
        if not v:
            return None
        if self.best_of:
            better = next(m for m in self.metrics if m.name == metric).higher_is_better
            return max(v) if better else min(v)
        return statistics.median(v)


class RunFailure(Exception):
    pass


class SkipCase(Exception):
    """The case cannot run here (a tool is not installed): SKIPPED."""


# ---------------------------------------------------------------------------
# process handling

_live = set()  # Popen objects that may still be running


def _kill_live():
    for p in list(_live):
        try:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        except Exception:
            pass
        _live.discard(p)


def _on_signal(signum, frame):
    # SystemExit unwinds through subprocess.run (which kills its child) and
    # runs the atexit handlers (kill servers, remove the temp dir).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_live()
    sys.stderr.write("\ninterrupted (signal %d)\n" % signum)
    sys.exit(130)


def _run(cmd, env, timeout, what=None, **kw):
    """subprocess.run of a client, stdout and stderr captured as text; a
    timeout is a RunFailure naming `what` (default: the command line)."""
    try:
        return subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise RunFailure("%s: timed out after %ss\n%s"
                         % (what or " ".join(cmd), timeout, e.stderr or ""))


def parse_result(out):
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    if len(lines) != 1:
        return None
    res = {}
    for tok in lines[0].split()[1:]:
        if "=" in tok:
            k, v = tok.split("=", 1)
            res[k] = v
    return res


class Runner:
    def __init__(self, bin_dir, lib, sock_dir, file_dir, timeout):
        self.bin_dir = bin_dir
        self.lib = lib
        self.sock_dir = sock_dir
        self.file_dir = file_dir
        self.timeout = timeout
        self._n = 0

    def env(self, mode):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if mode == "tsss":
            env["LD_PRELOAD"] = self.lib
        return env

    def sock_path(self):
        self._n += 1
        return os.path.join(self.sock_dir, "s%d.sock" % self._n)

    def cmd(self, args):
        return [os.path.join(self.bin_dir, args[0])] + [str(a) for a in args[1:]]

    def _check(self, what, rc, out, err, mode):
        if mode == "tsss" and "cannot be preloaded" in err:
            raise RunFailure("%s: LD_PRELOAD could not be loaded\n%s" % (what, err))
        if rc != 0:
            raise RunFailure("%s exited with status %s\n--- stdout ---\n%s"
                             "--- stderr ---\n%s" % (what, rc, out, err))
        res = parse_result(out)
        if res is None or res.get("ok") != "1":
            raise RunFailure("%s: no 'RESULT ... ok=1' line\n--- stdout ---\n%s"
                             "--- stderr ---\n%s" % (what, out, err))
        return res

    def run_one(self, mode, args, extra_env=None):
        """Run a single program; returns its RESULT dict."""
        cmd = self.cmd(args)
        env = self.env(mode)
        env.update(extra_env or {})
        p = _run(cmd, env, self.timeout)
        return self._check(" ".join(cmd), p.returncode, p.stdout, p.stderr, mode)

    def run_pair(self, mode, server_args, client_args, sock, extra_env=None, errs=None):
        """Start the server, wait for its socket, run the client.
        Returns (client_result, server_result).  extra_env: added to both
        processes' environment; errs: a list, to which (client stderr,
        server stderr) is appended."""
        scmd, ccmd = self.cmd(server_args), self.cmd(client_args)
        if os.path.exists(sock):
            os.unlink(sock)
        env = self.env(mode)
        env.update(extra_env or {})
        srv = subprocess.Popen(scmd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
        _live.add(srv)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if srv.poll() is not None:
                    out, err = srv.communicate()
                    raise RunFailure("server %s exited (status %s) before creating "
                                     "its socket\n--- stderr ---\n%s"
                                     % (" ".join(scmd), srv.returncode, err))
                if time.monotonic() > deadline:
                    raise RunFailure("server %s: socket %s did not appear within 10 s"
                                     % (" ".join(scmd), sock))
                time.sleep(0.005)
            cli = _run(ccmd, env, self.timeout, what="client " + " ".join(ccmd))
            try:
                sout, serr = srv.communicate(timeout=30 if cli.returncode == 0 else 5)
            except subprocess.TimeoutExpired:
                srv.kill()
                sout, serr = srv.communicate()
                if cli.returncode == 0:
                    raise RunFailure("server %s did not exit after the client "
                                     "finished\n--- stderr ---\n%s"
                                     % (" ".join(scmd), serr))
            if errs is not None:
                errs.append((cli.stderr, serr))
            cres = self._check("client " + " ".join(ccmd), cli.returncode,
                               cli.stdout, cli.stderr, mode)
            sres = self._check("server " + " ".join(scmd), srv.returncode,
                               sout, serr, mode)
            return cres, sres
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
            _live.discard(srv)
            if os.path.exists(sock):
                try:
                    os.unlink(sock)
                except OSError:
                    pass


# ---------------------------------------------------------------------------
# cases

def _log_env(mode):
    """TSSS_LOG=info in tsss mode: one line per connection on stderr, so
    that a run that was not accelerated can be a failure."""
    return {"TSSS_LOG": "info"} if mode == "tsss" else {}


def _check_pair(mode, what, errs):
    """run_pair's (client stderr, server stderr): both ends accelerated."""
    if errs:
        _check_accelerated(mode, what + " client", errs[0][0], "client", 1)
        _check_accelerated(mode, what + " server", errs[0][1], "server", 1)


def stream_fn(size, total, accel=False):
    """accel: TSSS_LOG=info, the run fails unless both ends were accelerated."""
    def fn(rt, mode):
        sock = rt.sock_path()
        errs = []
        c, s = rt.run_pair(mode, ["stream", "server", sock],
                           ["stream", "client", sock, size, total], sock,
                           extra_env=_log_env(mode) if accel else None, errs=errs)
        if c.get("bytes") != s.get("bytes"):
            raise RunFailure("stream: client bytes %s != server bytes %s"
                             % (c.get("bytes"), s.get("bytes")))
        if accel:
            _check_pair(mode, "stream", errs)
        return {"gbps": float(c["gbps"]), "mmsgs": float(c["mmsgs"])}
    return fn


def pingpong_fn(size, iters, accel=False):
    def fn(rt, mode):
        sock = rt.sock_path()
        errs = []
        c, _ = rt.run_pair(mode, ["pingpong", "server", sock],
                           ["pingpong", "client", sock, size, iters], sock,
                           extra_env=_log_env(mode) if accel else None, errs=errs)
        if accel:
            _check_pair(mode, "pingpong", errs)
        return {"rtt_med_us": float(c["rtt_med_us"]),
                "rtt_p99_us": float(c["rtt_p99_us"])}
    return fn


def pipefile_fn(kind, size, total):
    def fn(rt, mode):
        args = ["pipefile", kind, size, total]
        if kind == "file":
            args.append(rt.file_dir)
        # Both pipe ends on one CPU: unpinned, placement and cross-CPU
        # wake-ups move pipe throughput by +-20% between identical runs.
        r = rt.run_one(mode, args, {"PIPEFILE_PIN": "same"})
        return {"gbps": float(r["gbps"])}
    return fn


def syscost_fn(calls):
    """ns per write() to /dev/null: what the preload adds to every call on
    an fd it does not accelerate (64 B writes)."""
    def fn(rt, mode):
        r = rt.run_one(mode, ["syscost", calls])
        return {"ns_per_call": float(r["ns_per_call"])}
    return fn


def webcache_fn(workers, conns, reqs, nfiles):
    def fn(rt, mode):
        fdir = os.path.join(rt.file_dir, "webcache-files")
        if not os.path.isdir(fdir):  # once per bench run, outside timing
            rt.run_one("plain", ["webcache", "mkfiles", fdir + ".tmp", nfiles])
            os.rename(fdir + ".tmp", fdir)
        names = sorted(os.listdir(fdir)) + ["missing.dat"]  # one ERR notfound
        sock = rt.sock_path()
        c, s = rt.run_pair(mode, ["webcache", "cache", sock, fdir, workers,
                                  "--max-conns", conns],
                           ["webcache", "webproxy", sock, conns, reqs] + names, sock)
        if (c.get("requests"), c.get("bytes")) != (s.get("requests"), s.get("bytes")):
            raise RunFailure("webcache: webproxy requests/bytes %s/%s != cache %s/%s"
                             % (c.get("requests"), c.get("bytes"),
                                s.get("requests"), s.get("bytes")))
        return {"rps": float(c["rps"]), "gbps": float(c["gbps"])}
    return fn


def _preload_failed(mode, text):
    return mode == "tsss" and "cannot be preloaded" in (text or "")


def _wait_socket(proc, sock, what, logf=None):
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if proc.poll() is not None:
            raise RunFailure("%s exited (status %s) before creating its socket\n%s"
                             % (what, proc.returncode, _read_log(logf)))
        if time.monotonic() > deadline:
            raise RunFailure("%s: socket %s did not appear within 10 s\n%s"
                             % (what, sock, _read_log(logf)))
        time.sleep(0.005)


def _read_log(path, limit=4000):
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            t = f.read()
    except OSError:
        return ""
    return ("--- log ---\n" + t[-limit:]) if t else ""


def _stop(proc, timeout=5):
    """Wait for proc to exit (SIGTERM, then SIGKILL, on timeout)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _live.discard(proc)


def _expect_exit(srv, name, after, timeout, mode, log):
    """After the server `name` was asked to stop (`after`: how): it must exit
    within `timeout` s with status 0, its log free of a preload failure."""
    try:
        srv.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailure("%s did not exit after %s\n%s" % (name, after, _read_log(log)))
    if srv.returncode != 0 or _preload_failed(mode, _read_log(log)):
        raise RunFailure("%s exited with status %s\n%s"
                         % (name, srv.returncode, _read_log(log)))


REDIS_RPS_RE = re.compile(r"^\s*([A-Z][A-Z_]*)(?: \([^)]*\))?: ([0-9.]+) requests per second")


def parse_redis_benchmark(out):
    """{test (upper case): requests per second} from redis-benchmark -q."""
    res = {}
    for line in re.split(r"[\r\n]+", out):
        m = REDIS_RPS_RE.match(line)
        if m:
            res[m.group(1)] = float(m.group(2))
    return res


def geomean(vals):
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def redis_fn(n, n_p16, clients, tests):
    def fn(rt, mode):
        tools = {t: shutil.which(t) for t in ("redis-server", "redis-benchmark",
                                              "redis-cli")}
        missing = [t for t in ("redis-server", "redis-benchmark") if not tools[t]]
        if missing:
            raise SkipCase("%s not installed" % " and ".join(missing))
        sock = rt.sock_path()
        if os.path.exists(sock):
            os.unlink(sock)
        log = sock + ".log"
        env = rt.env(mode)
        with open(log, "w") as logf:
            srv = subprocess.Popen(
                [tools["redis-server"], "--port", "0", "--unixsocket", sock,
                 "--save", "", "--appendonly", "no", "--dir", rt.file_dir,
                 "--daemonize", "no"],
                env=env, stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        _live.add(srv)
        vals = {}
        try:
            _wait_socket(srv, sock, "redis-server", log)
            for metric, extra, nreq in (("rps", [], n), ("rps_p16", ["-P", "16"], n_p16)):
                cmd = [tools["redis-benchmark"], "-s", sock, "-q", "-n", str(nreq),
                       "-c", str(clients)] + (["-t", ",".join(tests)] if tests else []) + extra
                p = _run(cmd, env, rt.timeout)
                got = parse_redis_benchmark(p.stdout)
                want = [t.upper() for t in tests] or sorted(got)
                if (p.returncode != 0 or _preload_failed(mode, p.stderr)
                        or (not tests and len(got) < 10)
                        or any(t not in got or got[t] <= 0 for t in want)):
                    raise RunFailure("%s exited with status %s, results %s\n"
                                     "--- stdout ---\n%s--- stderr ---\n%s%s"
                                     % (" ".join(cmd), p.returncode, got,
                                        p.stdout[-3000:], p.stderr[-3000:],
                                        _read_log(log)))
                vals[metric] = geomean([got[t] for t in want])
            if srv.poll() is not None:
                raise RunFailure("redis-server exited (status %s) during the benchmark\n%s"
                                 % (srv.returncode, _read_log(log)))
            # shut the server down; SIGTERM also makes redis exit cleanly
            if tools["redis-cli"]:
                subprocess.run([tools["redis-cli"], "-s", sock, "shutdown", "nosave"],
                               env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
            else:
                srv.terminate()
            _expect_exit(srv, "redis-server", "shutdown", 10, mode, log)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
            _live.discard(srv)
            for f in (sock, log):
                try:
                    os.unlink(f)
                except OSError:
                    pass
        return vals
    return fn


def _files_equal(a, b, chunk=4 * M):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def socat_fn(nbytes, reverse=False):
    """A file through socat: client to server, or (reverse) the listening
    side sends and the connecting side receives."""
    def fn(rt, mode):
        socat = shutil.which("socat")
        if not socat:
            raise SkipCase("socat not installed")
        src = os.path.join(rt.file_dir, "socat.in")
        if not os.path.exists(src):  # once per bench run
            with open(src + ".tmp", "wb") as f:
                block = os.urandom(M)
                for i in range(nbytes // M):
                    # vary every MiB so a misplaced block cannot compare equal
                    f.write(i.to_bytes(8, "little") + block[8:])
                f.write(os.urandom(nbytes % M))
            os.rename(src + ".tmp", src)
        dst = os.path.join(rt.file_dir, "socat.out")
        if os.path.exists(dst):
            os.unlink(dst)
        sock = rt.sock_path()
        if os.path.exists(sock):
            os.unlink(sock)
        env = rt.env(mode)
        slog = sock + ".log"
        with open(slog, "w") as logf:
            sargs = (["-u", "FILE:%s" % src, "UNIX-LISTEN:%s" % sock] if reverse else
                     ["-u", "UNIX-LISTEN:%s" % sock, "FILE:%s,create" % dst])
            srv = subprocess.Popen([socat] + sargs,
                                   env=env, stdout=logf, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        _live.add(srv)
        try:
            _wait_socket(srv, sock, "socat UNIX-LISTEN", slog)
            cmd = ([socat, "-u", "UNIX-CONNECT:%s" % sock, "FILE:%s,create" % dst] if reverse
                   else [socat, "-u", "FILE:%s" % src, "UNIX-CONNECT:%s" % sock])
            t0 = time.monotonic()
            cli = _run(cmd, env, rt.timeout)
            try:
                srv.wait(timeout=rt.timeout if cli.returncode == 0 else 5)
            except subprocess.TimeoutExpired:
                raise RunFailure("socat UNIX-LISTEN did not exit after the sender "
                                 "(status %s)\n--- sender stderr ---\n%s%s"
                                 % (cli.returncode, cli.stderr, _read_log(slog)))
            secs = time.monotonic() - t0
            if (cli.returncode != 0 or srv.returncode != 0
                    or _preload_failed(mode, cli.stderr)
                    or _preload_failed(mode, _read_log(slog))):
                raise RunFailure("socat: sender status %s, receiver status %s\n"
                                 "--- sender stderr ---\n%s%s"
                                 % (cli.returncode, srv.returncode, cli.stderr,
                                    _read_log(slog)))
            if not _files_equal(src, dst):
                raise RunFailure("socat: MISMATCH: received file (%d bytes) differs "
                                 "from the sent one (%d bytes)"
                                 % (os.path.getsize(dst), os.path.getsize(src)))
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
            _live.discard(srv)
            for f in (sock, slog, dst):
                try:
                    os.unlink(f)
                except OSError:
                    pass
        return {"gbps": nbytes / secs / 1e9}
    return fn


def pubsub_fn(subs, pubs, msgs, size):
    """pubsub hub: every publisher message (a memfd passed with SCM_RIGHTS
    plus a header) forwarded to every subscriber; metric: forwarded
    messages (fd + header) per second, timed at the subscribers."""
    def fn(rt, mode):
        sock = rt.sock_path()
        if os.path.exists(sock):
            os.unlink(sock)
        env = rt.env(mode)
        env["PUBSUB_TIMEOUT"] = "60"
        hlog = sock + ".hub.log"
        procs = []
        try:
            with open(hlog, "w") as lf:
                hub = subprocess.Popen(rt.cmd(["pubsub", "hub", sock, subs, pubs]), env=env,
                                       stdout=subprocess.PIPE, stderr=lf,
                                       stdin=subprocess.DEVNULL, universal_newlines=True)
            _live.add(hub)
            procs.append(hub)
            _wait_socket(hub, sock, "pubsub hub", hlog)
            total = pubs * msgs
            subp = [subprocess.Popen(rt.cmd(["pubsub", "sub", sock, total]), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True) for _ in range(subs)]
            procs += subp
            time.sleep(0.05)
            pubp = [subprocess.Popen(rt.cmd(["pubsub", "pub", sock, i + 1, msgs, size]), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True) for i in range(pubs)]
            procs += pubp
            secs = 0.0
            for p in subp + pubp + [hub]:
                out, err = p.communicate(timeout=rt.timeout)
                if p.returncode != 0 or "ok=1" not in out or _preload_failed(mode, err or ""):
                    raise RunFailure("pubsub: a process failed (status %s)\n%s%s"
                                     % (p.returncode, out, err or _read_log(hlog)))
                if p in subp:
                    kv = dict(w.split("=", 1) for w in out.split() if "=" in w)
                    secs = max(secs, float(kv["secs"]))
            return {"kmsgs_fwd": subs * total / secs / 1e3}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                _live.discard(p)
    return fn


class _EnvVar:
    """Sets one environment variable for the processes started inside the
    with block (Runner.env copies os.environ), then restores it."""

    def __init__(self, name, value):
        self.name, self.value, self.old = name, value, None

    def __enter__(self):
        self.old = os.environ.get(self.name)
        os.environ[self.name] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.old


def ringsize_fn(ring, stream_totals, pingpong_iters):
    """Stream and ping-pong with TSSS_RING_SIZE=ring on both sides (the
    accepting side's value decides)."""
    def fn(rt, mode):
        vals = {}
        with _EnvVar("TSSS_RING_SIZE", svgplot.size_label(ring)):
            for size, total in stream_totals.items():
                vals["gbps_%s" % svgplot.size_label(size)] = \
                    stream_fn(size, total)(rt, mode)["gbps"]
            for size, iters in pingpong_iters.items():
                vals["rtt_%s_us" % svgplot.size_label(size)] = \
                    pingpong_fn(size, iters)(rt, mode)["rtt_med_us"]
        return vals
    return fn


_SRV_DIR = []


def _server_dir():
    """A 0755 temporary directory for servers that drop root (nginx's worker
    runs as nobody, PostgreSQL refuses root): the runner's own is 0700."""
    if not _SRV_DIR:
        d = tempfile.mkdtemp(prefix="tsss-bench-srv.")
        os.chmod(d, 0o755)
        atexit.register(shutil.rmtree, d, True)
        _SRV_DIR.append(d)
    return _SRV_DIR[0]


def _reachable_by_others(path):
    """Whether another uid can read `path` (every directory on the way
    searchable by others, the file readable by others)."""
    path = os.path.abspath(path)
    d = os.path.dirname(path)
    while True:
        if not os.stat(d).st_mode & 0o001:
            return False
        if d == "/":
            break
        d = os.path.dirname(d)
    return bool(os.stat(path).st_mode & 0o004)


def _lib_for_all(lib):
    """The library where servers that drop root can load it: a checkout
    under a 0700 home directory is out of their reach, so a copy in the
    0755 server directory then."""
    if _reachable_by_others(lib):
        return lib
    dst = os.path.join(_server_dir(), "libtsss.so")
    if not os.path.exists(dst):
        shutil.copy(lib, dst)
        os.chmod(dst, 0o755)
    return dst


def _server_env(rt, mode):
    """The mode's environment; with tsss, TSSS_LOG=info (one line per
    connection) so that a run that was not accelerated is a failure."""
    env = rt.env(mode)
    if mode == "tsss":
        env["TSSS_LOG"] = "info"
    return env


def _pin(server):
    """preexec_fn: the server on the last CPU, the client on CPU 0 (no-op
    with one CPU)."""
    n = os.cpu_count() or 1
    if n < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = n - 1 if server else 0
    return lambda: os.sched_setaffinity(0, {cpu})


def _end_server(srv, sig):
    """After a failure: `sig` makes the master stop its workers/backends
    (SIGKILL to the master alone would orphan them), SIGKILL after 5 s."""
    if srv.poll() is None:
        srv.send_signal(sig)
        try:
            srv.wait(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    _live.discard(srv)


def _check_accelerated(mode, what, text, side, want):
    if mode != "tsss":
        return
    n = (text or "").count("accelerated (%s" % side)
    if n < want:
        raise RunFailure("%s: %d connections accelerated (%s side), expected %d\n%s"
                         % (what, n, side, want, (text or "")[-3000:]))


def nginx_fn(size, gets):
    """curl GETs one file `gets` times on one keep-alive connection."""
    def fn(rt, mode):
        nginx, curl = shutil.which("nginx"), shutil.which("curl")
        if not nginx or not curl:
            raise SkipCase("%s not installed" % ("nginx" if not nginx else "curl"))
        d = os.path.join(_server_dir(), "nginx")
        www = os.path.join(d, "www")
        conf = os.path.join(d, "nginx.conf")
        sock = os.path.join(d, "nginx.sock")
        if not os.path.exists(conf):  # once per bench run
            os.makedirs(www)
            os.chmod(d, 0o755)
            os.chmod(www, 0o755)
            with open(os.path.join(www, "f.bin"), "wb") as f:
                for _ in range(size // M):
                    f.write(os.urandom(M))
                f.write(os.urandom(size % M))
            os.chmod(os.path.join(www, "f.bin"), 0o644)
            with open(conf, "w") as f:
                f.write("daemon off;\nmaster_process on;\nworker_processes 1;\n"
                        "pid {d}/nginx.pid;\nerror_log stderr notice;\n"
                        "events {{ worker_connections 64; }}\n"
                        "http {{\naccess_log off;\nsendfile on;\n"
                        "default_type application/octet-stream;\n"
                        "client_body_temp_path {d}/t-body;\nproxy_temp_path {d}/t-proxy;\n"
                        "fastcgi_temp_path {d}/t-fcgi;\nuwsgi_temp_path {d}/t-uwsgi;\n"
                        "scgi_temp_path {d}/t-scgi;\n"
                        "server {{ listen unix:{d}/nginx.sock; root {d}/www; }}\n}}\n"
                        .format(d=d))
        if os.path.exists(sock):
            os.unlink(sock)
        env = _server_env(rt, mode)
        log = os.path.join(d, "nginx.log")
        with open(log, "w") as logf:
            srv = subprocess.Popen([nginx, "-e", "stderr", "-p", d, "-c", conf],
                                   env=env, stdout=logf, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=_pin(True))
        _live.add(srv)
        try:
            _wait_socket(srv, sock, "nginx", log)
            cmd = [curl, "-sS", "--fail", "--unix-socket", sock, "-o", "/dev/null",
                   "-w", "%{size_download} %{time_total} %{num_connects}\n",
                   "http://localhost/f.bin?[1-%d]" % gets]
            p = _run(cmd, env, rt.timeout, preexec_fn=_pin(False))
            rows = [l.split() for l in p.stdout.splitlines() if l.strip()]
            if (p.returncode != 0 or _preload_failed(mode, p.stderr) or len(rows) != gets
                    or any(len(r) != 3 or int(r[0]) != size for r in rows)
                    or sum(int(r[2]) for r in rows) != 1):
                raise RunFailure("%s exited with status %s (want %d GETs of %d bytes "
                                 "on one connection)\n--- stdout ---\n%s--- stderr ---\n%s%s"
                                 % (" ".join(cmd), p.returncode, gets, size,
                                    p.stdout[-3000:], p.stderr[-3000:], _read_log(log)))
            secs = sum(float(r[1]) for r in rows)
            _check_accelerated(mode, "curl", p.stderr, "client", 1)
            srv.send_signal(signal.SIGQUIT)  # graceful shutdown
            _expect_exit(srv, "nginx", "SIGQUIT", 10, mode, log)
            _check_accelerated(mode, "nginx", _read_log(log, 100000), "server", 1)
        finally:
            _end_server(srv, signal.SIGTERM)  # nginx: fast shutdown
        return {"gbps": size * gets / secs / 1e9}
    return fn


def _pg_bindir():
    """/usr/lib/postgresql/<highest version>/bin with the server and pgbench."""
    best = None
    for v in os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else ():
        b = os.path.join("/usr/lib/postgresql", v, "bin")
        if v.isdigit() and all(os.access(os.path.join(b, x), os.X_OK)
                               for x in ("postgres", "initdb", "pgbench")):
            if best is None or int(v) > best[0]:
                best = (int(v), b)
    return best and best[1]


def _pg_user(cmd):
    """PostgreSQL refuses to run as root: then as nobody, through setpriv."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        raise RunFailure("running as root: setpriv (util-linux) is needed to run "
                         "PostgreSQL as nobody")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd


PGBENCH_TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


def postgres_fn(clients, seconds, pinned=True, jobs=1):
    """pgbench -S against a server started for this run (the data directory,
    made with initdb and pgbench -i once, is shared by both modes).
    pinned: server on the last CPU, pgbench on CPU 0 (else the scheduler
    places them); jobs: pgbench -j (its worker threads)."""
    pin = _pin if pinned else (lambda server: None)

    def fn(rt, mode):
        b = _pg_bindir()
        if not b:
            raise SkipCase("PostgreSQL (postgres, initdb, pgbench) not installed")
        d = os.path.join(_server_dir(), "pg")
        data = os.path.join(d, "data")
        plain = rt.env("plain")
        plain["LC_ALL"] = "C"
        if not os.path.exists(data):  # once per bench run, plain
            os.makedirs(d)
            if os.geteuid() == 0:
                os.chown(d, 65534, 65534)
            p = subprocess.run(_pg_user([os.path.join(b, "initdb"), "-D", data, "-U",
                                         "postgres", "--auth=trust", "--no-locale",
                                         "-E", "UTF8", "--no-sync"]),
                               env=plain, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True, timeout=rt.timeout)
            if p.returncode != 0:
                shutil.rmtree(data, True)
                raise RunFailure("initdb failed (status %s)\n%s"
                                 % (p.returncode, p.stdout[-3000:]))
        env = _server_env(rt, mode)
        env["LC_ALL"] = "C"
        log = os.path.join(rt.file_dir, "postgres.log")
        with open(log, "w") as logf:
            srv = subprocess.Popen(
                _pg_user([os.path.join(b, "postgres"), "-D", data, "-k", d,
                          "-c", "listen_addresses=", "-c", "fsync=off",
                          "-c", "synchronous_commit=off", "-c", "shared_buffers=64MB",
                          "-c", "max_connections=%d" % (clients + 10)]),
                env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=pin(True))
        _live.add(srv)
        pg = [os.path.join(b, "pgbench"), "-h", d, "-U", "postgres"]

        def run(args, what):
            p = _run(pg + args + ["postgres"], env, rt.timeout, what=what,
                     preexec_fn=pin(False))
            if p.returncode != 0 or _preload_failed(mode, p.stderr):
                raise RunFailure("%s exited with status %s\n--- stdout ---\n%s"
                                 "--- stderr ---\n%s%s"
                                 % (what, p.returncode, p.stdout[-3000:],
                                    p.stderr[-3000:], _read_log(log)))
            return p
        try:
            deadline = time.monotonic() + 30
            while "ready to accept connections" not in _read_log(log, 100000):
                if srv.poll() is not None or time.monotonic() > deadline:
                    raise RunFailure("postgres did not start (status %s)\n%s"
                                     % (srv.poll(), _read_log(log)))
                time.sleep(0.02)
            marker = os.path.join(d, "pgbench-initialized")
            if not os.path.exists(marker):  # once per bench run, not timed
                run(["-i", "-s", "1", "-q"], "pgbench -i")
                open(marker, "w").close()
            p = run(["-S", "-n", "-T", str(seconds), "-c", str(clients), "-j", str(jobs)],
                    "pgbench -S")
            m = PGBENCH_TPS_RE.search(p.stdout)
            if not m or "number of failed transactions: 0" not in p.stdout:
                raise RunFailure("pgbench -S: no tps, or failed transactions\n%s"
                                 % p.stdout[-3000:])
            _check_accelerated(mode, "pgbench", p.stderr, "client", clients)
            srv.send_signal(signal.SIGINT)  # fast shutdown
            _expect_exit(srv, "postgres", "SIGINT", 30, mode, log)
            _check_accelerated(mode, "postgres", _read_log(log, 1000000), "server", clients)
        finally:
            _end_server(srv, signal.SIGQUIT)  # postgres: immediate shutdown
        return {"tps": float(m.group(1))}
    return fn


# ---------------------------------------------------------------------------
# conns, load, busy, startup, limit

def conns_fn(n, active, seconds):
    """connbench: n connections open (each with one round trip), `active`
    of them driven round-robin for `seconds`; round trip of the active
    ones and the server's CPU time per request (getrusage, between the
    client's start and end marks).  tsss: every connection must be
    accelerated, or plain because the segment table is full (ENOSPC,
    kernel.shmmni); the active ones must be accelerated."""
    def fn(rt, mode):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if (os.geteuid() != 0 and hard != resource.RLIM_INFINITY
                and hard < n + 64):
            raise SkipCase("RLIMIT_NOFILE hard limit %d: %d connections need "
                           "%d descriptors per process (raise it, or run as root)"
                           % (hard, n, n + 64))
        sock = rt.sock_path()
        if os.path.exists(sock):
            os.unlink(sock)
        timeout = max(rt.timeout, 300)
        env = _server_env(rt, mode)
        env["CONNBENCH_TIMEOUT"] = str(int(timeout))
        log = sock + ".log"
        with open(log, "w") as lf:  # a file: 10,000 log lines would fill a pipe
            srv = subprocess.Popen(rt.cmd(["connbench", "server", sock]), env=env,
                                   stdout=subprocess.PIPE, stderr=lf,
                                   stdin=subprocess.DEVNULL, universal_newlines=True)
        _live.add(srv)
        try:
            _wait_socket(srv, sock, "connbench server", log)
            ccmd = rt.cmd(["connbench", "client", sock, n, active, "%gs" % seconds])
            cli = _run(ccmd, env, timeout, what="connbench client %d" % n)
            if cli.returncode != 0:  # the client's own failure first
                srv.terminate()
                rt._check("connbench client %d" % n, cli.returncode, cli.stdout,
                          cli.stderr[-6000:], mode)
            try:
                sout, _ = srv.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                raise RunFailure("connbench server did not exit after the client "
                                 "(status %s)\n--- client stderr ---\n%s%s"
                                 % (cli.returncode, cli.stderr[-3000:], _read_log(log)))
            with open(log, errors="replace") as f:
                slog = f.read()
            c = rt._check("connbench client %d" % n, cli.returncode, cli.stdout,
                          cli.stderr, mode)
            s = rt._check("connbench server", srv.returncode, sout, slog[-4000:], mode)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
            _live.discard(srv)
            for f in (sock, log):
                try:
                    os.unlink(f)
                except OSError:
                    pass
        if c.get("reqs") != s.get("reqs") or int(s.get("conns", 0)) != n:
            raise RunFailure("connbench: client %s requests on %d connections, server "
                             "%s requests on %s" % (c.get("reqs"), n, s.get("reqs"),
                                                    s.get("conns")))
        acc = 0
        if mode == "tsss":
            acc = slog.count("accelerated (server")
            plain = [l for l in slog.splitlines() if ": plain: " in l]
            # the kernel's segment table is full: plain by design
            nospc = [l for l in plain if "cannot create segment" in l and "(os error 28)" in l]
            other = [l for l in plain if l not in nospc]
            if other or acc + len(nospc) != n:
                raise RunFailure("connbench %d: %d connections accelerated, %d plain for "
                                 "ENOSPC (kernel.shmmni), %d plain for another reason\n%s"
                                 % (n, acc, len(nospc), len(other), "\n".join(other[:20])))
            for fd in c.get("active_fds", "").split(","):
                if "fd %s: accelerated (client" % fd not in cli.stderr:
                    raise RunFailure("connbench %d: active connection (client fd %s) "
                                     "was not accelerated\n%s" % (n, fd, cli.stderr[-3000:]))
        return {"rtt_med_us": float(c["rtt_med_us"]), "rtt_p99_us": float(c["rtt_p99_us"]),
                "srv_cpu_us": float(s["cpu_us_per_req"]), "setup_s": float(c["setup_s"]),
                "accel": float(acc)}
    return fn


class _Busy:
    """A CPU-bound process (sh -c 'while :; do :; done') pinned to each CPU
    this script may use, for the with block: started before the
    measurement, killed after it, without the preload in both modes.  A
    busy loop that is gone at the end makes the run a failure."""

    def __init__(self, rt):
        self.rt = rt
        self.procs = []

    def __enter__(self):
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else range(os.cpu_count() or 1)
        for cpu in cpus:
            pre = (lambda c=cpu: os.sched_setaffinity(0, {c})) \
                if hasattr(os, "sched_setaffinity") else None
            p = subprocess.Popen(["sh", "-c", "while :; do :; done"], env=self.rt.env("plain"),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, preexec_fn=pre)
            _live.add(p)
            self.procs.append(p)
        time.sleep(0.05)  # spinning before the measurement starts
        if any(p.poll() is not None for p in self.procs):
            self._kill()
            raise RunFailure("a busy loop (sh -c 'while :; do :; done') did not start")
        return self

    def _kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            _live.discard(p)

    def __exit__(self, exc_type, exc, tb):
        gone = [p for p in self.procs if p.poll() is not None]
        self._kill()
        if gone and exc_type is None:
            raise RunFailure("%d busy loop(s) exited during the measurement" % len(gone))
        return False


def busy_fn(inner):
    """inner(rt, mode) with a busy loop on every CPU."""
    def fn(rt, mode):
        with _Busy(rt):
            return inner(rt, mode)
    return fn


def redis_load_fn(procs, clients, n, tests):
    """`procs` redis-benchmark processes at once (-c clients each, -n n
    requests per test) against one redis-server; per test the sum of the
    processes' rates, then the geometric mean over the tests.  tsss: every
    connection must be accelerated on both sides."""
    def fn(rt, mode):
        tools = {t: shutil.which(t) for t in ("redis-server", "redis-benchmark", "redis-cli")}
        missing = [t for t in ("redis-server", "redis-benchmark") if not tools[t]]
        if missing:
            raise SkipCase("%s not installed" % " and ".join(missing))
        sock = rt.sock_path()
        if os.path.exists(sock):
            os.unlink(sock)
        log = sock + ".log"
        env = _server_env(rt, mode)
        with open(log, "w") as logf:
            srv = subprocess.Popen(
                [tools["redis-server"], "--port", "0", "--unixsocket", sock,
                 "--save", "", "--appendonly", "no", "--dir", rt.file_dir,
                 "--daemonize", "no"],
                env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _live.add(srv)
        bench = []
        try:
            _wait_socket(srv, sock, "redis-server", log)
            cmd = [tools["redis-benchmark"], "-s", sock, "-q", "-n", str(n),
                   "-c", str(clients), "-t", ",".join(tests)]
            for _ in range(procs):
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     universal_newlines=True)
                _live.add(p)
                bench.append(p)
            deadline = time.monotonic() + rt.timeout
            sums = {t.upper(): 0.0 for t in tests}
            for i, p in enumerate(bench):
                try:
                    out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RunFailure("redis-benchmark %d of %d: timed out after %ss\n%s"
                                     % (i + 1, procs, rt.timeout, _read_log(log)))
                got = parse_redis_benchmark(out)
                if (p.returncode != 0 or _preload_failed(mode, err)
                        or any(got.get(t, 0) <= 0 for t in sums)):
                    raise RunFailure("redis-benchmark %d of %d exited with status %s, "
                                     "results %s\n--- stdout ---\n%s--- stderr ---\n%s%s"
                                     % (i + 1, procs, p.returncode, got, out[-3000:],
                                        err[-3000:], _read_log(log)))
                _check_accelerated(mode, "redis-benchmark %d of %d" % (i + 1, procs),
                                   err, "client", clients)
                for t in sums:
                    sums[t] += got[t]
            if srv.poll() is not None:
                raise RunFailure("redis-server exited (status %s) during the benchmark\n%s"
                                 % (srv.returncode, _read_log(log)))
            if tools["redis-cli"]:
                subprocess.run([tools["redis-cli"], "-s", sock, "shutdown", "nosave"],
                               env=rt.env("plain"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
            else:
                srv.terminate()
            _expect_exit(srv, "redis-server", "shutdown", 10, mode, log)
            _check_accelerated(mode, "redis-server", _read_log(log, 10 ** 7), "server",
                               procs * clients)
        finally:
            for p in bench + [srv]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                _live.discard(p)
            for f in (sock, log):
                try:
                    os.unlink(f)
                except OSError:
                    pass
        return {"rps": geomean(list(sums.values()))}
    return fn


def _check_preloaded(rt, mode):
    """tsss: bash and the programs it starts really map the library (a
    check outside the timed runs)."""
    if mode != "tsss":
        return
    name = os.path.basename(rt.lib)
    p = _run(["bash", "-c", 'grep -qF -- "$1" /proc/$$/maps && grep -qF -- "$1" /proc/self/maps',
              "check", name], rt.env(mode), 30, what="preload check")
    if p.returncode != 0 or _preload_failed(mode, p.stderr):
        raise RunFailure("%s is not mapped by bash or by the programs it starts "
                         "(status %s)\n%s" % (name, p.returncode, p.stderr))


def startup_bash_fn(runs):
    """A bash script that runs /bin/true `runs` times: wall time (ms)."""
    def fn(rt, mode):
        if not shutil.which("bash") or not os.access("/bin/true", os.X_OK):
            raise SkipCase("bash or /bin/true not installed")
        script = os.path.join(rt.file_dir, "startup-%d.sh" % runs)
        if not os.path.exists(script):
            with open(script, "w") as f:
                f.write('i=0\nwhile [ "$i" -lt %d ]; do\n    /bin/true || exit 1\n'
                        '    i=$((i + 1))\ndone\n' % runs)
        _check_preloaded(rt, mode)
        env = rt.env(mode)
        t0 = time.perf_counter()
        p = _run(["bash", script], env, rt.timeout, what="bash %s" % script)
        ms = (time.perf_counter() - t0) * 1e3
        if p.returncode != 0 or _preload_failed(mode, p.stderr) or p.stderr.strip():
            raise RunFailure("bash %s: status %s\n--- stderr ---\n%s"
                             % (script, p.returncode, p.stderr[-3000:]))
        return {"ms_per_script": ms}
    return fn


def startup_exec_fn(n):
    """execbench: n times fork + exec of /bin/true from a C driver."""
    def fn(rt, mode):
        _check_preloaded(rt, mode)
        r = rt.run_one(mode, ["execbench", n, "/bin/true"])
        return {"us_per_exec": float(r["us_per_exec"])}
    return fn


def shmring_fn(size, total):
    """The hardware limit: a naive spinning SPSC ring in shared memory
    (test-apps/shmring), the stream group's message size and total."""
    def fn(rt, mode):
        r = rt.run_one(mode, ["shmring", size, total])
        if int(r.get("bytes", 0)) < total:
            raise RunFailure("shmring: %s bytes moved, %d expected" % (r.get("bytes"), total))
        return {"gbps": float(r["gbps"]), "mmsgs": float(r["mmsgs"])}
    return fn


def build_cases(quick, groups):
    div = 10 if quick else 1
    cases = []
    if "stream" in groups:
        for size, total in STREAM_TOTALS.items():
            t = max(size, total // div // size * size)
            cases.append(Case("stream", size, [M_GBPS, M_MMSGS], stream_fn(size, t)))
    if "pingpong" in groups:
        for size, iters in PINGPONG_ITERS.items():
            cases.append(Case("pingpong", size, [M_RTT_MED, M_RTT_P99],
                              pingpong_fn(size, max(100, iters // div))))
    if "syscall" in groups:
        cases.append(Case("syscall", 64, [M_NS_CALL], syscost_fn(200000 if quick else 2000000),
                          best_of=3 if quick else 9))
    for (kind, size), total in PIPEFILE_TOTALS.items():
        if kind in groups:
            cases.append(Case(kind, size, [M_GBPS],
                              pipefile_fn(kind, size, max(size, total // div // size * size)),
                              best_of=3 if quick else 9))
    if "webcache" in groups:
        w = WEBCACHE
        cases.append(Case("webcache", w["conns"], [M_RPS, M_GBPS],
                          webcache_fn(w["workers"], w["conns"],
                                      max(10, w["reqs"] // div), w["files"])))
    if "redis" in groups:
        r = REDIS
        cases.append(Case("redis", r["clients"], [M_RPS, M_RPS_P16],
                          redis_fn(max(1000, r["n"] // div), max(1000, r["n_p16"] // div),
                                   r["clients"], r["tests"])))
    if "socat" in groups:
        cases.append(Case("socat", SOCAT_BYTES // div, [M_GBPS],
                          socat_fn(SOCAT_BYTES // div)))
        cases.append(Case("socat_rev", SOCAT_BYTES // div, [M_GBPS],
                          socat_fn(SOCAT_BYTES // div, reverse=True)))
    if "pubsub" in groups:
        cases.append(Case("pubsub", 4096, [M_KMSGS_FWD],
                          pubsub_fn(4, 2, max(200, 20000 // div), 4096)))
    if "ringsize" in groups:
        st = {sz: max(sz, t // div // sz * sz) for sz, t in RING_STREAM.items()}
        pp = {sz: max(100, n // div) for sz, n in RING_PINGPONG.items()}
        for ring in RING_SIZES:
            cases.append(Case("ringsize", ring, M_RING, ringsize_fn(ring, st, pp)))
    if "nginx" in groups:
        n = NGINX
        cases.append(Case("nginx", n["size"], [M_GBPS],
                          nginx_fn(n["size"], max(2, n["gets"] // div))))
    if "postgres" in groups:
        for c in PGBENCH["clients"]:
            cases.append(Case("postgres", c, [M_TPS],
                              postgres_fn(c, max(1, PGBENCH["seconds"] // (3 if quick else 1)))))
    if "limit" in groups:
        for size in LIMIT_SIZES:
            # best of: a limit, which interference only ever lowers (and
            # two spinning processes suffer most from a third runnable one)
            cases.append(Case("limit", size, [M_GBPS, M_MMSGS],
                              shmring_fn(size, STREAM_TOTALS[size]), modes=("limit",),
                              best_of=3 if quick else 5))
    if "startup" in groups:
        st = STARTUP
        reps = 4 if quick else st["repeats"]
        cases.append(Case("startup_bash", st["script_runs"], [M_MS_SCRIPT],
                          startup_bash_fn(st["script_runs"]), reps=reps, sel="startup"))
        cases.append(Case("startup_exec", st["execs"], [M_US_EXEC],
                          startup_exec_fn(st["execs"]), reps=reps, sel="startup"))
    if "busy" in groups or "load" in groups:
        for size, total in BUSY_STREAM.items():
            t = max(size, total // div // size * size)
            cases.append(Case("busy_stream", size, [M_GBPS, M_MMSGS],
                              busy_fn(stream_fn(size, t, accel=True)), sel="busy"))
        for size, iters in BUSY_PINGPONG.items():
            cases.append(Case("busy_pingpong", size, [M_RTT_MED, M_RTT_P99],
                              busy_fn(pingpong_fn(size, max(100, iters // (5 if quick else 1)),
                                                  accel=True)), sel="busy"))
    if "load" in groups:
        lp = LOAD_PGBENCH
        for c in lp["clients"]:
            cases.append(Case("postgres_unpinned", c, [M_TPS],
                              postgres_fn(c, 1 if quick else lp["seconds"], pinned=False,
                                          jobs=min(c, lp["jobs"])), sel="load"))
        lr = LOAD_REDIS
        for procs in lr["procs"]:
            cases.append(Case("redis_procs", procs, [M_RPS],
                              redis_load_fn(procs, lr["clients"],
                                            max(1000, lr["n"] // (5 if quick else 1)),
                                            lr["tests"]), sel="load"))
    if "conns" in groups:
        cn = CONNS
        for n in cn["counts"]:
            cases.append(Case("conns", n, [M_RTT_MED, M_RTT_P99, M_SRV_CPU, M_SETUP, M_ACCEL],
                              conns_fn(n, cn["active"], 0.3 if quick else cn["seconds"]),
                              reps=2 if quick else cn["repeats"],
                              warmup=0 if n >= cn["no_warmup_from"] else None))
    # TSSS_BENCH_EXTRA: reserved for extra cases; ignored for now.
    return cases


# ---------------------------------------------------------------------------
# reporting

def fmt(v):
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return "%.0f" % v
    if a >= 100:
        return "%.1f" % v
    if a >= 10:
        return "%.2f" % v
    if a >= 1:
        return "%.3f" % v
    return "%.4g" % v


def ratio(case, metric):
    p, t = case.median("plain", metric.name), case.median("tsss", metric.name)
    if p is None or t is None or p <= 0 or t <= 0:
        return None
    return t / p if metric.higher_is_better else p / t


def rows(cases):
    for c in cases:
        if c.modes:  # single-mode references: limit_rows
            continue
        for m in c.metrics:
            yield (c, m, c.median("plain", m.name), c.median("tsss", m.name),
                   ratio(c, m))


RATIO_HDR = "ratio (>1 = tsss better)"


def limit_rows(cases):
    """(case, metric, limit, plain stream, tsss stream, tsss/limit,
    plain/limit) for each limit case: the stream group's medians at the
    same message size (None when that group did not run)."""
    for c in cases:
        if c.modes != ("limit",):
            continue
        st = next((x for x in cases if x.group == "stream" and x.size == c.size), None)
        for m in c.metrics:
            lim = c.median("limit", m.name)
            p = st.median("plain", m.name) if st else None
            t = st.median("tsss", m.name) if st else None
            yield (c, m, lim, p, t,
                   t / lim if t and lim else None, p / lim if p and lim else None)


LIMIT_TITLE = ("hardware limit: a naive spinning SPSC ring in shared memory "
               "(test-apps/shmring, 256 KiB, no syscalls), one mode, beside the "
               "stream group at the same message size")
LIMIT_HDR = ["size", "metric", "limit", "tsss stream", "tsss / limit", "plain stream",
             "plain / limit"]


def _limit_cells(r):
    c, m, lim, p, t, tr, pr = r
    x = lambda v: "n/a" if v is None else "%.2fx" % v  # noqa: E731
    return [svgplot.size_label(c.size), "%s [%s]" % (m.name, m.unit), fmt(lim), fmt(t),
            x(tr), fmt(p), x(pr)]


def limit_text_table(cases):
    body = [_limit_cells(r) for r in limit_rows(cases)]
    if not body:
        return ""
    w = [max(len(x[i]) for x in [LIMIT_HDR] + body) for i in range(len(LIMIT_HDR))]
    lines = ["  ".join(x[i].ljust(w[i]) if i < 2 else x[i].rjust(w[i])
                       for i in range(len(w))) for x in [LIMIT_HDR] + body]
    lines.insert(1, "  ".join("-" * n for n in w))
    return LIMIT_TITLE + ":\n" + "\n".join(lines)


def limit_md_table(cases):
    body = [_limit_cells(r) for r in limit_rows(cases)]
    if not body:
        return ""
    out = ["| " + " | ".join(LIMIT_HDR) + " |", "|---:|---|---:|---:|---:|---:|---:|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(out)


def text_table(cases):
    hdr = ["case", "size", "metric", "plain", "tsss", RATIO_HDR]
    body = []
    for c, m, p, t, r in rows(cases):
        body.append([c.group, svgplot.size_label(c.size), "%s [%s]" % (m.name, m.unit),
                     fmt(p), fmt(t), "n/a" if r is None else "%.2fx" % r])
    w = [max(len(str(x[i])) for x in [hdr] + body) for i in range(len(hdr))]
    lines = ["  ".join(str(x[i]).ljust(w[i]) if i < 3 else str(x[i]).rjust(w[i])
                       for i in range(len(hdr))) for x in [hdr] + body]
    lines.insert(1, "  ".join("-" * n for n in w))
    return "\n".join(lines)


def md_table(cases):
    out = ["| case | size | metric | plain | tsss | %s |" % RATIO_HDR,
           "|---|---:|---|---:|---:|---:|"]
    for c, m, p, t, r in rows(cases):
        out.append("| %s | %s | %s [%s] | %s | %s | %s |" % (
            c.group, svgplot.size_label(c.size), m.name, m.unit, fmt(p), fmt(t),
            "n/a" if r is None else "%.2fx" % r))
    return "\n".join(out)


def target_lines(cases):
    out = []
    for group, size, metric, need in TARGETS:
        case = next((c for c in cases if c.group == group and c.size == size), None)
        if case is None:
            continue
        m = next(x for x in case.metrics if x.name == metric)
        r = ratio(case, m)
        if r is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if r >= need else "FALL SHORT"
        out.append("%-10s %s %s %s ratio >= %g: got %s" % (
            verdict, group, svgplot.size_label(size), metric, need,
            "n/a" if r is None else "%.2fx" % r))
    return out


def cpu_model():
    """'model name' of /proc/cpuinfo, with family/model/stepping (a VM's
    model name can be as vague as "Intel(R) Xeon(R) Processor") and the
    hypervisor, if any."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU is enough
                k, _, v = line.partition(":")
                info.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown"
    ids = ["%s %s" % (k, info[k]) for k in ("cpu family", "model", "stepping") if k in info]
    if ids:
        name += " (%s)" % ", ".join(ids).replace("cpu family", "family")
    hv = None
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 universal_newlines=True, timeout=10,
                                 env=dict(os.environ, LC_ALL="C")).stdout
            m = re.search(r"^Hypervisor vendor:\s*(.+)$", out, re.M)
            hv = m and m.group(1).strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if hv:
        name += ", %s guest" % hv
    elif " hypervisor" in " " + info.get("flags", ""):
        name += ", virtual machine"
    return name


def loadavg():
    """The 1, 5 and 15 minute load averages, as text."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def glibc():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or "n/a"
    except (ValueError, OSError):
        return "n/a"


def write_csv(path, cases):
    """Medians.  Rows of case "limit" (one mode): `limit` is the ring's
    median, plain and tsss the stream group's at the same size, ratio
    tsss / limit (the fraction of the hardware limit tsss reaches)."""
    g = lambda v, f="%.6g": "" if v is None else f % v  # noqa: E731
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "size", "metric", "plain", "tsss", "ratio", "repeats", "limit"])
        for c, m, p, t, r in rows(cases):
            n = max(len(c.samples["plain"][m.name]), len(c.samples["tsss"][m.name]))
            w.writerow([c.group, c.size, m.name, g(p), g(t), g(r, "%.4f"), n, ""])
        for c, m, lim, p, t, tr, _ in limit_rows(cases):
            w.writerow([c.group, c.size, m.name, g(p), g(t), g(tr, "%.4f"),
                        len(c.samples["limit"][m.name]), g(lim)])


def write_raw_csv(path, raw):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "size", "mode", "rep", "metric", "value"])
        for row in raw:
            w.writerow(row)


COLORS = {"plain": "#1f77b4", "tsss": "#d62728"}
MARKERS = {"plain": "circle", "tsss": "square"}


def write_plots(out_dir, cases, datestr, host):
    st = [c for c in cases if c.group == "stream"]
    series = []
    for mode in MODES:
        pts = [(c.size, c.median(mode, "gbps")) for c in st]
        if any(y is not None for _, y in pts):
            series.append({"label": mode + (" (LD_PRELOAD)" if mode == "tsss" else ""),
                           "color": COLORS[mode], "marker": MARKERS[mode], "points": pts})
    svg = svgplot.line_chart("AF_UNIX stream throughput, plain vs tsss (%s)" % datestr,
                             "message size (bytes, log2)", "throughput (GB/s, log)",
                             series, subtitle=host)
    with open(os.path.join(out_dir, "throughput.svg"), "w") as f:
        f.write(svg)

    pp = [c for c in cases if c.group == "pingpong"]
    series = []
    for mode in MODES:
        for metric, dash, lab in (("rtt_med_us", False, "median"),
                                  ("rtt_p99_us", True, "p99")):
            pts = [(c.size, c.median(mode, metric)) for c in pp]
            if any(y is not None for _, y in pts):
                series.append({"label": "%s %s" % (mode, lab), "color": COLORS[mode],
                               "marker": MARKERS[mode], "dash": dash,
                               "width": 2 if not dash else 1.5, "points": pts})
    svg = svgplot.line_chart("AF_UNIX ping-pong round-trip time, plain vs tsss (%s)"
                             % datestr, "message size (bytes, log2)",
                             "round-trip time (us, log)", series, subtitle=host)
    with open(os.path.join(out_dir, "rtt.svg"), "w") as f:
        f.write(svg)


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="10x smaller transfers, 2 repeats")
    ap.add_argument("--out", default="bench-results", help="output directory")
    ap.add_argument("--lib", default=os.path.join(ROOT, "target/release/libtsss.so"),
                    help="shim library used as LD_PRELOAD")
    ap.add_argument("--bin", default=os.path.join(ROOT, "test-apps/bin"),
                    help="directory with the test-app binaries")
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats per case and mode (default 5, --quick 2)")
    ap.add_argument("--cases", default=",".join(ALL_GROUPS),
                    help="comma separated groups to run (default: all: %s)"
                    % ",".join(ALL_GROUPS))
    ap.add_argument("--warmup", type=int, default=1,
                    help="discarded warm-up runs per case and mode (default 1)")
    ap.add_argument("--plain-only", action="store_true",
                    help="skip the LD_PRELOAD runs (ratios are n/a)")
    ap.add_argument("--timeout", type=float, default=120,
                    help="per-process timeout in seconds")
    ap.add_argument("--tmpdir", default=None,
                    help="directory for sockets and the file case's temp file")
    args = ap.parse_args()

    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1 or args.warmup < 0:
        sys.exit("error: --repeats must be >= 1 and --warmup >= 0")
    groups = set(x.strip() for x in args.cases.split(",") if x.strip())
    unknown = groups - set(ALL_GROUPS)
    if unknown:
        sys.exit("error: unknown case group(s): %s" % ", ".join(sorted(unknown)))

    bin_dir = os.path.abspath(args.bin)
    for b in sorted(set(x for g in groups for x in GROUP_BINS.get(g, ()))):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            sys.exit("error: test app %s not found in %s (build with: make -C test-apps)"
                     % (b, bin_dir))
    lib = os.path.abspath(args.lib)
    if not args.plain_only and not os.path.isfile(lib):
        sys.exit("error: shim library %s does not exist (build it with "
                 "'cargo build --release', pass --lib PATH, or use --plain-only)" % lib)
    modes = ("plain",) if args.plain_only else MODES

    base_tmp = tempfile.mkdtemp(prefix="tsss-bench.", dir=args.tmpdir)
    atexit.register(shutil.rmtree, base_tmp, True)
    atexit.register(_kill_live)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    out_dir = args.out
    os.makedirs(out_dir, exist_ok=True)
    runner = Runner(bin_dir, _lib_for_all(lib), base_tmp, base_tmp, args.timeout)
    cases = build_cases(args.quick, groups)

    now = datetime.datetime.now().astimezone()
    datestr = now.strftime("%Y-%m-%d %H:%M")
    kernel = platform.release()
    cpu = cpu_model()
    ncpu = os.cpu_count()
    host = "kernel %s, %s, %s CPUs" % (kernel, cpu, ncpu)
    load0 = loadavg()
    print("tsss bench, %s" % now.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print("  CPU:     %s, %s logical CPUs" % (cpu, ncpu))
    print("  kernel:  %s (%s), %s" % (kernel, platform.machine(), glibc()))
    print("  load:    %s (1/5/15 min averages at the start: other work on the "
          "machine makes every figure noisier)" % load0)
    print("  run:     repeats=%d%s, groups %s, lib=%s" % (
        repeats, " quick" if args.quick else "",
        ",".join(g for g in ALL_GROUPS if g in groups),
        "(plain only)" if args.plain_only else lib), flush=True)

    failures = []
    skipped = []
    raw = []
    t_start = time.monotonic()
    for case in list(cases):
        # rep < 0: discarded warm-up runs (first touch of memory / page cache
        # in a fresh VM is much slower); their failures still count.
        skip = None
        t_case = time.monotonic()
        cmodes = case.modes or modes
        warmup = args.warmup if case.warmup is None else min(case.warmup, args.warmup)
        for rep in range(-warmup, case.best_of or case.reps or repeats):
            if skip:
                break
            order = cmodes if rep % 2 == 0 else tuple(reversed(cmodes))
            for mode in order:
                try:
                    vals = case.fn(runner, mode)
                    if isinstance(vals, (list, tuple)):
                        vals = dict(vals)
                except SkipCase as e:
                    skip = "SKIPPED: %s: %s" % (case.label(), e)
                    break
                except RunFailure as e:
                    case.failed = True
                    msg = "FAILURE: %s [%s] repeat %d: %s" % (case.label(), mode, rep, e)
                    failures.append(msg)
                    sys.stderr.write(msg.rstrip() + "\n")
                    continue
                if rep < 0:
                    continue
                for k, v in vals.items():
                    if k in case.samples[mode]:
                        case.samples[mode][k].append(v)
                    raw.append([case.group, case.size, mode, rep, k, v])
        case.secs = time.monotonic() - t_case
        if skip:
            skipped.append(skip)
            cases.remove(case)
            sys.stderr.write("  " + skip + "\n")
            sys.stderr.flush()
            continue
        first = case.metrics[0].name
        if case.modes:
            vals = " ".join("%s %-9s" % (m, fmt(case.median(m, first))) for m in case.modes)
        else:
            vals = "plain %-9s tsss %-9s" % (fmt(case.median("plain", first)),
                                            fmt(case.median("tsss", first)))
        sys.stderr.write("  %-20s %s %s (%.0f s)\n" % (case.label(), vals, first, case.secs))
        sys.stderr.flush()
    elapsed = time.monotonic() - t_start
    load1 = loadavg()
    group_secs = {}
    for c in cases:
        group_secs[c.sel] = group_secs.get(c.sel, 0.0) + c.secs
    by_group = ", ".join("%s %.0f s" % (g, group_secs[g]) for g in ALL_GROUPS if g in group_secs)

    table = text_table(cases)
    print()
    print(table)
    print("ratio: tsss/plain for throughput, plain/tsss for RTT; >1 means tsss is better")
    print()
    lt = limit_text_table(cases)
    if lt:
        print(lt)
        print()
    print("run time: %.0f s (%s); load average at the end: %s" % (elapsed, by_group, load1))
    print()
    tl = target_lines(cases)
    if tl:
        print("targets:")
        for l in tl:
            print("  " + l)

    write_csv(os.path.join(out_dir, "bench.csv"), cases)
    write_raw_csv(os.path.join(out_dir, "raw.csv"), raw)
    write_plots(out_dir, cases, datestr, host)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("# tsss benchmark results\n\n")
        f.write("- date: %s\n" % now.isoformat(timespec="seconds"))
        f.write("- kernel: %s (%s), %s\n" % (kernel, platform.machine(), glibc()))
        f.write("- CPU: %s, %s logical CPUs\n" % (cpu, ncpu))
        f.write("- load average (1/5/15 min): %s at the start, %s at the end\n"
                % (load0, load1))
        f.write("- shim: %s\n" % ("(plain only)" if args.plain_only else lib))
        f.write("- pipe/file: best of 9 runs per mode (overhead measurement)\n")
        f.write("- repeats: %d per case and mode (median reported)%s; own counts: %s\n"
                % (repeats, ", --quick" if args.quick else "",
                   ", ".join(sorted(set("%s %d" % (c.group, c.reps) for c in cases
                                        if c.reps))) or "none"))
        f.write("- run time: %.0f s (%s)\n\n" % (elapsed, by_group))
        f.write("ratio: tsss/plain for throughput, plain/tsss for RTT; "
                "**> 1 means tsss is better**.\n\n")
        f.write(md_table(cases) + "\n\n")
        lm = limit_md_table(cases)
        if lm:
            f.write("## Hardware limit\n\n%s.\n\n%s\n\n" % (LIMIT_TITLE[0].upper()
                                                             + LIMIT_TITLE[1:], lm))
        if tl:
            f.write("## Targets\n\n")
            for l in tl:
                f.write("- %s\n" % l)
            f.write("\n")
        f.write("![throughput](throughput.svg)\n\n![rtt](rtt.svg)\n")
        if skipped:
            f.write("\n## Skipped\n\n")
            for m in skipped:
                f.write("- %s\n" % m)
        if failures:
            f.write("\n## FAILURES\n\n")
            for m in failures:
                f.write("```\n%s\n```\n" % m.rstrip())
    print("\nwrote %s/{bench.csv,raw.csv,throughput.svg,rtt.svg,summary.md} (%.0f s)"
          % (out_dir, elapsed))

    for m in skipped:
        print(m)
    if failures:
        print("\n%d FAILURE(S):" % len(failures))
        for m in failures:
            print("  " + m.splitlines()[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
