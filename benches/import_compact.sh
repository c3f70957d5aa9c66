#!/usr/bin/env bash
# The bulk-import and online-compaction measurement of issue 7, release build, standalone:
#
# 1. a generated folder (CT_FILES x 0.5 MiB CT in studies of 100, XA_FILES x 50 MiB multi-frame
#    XA in studies of 8, and pydicom's sample files when .venv has them; ~20 GB by default);
# 2. `cat` of the whole folder with a cold page cache (the read baseline), then
#    `kuvasto import --jobs JOBS` of it into an empty store, cold again;
# 3. `dd` of the same byte count (the write baselines, `benches/lib.sh`);
# 4. `kuvasto serve` on that store, half the CT studies deleted over DICOMweb, then
#    `kuvasto compact` through the admin socket while `loadgen wado` reads the other half.
#
# Needs about 2.1 x the folder's size free under DIR and root (for drop_caches).
# Usage: bash benches/import_compact.sh [DIR]      (default /tmp/kuvasto-import-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/kuvasto-import-bench}
CT_FILES=${CT_FILES:-30000}
XA_FILES=${XA_FILES:-96}
JOBS=${JOBS:-4}
SEGMENT_MIB=${SEGMENT_MIB:-1024}
source benches/lib.sh

# BIN: a directory holding `kuvasto` and `loadgen` already built (default: build them).
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p kuvasto-server --bin kuvasto
    cargo build --release -q -p kuvasto-benches --bin loadgen
    BIN=$PWD/target/release
fi
rm -rf "$DIR"
mkdir -p "$DIR/src"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
seconds() { date +%s.%N; }

"$BIN/loadgen" write-files --seed 7100 --instances-per-study 100 --dir "$DIR/src/ct" \
    --count "$CT_FILES" --size-bytes 524288
"$BIN/loadgen" write-files --seed 7101 --instances-per-study 8 --dir "$DIR/src/xa" \
    --count "$XA_FILES" --size-bytes 52428800
samples=$(ls -d .venv/lib/python3*/site-packages/pydicom/data/test_files 2>/dev/null | head -1 || true)
if [ -n "$samples" ]; then cp -r "$samples" "$DIR/src/pydicom"; fi
files=$(find "$DIR/src" -type f | wc -l)
bytes=$(du -sb "$DIR/src" | cut -f1)
echo "source: $files files, $bytes bytes"

cold
t0=$(seconds); find "$DIR/src" -type f -print0 | xargs -0 cat > /dev/null; t1=$(seconds)
echo "cat, cold: $(echo "$bytes / ($t1 - $t0) / 1000000" | bc -l | xargs printf '%.0f') MB/s"

cold
t0=$(seconds)
"$BIN/kuvasto" import --profile standalone --data-dir "$DIR/data" --segment-size-mib "$SEGMENT_MIB" --jobs "$JOBS" \
    --report "$DIR/import.tsv" "$DIR/src" | grep -v "^import:" || true
t1=$(seconds)
secs=$(echo "$t1 - $t0" | bc -l)
echo "import, cold, $JOBS jobs: $(printf '%.1f' "$secs") s, $(echo "$files / $secs" | bc -l | xargs printf '%.0f') files/s, $(echo "$bytes / $secs / 1000000" | bc -l | xargs printf '%.0f') MB/s"
# At most 4 GiB: the store and the source already take 2 x the folder.
dd_baseline $(( bytes < 4294967296 ? bytes : 4294967296 ))

# Online compaction: half the CT studies deleted, then compacted while WADO-RS reads go on.
"$BIN/kuvasto" serve --profile standalone --data-dir "$DIR/data" --segment-size-mib "$SEGMENT_MIB" --http-listen 127.0.0.1:0 \
    --dimse-listen 127.0.0.1:0 --address-file "$DIR/addr" > "$DIR/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$DIR/addr" ] && break; sleep 0.1; done
addr=$(cat "$DIR/addr")
studies=$(curl -s "http://$addr/dicom-web/studies?ModalitiesInStudy=CT&limit=10000" \
    | python3 -c 'import json,sys; print("\n".join(s["0020000D"]["Value"][0] for s in json.load(sys.stdin)))')
n=0
for study in $studies; do
    n=$((n + 1))
    if [ $((n % 2)) -eq 0 ]; then
        curl -s -o /dev/null -X DELETE "http://$addr/dicom-web/studies/$study"
    fi
done
echo "deleted $((n / 2)) of $n CT studies"
# The reads' baseline: the same load with no compaction running.
"$BIN/loadgen" wado --address-file "$DIR/addr" --clients 4 --duration-seconds "${READ_SECONDS:-30}" \
    > "$DIR/wado-baseline.txt" 2>&1
echo "reads, no compaction (loadgen wado, ${READ_SECONDS:-30} s):"; grep -E "^wado:|latency" "$DIR/wado-baseline.txt"
# The reads' window: READ_SECONDS from the start of the compaction.
"$BIN/loadgen" wado --address-file "$DIR/addr" --clients 4 --duration-seconds "${READ_SECONDS:-30}" \
    --json > "$DIR/wado.json" 2> "$DIR/wado.err" &
reader=$!
t0=$(seconds)
"$BIN/kuvasto" compact --profile standalone --data-dir "$DIR/data" --segment-size-mib "$SEGMENT_MIB" --garbage-ratio-min 0.3 --json > "$DIR/compact.json" 2> "$DIR/compact.err"
t1=$(seconds)
wait $reader || echo "loadgen wado failed: $(tail -3 "$DIR/wado.err")"
python3 - "$DIR/compact.json" "$(echo "$t1 - $t0" | bc -l)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); secs = float(sys.argv[2])
moved = r["bytes_after"]
print(f"compact, online: {len(r['segments_removed'])} segments ({r['bytes_before']} bytes) -> "
      f"{len(r['segments_written'])} ({moved} bytes), {r['objects_moved']} objects, {secs:.1f} s, "
      f"{moved / secs / 1e6:.0f} MB/s copied")
PY
echo "reads from the start of the compaction (loadgen wado, ${READ_SECONDS:-30} s):"
python3 - "$DIR/wado.json" <<'PY'
import json, sys
k = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["kinds"]["wado"]
print("wado: %d ok, %d failed; %.1f/s; %.1f MB/s; p50 %.2f ms p99 %.2f ms max %.1f ms"
      % (k["ok"], k["failed"], k["per_s"], k["mb_per_s"], k["p50_ms"], k["p99_ms"], k["max_ms"]))
PY
kill $server; wait $server || true
trap - EXIT
