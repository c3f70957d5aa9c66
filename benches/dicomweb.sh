#!/usr/bin/env bash
# DICOMweb load figures, each beside a raw-disk baseline measured in the same run:
#   STOW of 0.5 MB CT at 8 clients, STOW of 50 MB at 1 and 4 clients, WADO-RS of 50 MB
#   instances, against `dd` of the same byte count with `oflag=direct` and
#   `conv=fdatasync`; peak server RSS. Writes to $BENCH_DIR (default target/bench-dicomweb,
#   about 12 GB at peak). QIDO at a million instances: see benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${BENCH_DIR:-target/bench-dicomweb}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
SECONDS_STOW="${SECONDS_STOW:-15}"
cargo build --release -q -p kuvasto-server -p kuvasto-benches --bin kuvasto --bin loadgen
KUVASTO=target/release/kuvasto
LOADGEN=target/release/loadgen

server_pid=""
start() {
    rm -rf "$DIR" && mkdir -p "$DIR"
    "$KUVASTO" serve --profile standalone --data-dir "$DIR/data" --http-listen 127.0.0.1:0 --dimse-listen 127.0.0.1:0 \
        --address-file "$DIR/addr" 2>"$DIR/server.log" &
    server_pid=$!
    for _ in $(seq 1 100); do [ -s "$DIR/addr" ] && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}
stop() {
    echo "peak server RSS: $(awk '/VmHWM/ {print int($2/1024)}' /proc/$server_pid/status) MiB"
    kill "$server_pid"; wait "$server_pid" || true
}
stored_bytes() { grep -Eo '[0-9,]+ B in total' | tr -d ', B' | sed 's/intotal//'; }

echo "== STOW 0.5 MB CT, 8 clients, ${SECONDS_STOW} s"
start
out=$("$LOADGEN" --address-file "$DIR/addr" --clients 8 --duration-seconds "$SECONDS_STOW" stow --size-bytes 524288)
echo "$out" | grep -E "^stow:|latency"
stop
dd_baseline "$(echo "$out" | grep '^stow:' | stored_bytes)"

for clients in 1 4; do
    echo "== STOW 50 MB, $clients client(s), 40 instances"
    start
    out=$("$LOADGEN" --address-file "$DIR/addr" --clients "$clients" --requests 40 stow --size-bytes 52428800)
    echo "$out" | grep -E "^stow:|latency"
    dd_baseline "$(echo "$out" | grep '^stow:' | stored_bytes)"
    if [ "$clients" = 4 ]; then
        for wado_clients in 1 4; do
            echo "== WADO-RS of the 50 MB instances, $wado_clients client(s), 8 s"
            "$LOADGEN" --address-file "$DIR/addr" --clients "$wado_clients" --duration-seconds 8 wado | grep -E "^wado:|latency"
        done
    fi
    stop
done
rm -rf "$DIR"
