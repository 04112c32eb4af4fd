#!/usr/bin/env bash
# Installs what `make test` and `make bench` need on a fresh Debian machine.
# Idempotent: does nothing when every tool is present. Needs root for apt-get.
set -euo pipefail

# command -> Debian package
declare -A PKGS=(
    [gcc]=gcc
    [make]=make
    [python3]=python3
    [socat]=socat
    [redis-server]=redis-server
    [redis-benchmark]=redis-tools
    [ipcs]=util-linux
    [setpriv]=util-linux
    [nginx]=nginx
    [curl]=curl
    # bench.py's header names the hypervisor
    [lscpu]=util-linux
    # bench.py's startup group times a bash script
    [bash]=bash
    # bench.py's busy loops (busy and load groups)
    [sh]=dash
    # tests/integration.rs runs both ends under valgrind, and counts a
    # one-sided client's system calls with strace
    [valgrind]=valgrind
    [strace]=strace
)
missing=()
for cmd in "${!PKGS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKGS[$cmd]}")
done
# Static glibc for the "statically linked peer" test.
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/libc.a ] || missing+=(libc6-dev)
# PostgreSQL's programs live in /usr/lib/postgresql/<version>/bin, not on PATH
# (the package `postgresql` brings the server, pgbench and the client psql).
pg_ok=
for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pgbench" ] && [ -x "$d/psql" ]; then pg_ok=1; fi
done
[ -n "$pg_ok" ] || missing+=(postgresql)

# `make miri` (part of `make test`): nightly Rust with the miri and rust-src
# components, through rustup (per user, no root needed).
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || { echo "deps: need rustup to install miri (make miri)" >&2; exit 1; }
    echo "deps: installing miri (nightly toolchain)"
    if rustup toolchain list | grep -q '^nightly'; then
        rustup component add --toolchain nightly miri rust-src
    else
        rustup toolchain install nightly --profile minimal --component miri,rust-src
    fi
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts these as services on install; tests run their own instances.
for svc in redis-server nginx postgresql; do
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO systemctl disable "$svc" >/dev/null 2>&1 || true
    fi
    if [ ! -d /run/systemd/system ] && [ -x "/etc/init.d/$svc" ]; then
        $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
done
