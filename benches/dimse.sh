#!/usr/bin/env bash
# DIMSE C-STORE throughput with dcmtk's storescu (TCP_NODELAY=1), each figure beside baselines
# measured in the same run: dcmtk's own storescp receiving the same files (the DICOM
# reference server; it does not fsync), and `dd` of the same byte count with
# `oflag=direct` and `conv=fdatasync`. Also the CPU seconds the server and the senders used,
# since the senders share the machine's cores, and the same files sent by `dimse_load` (a
# sender that does not parse them; 16 associations) to show the server's own capacity.
#
#   bash benches/dimse.sh            # 4000 instances of 0.5 MB, 8 storescu processes
#   COUNT=8000 SENDERS=4 bash benches/dimse.sh
#
# Writes to $BENCH_DIR (default target/bench-dimse; about 3 x COUNT x 0.5 MB at peak).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${BENCH_DIR:-target/bench-dimse}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
COUNT="${COUNT:-4000}"
SENDERS="${SENDERS:-8}"
SIZE_BYTES="${SIZE_BYTES:-524288}"
command -v /usr/bin/storescu >/dev/null || { echo "needs dcmtk (apt-get install dcmtk)" >&2; exit 1; }
cargo build --release -q -p kuvasto-server -p kuvasto-benches --bin kuvasto --bin loadgen \
    --bin dimse_load
KUVASTO="$PWD/target/release/kuvasto"
LOADGEN="$PWD/target/release/loadgen"
DIMSE_LOAD="$PWD/target/release/dimse_load"

rm -rf "$DIR" && mkdir -p "$DIR"
"$LOADGEN" write-files --dir "$DIR/files" --count "$COUNT" --size-bytes "$SIZE_BYTES"
for i in $(seq 0 $((SENDERS - 1))); do mkdir -p "$DIR/split$SENDERS/$i"; done
mkdir -p "$DIR/split1/0"
i=0
for f in "$DIR"/files/*.dcm; do
    ln -s "$PWD/$f" "$DIR/split$SENDERS/$((i % SENDERS))/"
    ln -s "$PWD/$f" "$DIR/split1/0/"
    i=$((i + 1))
done
bytes=$(du -bLc "$DIR"/files/*.dcm | tail -1 | cut -f1)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# A fresh server on an empty data directory: sets $server and $port.
start_server() {
    rm -rf "$DIR/data" "$DIR/dimse-addr"
    "$KUVASTO" serve --profile standalone --data-dir "$DIR/data" --http-listen 127.0.0.1:0 --dimse-listen 127.0.0.1:0 \
        --dimse-address-file "$DIR/dimse-addr" 2>"$DIR/server.log" &
    server=$!
    for _ in $(seq 1 100); do [ -s "$DIR/dimse-addr" ] && break; sleep 0.1; done
    port=$(cut -d: -f2 <"$DIR/dimse-addr")
}
hz=$(getconf CLK_TCK)

# Runs one storescu per directory of split$4 against PORT; prints instances/s and CPU use.
send_all() { # port label pid senders
    local port=$1 label=$2 pid=$3 split="$DIR/split$4"
    local before after start end
    before=$(cpu_ticks "$pid")
    start=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$DIR/senders.cpu" bash -c '
        for d in "$1"/*; do
            TCP_NODELAY=1 /usr/bin/storescu -aec KUVASTO +sd "127.0.0.1" "$2" "$d" >"$d.log" 2>&1 &
        done
        wait' _ "$split" "$port"
    end=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    failed=$(cat "$split"/*.log | grep -c "^E:" || true)
    awk -v n="$COUNT" -v b="$bytes" -v s="$start" -v e="$end" -v t=$((after - before)) \
        -v hz="$hz" -v label="$label, $4 sender(s)" -v failed="$failed" -v senders="$(cat "$DIR/senders.cpu")" '
        BEGIN {
            split(senders, c, " "); w = e - s
            printf "%s: %d instances in %.2f s = %.0f instances/s, %.0f MB/s; receiver CPU %.2f s (%.2f ms/instance), storescu CPU %.2f s; errors %d\n",
                label, n, w, n / w, b / w / 1e6, t / hz, t / hz / n * 1000, c[1] + c[2], failed
        }'
}

echo "== $COUNT instances of $SIZE_BYTES bytes, $SENDERS storescu processes ($((bytes / 1000000)) MB)"
start_server
send_all "$port" "kuvasto (fdatasync before each response)" "$server" "$SENDERS"
stored=$(grep -c 'action="store"' "$DIR/server.log" || true)
echo "stored: $stored; peak server RSS: $(awk '/VmHWM/ {print int($2/1024)}' /proc/$server/status) MiB"
kill "$server"; wait "$server" || true

start_server
send_all "$port" "kuvasto (fdatasync before each response)" "$server" 1
kill "$server"; wait "$server" || true

start_server
before=$(cpu_ticks "$server")
/usr/bin/time -f "dimse_load CPU %U + %S s" "$DIMSE_LOAD" --address "127.0.0.1:$port" \
    --dir "$DIR/files" --clients 16
echo "receiver CPU $(awk -v t=$(( $(cpu_ticks "$server") - before )) -v hz="$hz" -v n="$COUNT" \
    'BEGIN { printf "%.2f s (%.2f ms/instance)", t / hz, t / hz / n * 1000 }')"
kill "$server"; wait "$server" || true
rm -rf "$DIR/data"

# The reference: one storescp process serving one association at a time.
mkdir -p "$DIR/storescp"
TCP_NODELAY=1 /usr/bin/storescp -aet KUVASTO -od "$DIR/storescp" 11399 2>"$DIR/storescp.log" &
scp=$!
sleep 0.5
send_all 11399 "dcmtk storescp (no fsync)" "$scp" 1
kill "$scp"; wait "$scp" 2>/dev/null || true
rm -rf "$DIR/storescp"

dd_baseline "$bytes"
rm -rf "$DIR"
