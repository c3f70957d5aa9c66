#!/usr/bin/env bash
# DIMSE C-STORE throughput of this build against another build of `kuvasto`, alternating in
# the same run (the baseline of benches/README.md's "Archive rules" table): one storescu, then
# `dimse_load` with 16 associations, each on a fresh server; receiver CPU per instance.
#
#   git worktree add /tmp/prev <rev> && (cd /tmp/prev && CARGO_TARGET_DIR=/tmp/prev-target \
#       cargo build --release -p kuvasto-server)
#   PREVIOUS=/tmp/prev-target/release/kuvasto bash benches/compare_builds.sh
#
# PREVIOUS_ARGS / THIS_ARGS are extra `serve` flags (default: this build runs
# `--profile standalone`, since the generated files are not national ones).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREVIOUS:?set PREVIOUS to the kuvasto binary of the other build}"
DIR="${BENCH_DIR:-target/bench-compare}"
COUNT=${COUNT:-2000}
ROUNDS=${ROUNDS:-3}
cargo build --release -q -p kuvasto-server -p kuvasto-benches --bin kuvasto --bin loadgen --bin dimse_load
rm -rf "$DIR"; mkdir -p "$DIR"
target/release/loadgen write-files --dir "$DIR/files" --count "$COUNT" --size-bytes 524288 >/dev/null
start() { # binary extra...
    local bin=$1; shift
    rm -rf "$DIR/data" "$DIR/dimse-addr"
    "$bin" serve "$@" --data-dir "$DIR/data" --http-listen 127.0.0.1:0 --dimse-listen 127.0.0.1:0 \
        --dimse-address-file "$DIR/dimse-addr" 2>"$DIR/server.log" &
    server=$!
    for _ in $(seq 1 100); do [ -s "$DIR/dimse-addr" ] && break; sleep 0.1; done
    port=$(cut -d: -f2 <"$DIR/dimse-addr")
}
rate() { awk -v s="$1" -v e="$2" -v n="$COUNT" 'BEGIN{printf "%.0f", n/(e-s)}'; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # label binary extra...
    local label=$1; shift
    local s e c0 c1
    start "$@"; c0=$(cpu "$server"); s=$(date +%s.%N)
    TCP_NODELAY=1 /usr/bin/storescu -aec KUVASTO +sd 127.0.0.1 "$port" "$DIR/files" >"$DIR/scu.log" 2>&1
    e=$(date +%s.%N); c1=$(cpu "$server")
    local n1; n1=$(rate "$s" "$e"); local cpu1; cpu1=$(awk -v t=$((c1-c0)) -v n="$COUNT" 'BEGIN{printf "%.2f", t/100/n*1000}')
    kill "$server"; wait "$server" 2>/dev/null || true
    start "$@"; c0=$(cpu "$server"); s=$(date +%s.%N)
    target/release/dimse_load --address "127.0.0.1:$port" --dir "$DIR/files" --clients 16 >"$DIR/load.log" 2>&1
    e=$(date +%s.%N); c1=$(cpu "$server")
    local n16; n16=$(rate "$s" "$e"); local cpu16; cpu16=$(awk -v t=$((c1-c0)) -v n="$COUNT" 'BEGIN{printf "%.2f", t/100/n*1000}')
    kill "$server"; wait "$server" 2>/dev/null || true
    echo "$label: storescu x1 $n1/s (server $cpu1 ms CPU/instance), dimse_load x16 $n16/s (server $cpu16 ms CPU/instance)"
}
# shellcheck disable=SC2086 # the ARGS are word lists
for _ in $(seq 1 "$ROUNDS"); do
    run "other build ($PREVIOUS)" "$PREVIOUS" ${PREVIOUS_ARGS:-}
    run "this build" target/release/kuvasto ${THIS_ARGS:---profile standalone}
done
rm -rf "$DIR"
