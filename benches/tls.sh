#!/usr/bin/env bash
# The cost of TLS: the same instances sent to one server over plain DICOM and over its TLS
# listener (`dimse.tls_listen`, rustls), with one storescu each way, alternating, ROUNDS
# times; and the same STOW-RS request over http and https (curl). Release build, standalone,
# a self-signed certificate made with openssl, no client certificates (the handshake's
# certificate check is per association, not per instance).
#
#   bash benches/tls.sh                 # 1000 instances of 0.5 MB, 3 rounds
#   COUNT=2000 ROUNDS=5 bash benches/tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${BENCH_DIR:-target/bench-tls}"
COUNT="${COUNT:-1000}"
ROUNDS="${ROUNDS:-3}"
command -v /usr/bin/storescu >/dev/null || { echo "needs dcmtk (apt-get install dcmtk)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p kuvasto-server -p kuvasto-benches --bin kuvasto --bin loadgen
    BIN=$PWD/target/release
fi
rm -rf "$DIR" && mkdir -p "$DIR"
"$BIN/loadgen" write-files --dir "$DIR/files" --count "$COUNT" --size-bytes 524288 >/dev/null
bytes=$(du -bc "$DIR"/files/*.dcm | tail -1 | cut -f1)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$DIR/server.key" -out "$DIR/server.crt" 2>/dev/null
config() { # http.tls (true|false) -> $DIR/kuvasto.toml
    cat > "$DIR/kuvasto.toml" <<EOF
[storage]
data_dir = "$DIR/data"
[http]
listen = "127.0.0.1:0"
tls = $1
[dimse]
listen = "127.0.0.1:0"
tls_listen = "127.0.0.1:0"
[tls]
certificate_file = "$DIR/server.crt"
private_key_file = "$DIR/server.key"
EOF
}
config false
seconds() { date +%s.%N; }
start() { # sets $server, $plain, $secure
    rm -rf "$DIR/data" "$DIR"/*-addr
    "$BIN/kuvasto" serve --profile standalone --config "$DIR/kuvasto.toml" \
        --address-file "$DIR/http-addr" --dimse-address-file "$DIR/dimse-addr" \
        --dimse-tls-address-file "$DIR/tls-addr" > "$DIR/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do [ -s "$DIR/tls-addr" ] && break; sleep 0.1; done
    plain=$(cat "$DIR/dimse-addr"); secure=$(cat "$DIR/tls-addr")
}
stop() { kill "$server"; wait "$server" || true; }
send() { # label host:port [tls args...]
    local label=$1 address=$2; shift 2
    local t0 t1
    t0=$(seconds)
    TCP_NODELAY=1 /usr/bin/storescu -aec KUVASTO "$@" "${address%:*}" "${address##*:}" \
        "$DIR"/files/*.dcm
    t1=$(seconds)
    echo "$label: $(echo "$COUNT / ($t1 - $t0)" | bc -l | xargs printf '%.0f') instances/s, $(echo "$bytes / ($t1 - $t0) / 1000000" | bc -l | xargs printf '%.0f') MB/s"
}
for round in $(seq "$ROUNDS"); do
    start; send "round $round, storescu plain" "$plain"; stop
    start; send "round $round, storescu +tls " "$secure" +tls "$DIR/server.key" "$DIR/server.crt" +cf "$DIR/server.crt"; stop
done

# STOW-RS of all the instances in one multipart request, http and https.
python3 - "$DIR" <<'PY'
import glob, sys
d = sys.argv[1]
with open(f"{d}/stow.body", "wb") as out:
    for f in sorted(glob.glob(f"{d}/files/*.dcm")):
        out.write(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + open(f, "rb").read() + b"\r\n")
    out.write(b"--B--\r\n")
PY
stow() { # label url [curl args...]
    local label=$1 url=$2; shift 2
    curl -s -o /dev/null -w "$label: %{http_code}, %{time_total} s, %{speed_upload} B/s up\n" \
        -H 'Content-Type: multipart/related; type="application/dicom"; boundary=B' \
        -H "Expect:" --data-binary "@$DIR/stow.body" "$@" "$url/dicom-web/studies"
}
for round in $(seq "$ROUNDS"); do
    start; stow "round $round, STOW http " "http://$(cat "$DIR/http-addr")"; stop
done
config true
for round in $(seq "$ROUNDS"); do
    start; stow "round $round, STOW https" "https://$(cat "$DIR/http-addr")" --cacert "$DIR/server.crt"; stop
done
