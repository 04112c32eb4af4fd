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
)
missing=()
for cmd in "${!PKGS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKGS[$cmd]}")
done
# Static glibc for the "statically linked peer" test.
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/libc.a ] || missing+=(libc6-dev)

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
# Debian starts redis-server as a service on install; tests run their own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
