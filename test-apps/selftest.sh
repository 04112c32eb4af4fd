#!/usr/bin/env bash
# Self-test of the test apps (also usable as an integration test for tsss):
#   ./selftest.sh                      plain
#   PRELOAD=/path/libtsss.so ./selftest.sh   every process under LD_PRELOAD
# Exits non-zero if any case fails.  Negative cases (CORRUPT_AT) must fail
# with MISMATCH.
set -u
cd "$(dirname "$0")"
BIN=${BIN:-./bin}
PRELOAD=${PRELOAD:-}
TMO=${TMO:-120}
D=$(mktemp -d "${TMPDIR:-/tmp}/tsss-selftest.XXXXXX")
fails=0
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    rm -rf "$D"
}
trap cleanup EXIT

run() { # run CMD... under optional LD_PRELOAD with a timeout
    if [ -n "$PRELOAD" ]; then
        LD_PRELOAD=$PRELOAD timeout "$TMO" "$@"
    else
        timeout "$TMO" "$@"
    fi
}

wait_path() {
    for _ in $(seq 1 1000); do [ -S "$1" ] && return 0; sleep 0.01; done
    echo "socket $1 did not appear" >&2; return 1
}

ok()  { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }

check_out() { # name rc outfile errfile
    if [ "$2" -eq 0 ] && grep -q '^RESULT .*ok=1' "$3"; then ok "$1"
    else bad "$1 (rc=$2)"; sed 's/^/    /' "$4" "$3"; fi
}

# pair NAME EXPECT(pass|mismatch) SERVER-ARGS -- CLIENT-ARGS  (client may use env via `env`)
pair() {
    local name=$1 expect=$2; shift 2
    local sargs=() cargs=()
    while [ "$1" != "--" ]; do sargs+=("$1"); shift; done; shift
    cargs=("$@")
    local sock=$D/sock
    rm -f "$sock"
    run "${sargs[@]}" >"$D/s.out" 2>"$D/s.err" & local sp=$!
    pids+=("$sp")
    wait_path "$sock" || { bad "$name (server did not start)"; kill "$sp" 2>/dev/null; cat "$D/s.err"; return; }
    run "${cargs[@]}" >"$D/c.out" 2>"$D/c.err"; local crc=$?
    wait "$sp"; local src=$?
    if [ "$expect" = pass ]; then
        check_out "$name [client]" "$crc" "$D/c.out" "$D/c.err"
        check_out "$name [server]" "$src" "$D/s.out" "$D/s.err"
    else
        if [ "$crc" -ne 0 ] && grep -q MISMATCH "$D/c.err"; then ok "$name (detected: $(head -1 "$D/c.err"))"
        else bad "$name: corruption NOT detected (rc=$crc)"; cat "$D/c.out" "$D/c.err"; fi
    fi
}

S=$D/sock
for sz in 1 16 100 4096 65536 1048576; do
    case $sz in 1) tot=1M ;; 16|100) tot=16M ;; *) tot=256M ;; esac
    pair "stream $sz" pass $BIN/stream server "$S" -- $BIN/stream client "$S" $sz $tot
done
pair "stream corrupt" mismatch $BIN/stream server "$S" -- env CORRUPT_AT=12345 $BIN/stream client "$S" 64 1M

# 4 concurrent clients against one multi-connection stream server
rm -f "$S"
run $BIN/stream server "$S" -n 4 >"$D/m.out" 2>"$D/m.err" & mp=$!; pids+=("$mp")
if wait_path "$S"; then
    cps=()
    for i in 1 2 3 4; do run $BIN/stream client "$S" $((i * 1000)) 32M >"$D/m$i.out" 2>"$D/m$i.err" & cps+=($!); done
    for i in 1 2 3 4; do wait "${cps[$((i - 1))]}"; check_out "stream -n 4 client $i" $? "$D/m$i.out" "$D/m$i.err"; done
fi
wait "$mp"; check_out "stream -n 4 server" $? "$D/m.out" "$D/m.err"

for sz in 1 16 1024 16384; do
    pair "pingpong $sz" pass $BIN/pingpong server "$S" -- $BIN/pingpong client "$S" $sz 2000
done
pair "pingpong corrupt" mismatch $BIN/pingpong server "$S" -- env CORRUPT_AT=7 $BIN/pingpong client "$S" 64 100

pair "echo lt 100 conns" pass $BIN/echo_server "$S" lt --max-conns 100 -- $BIN/echo_client "$S" 100 1000 512
pair "echo et 100 conns" pass $BIN/echo_server "$S" et --max-conns 100 -- $BIN/echo_client "$S" 100 1000 512
pair "echo lt --one-byte 100 conns" pass $BIN/echo_server "$S" lt --one-byte --max-conns 100 -- $BIN/echo_client "$S" 100 20 512
pair "echo lt --one-byte big msgs" pass $BIN/echo_server "$S" lt --one-byte --max-conns 2 -- $BIN/echo_client "$S" 2 2 200k
pair "echo et big msgs" pass $BIN/echo_server "$S" et --max-conns 3 -- $BIN/echo_client "$S" 3 20 1m
pair "echo corrupt" mismatch $BIN/echo_server "$S" et --max-conns 1 -- env CORRUPT_AT=777 $BIN/echo_client "$S" 1 10 512

pair "connbench 200 conns" pass $BIN/connbench server "$S" -- $BIN/connbench client "$S" 200 10 20000
pair "connbench 50 conns 0.2s" pass $BIN/connbench server "$S" -- $BIN/connbench client "$S" 50 10 0.2s
pair "connbench corrupt" mismatch $BIN/connbench server "$S" -- env CORRUPT_AT=33 $BIN/connbench client "$S" 20 5 1000

for sz in 1 64 4096 65536 262144; do
    run $BIN/shmring $sz $((sz == 1 ? 16 : 256))M >"$D/r.out" 2>"$D/r.err"
    check_out "shmring $sz" $? "$D/r.out" "$D/r.err"
done
run $BIN/shmring 100 64M 4K >"$D/r.out" 2>"$D/r.err"
check_out "shmring 100 (4K ring)" $? "$D/r.out" "$D/r.err"
if CORRUPT_AT=4567 run $BIN/shmring 64 1M >"$D/r.out" 2>"$D/r.err"; then
    bad "shmring corrupt: corruption NOT detected"
elif grep -q MISMATCH "$D/r.err"; then ok "shmring corrupt (detected: $(head -1 "$D/r.err"))"
else bad "shmring corrupt: failed without MISMATCH"; cat "$D/r.err"; fi

run $BIN/execbench 20 /bin/true >"$D/x.out" 2>"$D/x.err"
check_out "execbench 20 /bin/true" $? "$D/x.out" "$D/x.err"
if run $BIN/execbench 2 /bin/false >"$D/x.out" 2>"$D/x.err"; then bad "execbench /bin/false: failure NOT detected"
else ok "execbench /bin/false fails"; fi

for kind in pipe file; do
    for sz in 1 4096 65536; do
        extra=(); [ $kind = file ] && extra=("$D")
        run $BIN/pipefile $kind $sz $((sz == 1 ? 1000000 : 256 * 1048576)) "${extra[@]}" >"$D/p.out" 2>"$D/p.err"
        check_out "pipefile $kind $sz" $? "$D/p.out" "$D/p.err"
    done
done

if [ "$fails" -ne 0 ]; then echo "$fails FAILURE(S)"; exit 1; fi
echo "all passed"
