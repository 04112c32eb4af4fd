#!/usr/bin/env bash
# Checks the install paths of `tsss`, as tests/tools.rs runs it (after
# `make`): `make install DESTDIR=...` then `make uninstall`, and, as root
# on a Debian machine, the package from `make deb`: `dpkg -i`, `tsss run`
# from /usr/bin with an accelerated connection, `dpkg -r`.
# Builds nothing with cargo (CARGO=true): a test must not wait for the
# cargo lock its own `cargo test` holds. Prints "package-test: ok" last.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
unset TSSS_LIB
D=$(mktemp -d /tmp/tsss-destdir.XXXXXX)
cleanup() { rm -rf "$D"; }
trap cleanup EXIT

# ------------------------------------------------------------ make install
make -s install CARGO=true DESTDIR="$D" PREFIX=/usr/local >/dev/null
P=$D/usr/local
for f in bin/tsss lib/tsss/libtsss.so \
         share/man/man1/tsss.1.gz share/man/man1/tsss-run.1.gz \
         share/man/man1/tsss-stat.1.gz share/man/man1/tsss-doctor.1.gz \
         share/man/man7/tsss.7.gz share/bash-completion/completions/tsss \
         share/zsh/vendor-completions/_tsss share/fish/vendor_completions.d/tsss.fish; do
    [ -s "$P/$f" ] || fail "make install did not install $f"
done
zcat "$P/share/man/man1/tsss-stat.1.gz" | grep -q '^\.TH' || fail "tsss-stat.1 is not a man page"
zcat "$P/share/man/man7/tsss.7.gz" | grep -q 'TSSS_RING_SIZE' || fail "tsss.7 lacks the variables"
grep -q 'complete' "$P/share/bash-completion/completions/tsss" || fail "no bash completion"
# The installed binary finds the installed library (../lib/tsss), not the build tree's.
out=$("$P/bin/tsss" run -- sh -c 'echo "$LD_PRELOAD"')
[ "$out" = "$P/lib/tsss/libtsss.so" ] || fail "installed tsss run preloads '$out'"
make -s uninstall CARGO=true DESTDIR="$D" PREFIX=/usr/local >/dev/null
left=$(find "$D" -type f)
[ -z "$left" ] || fail "make uninstall left: $left"
[ ! -e "$P/lib/tsss" ] || fail "make uninstall left $P/lib/tsss"
echo "package-test: make install and uninstall ok"

# ------------------------------------------------------------ make deb
[ "${1:-}" = "--no-deb" ] && { echo "package-test: ok"; exit 0; }
command -v dpkg-deb >/dev/null || fail "dpkg-deb is not installed"
[ "$(id -u)" = 0 ] || fail "installing the package needs root"
if dpkg -s tsss >/dev/null 2>&1; then
    fail "a tsss package is installed already; not replacing it (dpkg -r tsss first)"
fi
make -s deb CARGO=true >/dev/null
deb=$(ls -t target/tsss_*.deb | head -n1)
cleanup() { dpkg -r tsss >/dev/null 2>&1 || true; rm -rf "$D"; }
dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb failed"
dpkg -s tsss | grep -q '^Status: install ok installed' || fail "dpkg -s: not installed"
[ -x /usr/bin/tsss ] || fail "no /usr/bin/tsss"
[ -f /usr/lib/tsss/libtsss.so ] || fail "no /usr/lib/tsss/libtsss.so"
out=$(/usr/bin/tsss run -- sh -c 'echo "$LD_PRELOAD"')
[ "$out" = /usr/lib/tsss/libtsss.so ] || fail "packaged tsss run preloads '$out'"
# An accelerated connection, both ends started by the packaged tsss run.
S=$D/pp.sock
/usr/bin/tsss run --log info -- test-apps/bin/pingpong server "$S" >"$D/server.out" 2>&1 &
spid=$!
for _ in $(seq 100); do [ -S "$S" ] && break; sleep 0.05; done
/usr/bin/tsss run --log info -- test-apps/bin/pingpong client "$S" 64 200 >"$D/client.out" 2>&1 ||
    fail "pingpong client failed: $(cat "$D/client.out")"
wait "$spid" || fail "pingpong server failed: $(cat "$D/server.out")"
grep -q 'accelerated (client' "$D/client.out" || fail "not accelerated: $(cat "$D/client.out")"
grep -q 'accelerated (server' "$D/server.out" || fail "not accelerated: $(cat "$D/server.out")"
/usr/bin/tsss doctor /usr/bin/tsss >/dev/null || fail "packaged tsss doctor failed"
dpkg -r tsss >/dev/null || fail "dpkg -r tsss failed"
dpkg -s tsss 2>/dev/null | grep -q '^Status: install ok installed' && fail "still installed after dpkg -r"
for f in /usr/bin/tsss /usr/lib/tsss /usr/share/man/man1/tsss.1.gz /usr/share/man/man7/tsss.7.gz \
         /usr/share/bash-completion/completions/tsss; do
    [ ! -e "$f" ] || fail "dpkg -r left $f"
done
echo "package-test: ok"
