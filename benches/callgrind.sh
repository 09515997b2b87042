#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable for the
# same binary and inputs whatever else the machine is doing, so two builds
# can be compared on a busy machine where wall-clock CPU figures drift.
#
#   benches/callgrind.sh [BIN ...]     # default: target/release/wayfinder
#   CONNS=8 REQUESTS=20000 benches/callgrind.sh old/wayfinder target/release/wayfinder
#   EXTRA=$'[metrics]\nenabled = false' benches/callgrind.sh   # config tables appended
#   MODE=h2c REQUESTS=20000 benches/callgrind.sh                # HTTP/2 clients
#
# The cost of a setting is two runs of the same binary, one with EXTRA:
# e.g. metrics on (the default) against EXTRA='[metrics] enabled = false'.
#
# For each binary: one nginx instance answering "hello" on loopback, the
# proxy (one worker thread) under `valgrind --tool=callgrind` with
# instrumentation off, a warm-up burst, then instrumentation on for SECS
# seconds of keep-alive load from `wrk` (CONNS connections; the request
# count is read from wrk's output), then off again. Instructions / requests
# is the figure; it includes everything the process does meanwhile (the
# runtime, timers, the reaper), not only the request path. The traffic
# shape is the e2e harness's GET / with a 5-byte answer.
#
# MODE picks the client side (protocols.sh's shapes, issue 14):
#   h1     (default) wrk over HTTP/1.1, SECS seconds, CONNS connections
#   h2c    h2load -n REQUESTS -c H2_CONNS -m H2_STREAMS over cleartext
#          HTTP/2 (prior knowledge); the proxy forwards over HTTP/1.1
#   h2tls  the same over TLS (ALPN h2), with a certificate from
#          `wayfinder cert`; the handshakes are in the count
#   grpc   h2load sending one gRPC unary call (12-byte framed message)
#          over h2c; the proxy forwards over h2c to one gRPC instance
#          (examples/bench_backend.rs: BACKEND_BIN, default
#          target/release/examples/bench_backend)
# The h2 modes send a fixed number of requests (REQUESTS, default 20000;
# H2_CONNS=4, H2_STREAMS=16), so two builds get exactly the same load.
#
# KEEP=DIR copies each binary's callgrind files there (callgrind.N.*, N =
# the binary's position; the dump taken after the load holds the run),
# for `callgrind_annotate --inclusive=yes`.
#
# Only loopback is used; every wait is bounded; only processes this script
# started are stopped.
set -euo pipefail

CONNS=${CONNS:-8}
SECS=${SECS:-20}
MODE=${MODE:-h1}
REQUESTS=${REQUESTS:-20000}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-16}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
BINS=("$@")
((${#BINS[@]})) || BINS=("$ROOT/target/release/wayfinder")

case $MODE in
h1) TOOLS=(valgrind callgrind_control nginx wrk) ;;
h2c | h2tls | grpc) TOOLS=(valgrind callgrind_control nginx h2load) ;;
*)
    echo "callgrind.sh: MODE=$MODE: not one of h1 h2c h2tls grpc" >&2
    exit 1
    ;;
esac
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || {
        echo "callgrind.sh: $tool is missing (apt-get install valgrind nginx-light wrk nghttp2-client)" >&2
        exit 1
    }
done
BACKEND_BIN=${BACKEND_BIN:-$ROOT/target/release/examples/bench_backend}
if [[ $MODE == grpc && ! -x $BACKEND_BIN ]]; then
    echo "callgrind.sh: $BACKEND_BIN is missing (cargo build --release --example bench_backend)" >&2
    exit 1
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port
    for _ in $(seq 1 300); do
        (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "callgrind.sh: nothing listens on $1" >&2
    exit 1
}

BPORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $TMP/nginx/error.log;
pid $TMP/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$BPORT; location / { return 200 "hello"; } }
}
EOF
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" &
PIDS+=($!)
wait_port "$BPORT"
if [[ $MODE == grpc ]]; then
    GPORT=$(free_port)
    "$BACKEND_BIN" grpc "127.0.0.1:$GPORT" >/dev/null &
    PIDS+=($!)
    wait_port "$GPORT"
    # One gRPC message, framed: no compression, length 7, field 1 = "hello".
    printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$TMP/grpc.bin"
fi
if [[ $MODE == h2tls ]]; then
    "${BINS[0]}" cert --out "$TMP/pki" --name localhost --name 127.0.0.1 >/dev/null
fi

# load PORT SECONDS|REQUESTS: the client side of one run; prints the
# number of requests that succeeded.
load() {
    local port=$1 amount=$2 out
    case $MODE in
    h1)
        out=$(timeout 120 wrk -t1 -c"$CONNS" -d"${amount}s" -H 'Host: bench.svc' "http://127.0.0.1:$port/")
        errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
        [[ -z $errors ]] || echo "callgrind.sh: $errors" >&2
        awk '/requests in/ { print $1 }' <<<"$out"
        ;;
    *)
        local url="http://127.0.0.1:$port/" extra=()
        [[ $MODE == h2tls ]] && url="https://127.0.0.1:$port/"
        if [[ $MODE == grpc ]]; then
            url="http://127.0.0.1:$port/bench.Echo/Say"
            extra=(-d "$TMP/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers')
        fi
        out=$(timeout 300 h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -n"$amount" \
            "${extra[@]}" "$url")
        # "requests: T total, S started, D done, OK succeeded, F failed, ..."
        local ok2xx
        ok2xx=$(awk '/^status codes:/ { print $3 }' <<<"$out")
        [[ $ok2xx == "$amount" ]] || echo "callgrind.sh: only ${ok2xx:-0} of $amount got 2xx" >&2
        awk '/^requests:/ { print $8 }' <<<"$out"
        ;;
    esac
}

printf '%-50s %12s %14s %10s\n' binary requests instructions per_req
for bin in "${BINS[@]}"; do
    port=$(free_port)
    cfg="$TMP/wf-$port.toml"
    listen="listen = [\"127.0.0.1:$port\"]" routes="" service=bench
    [[ $MODE == grpc ]] && service=grpc
    if [[ $MODE == h2tls ]]; then
        listen="listen = [\"127.0.0.1:$(free_port)\"]
[[tls]]
listen = [\"127.0.0.1:$port\"]
certificates = [{ cert = \"$TMP/pki/server.crt\", key = \"$TMP/pki/server.key\" }]"
    fi
    # HTTP/2 clients send :authority 127.0.0.1:PORT: a route by path.
    [[ $MODE == h1 ]] || routes="[[routes]]
path = \"/\"
service = \"$service\""
    if [[ $MODE == grpc ]]; then
        routes+="
[services.grpc]
protocol = \"h2c\"
instances = [\"127.0.0.1:$GPORT\"]"
    fi
    cat >"$cfg" <<EOF
$listen
[admin]
listen = "off"
[runtime]
worker_threads = 1
[services.bench]
instances = ["127.0.0.1:$BPORT"]
$routes
${EXTRA:-}
EOF
    out="$TMP/cg-$port.out"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin" --log-level error run --config "$cfg" >"$TMP/wf-$port.log" 2>&1 &
    vpid=$!
    PIDS+=("$vpid")
    wait_port "$port"
    # Warm-up: pools, first-use allocations.
    if [[ $MODE == h1 ]]; then
        load "$port" 3 >/dev/null
        callgrind_control -i on "$vpid" >/dev/null 2>&1
        requests=$(load "$port" "$SECS")
    else
        load "$port" 2000 >/dev/null
        callgrind_control -i on "$vpid" >/dev/null 2>&1
        requests=$(load "$port" "$REQUESTS")
    fi
    callgrind_control -i off "$vpid" >/dev/null 2>&1
    callgrind_control -d "$vpid" >/dev/null 2>&1
    kill -INT "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    total=0
    for f in "$out"*; do
        n=$(awk '/^totals:/ { print $2 }' "$f" 2>/dev/null || true)
        [[ -n $n ]] && total=$((total + n))
    done
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP"
        kept=$((${kept:-0} + 1))
        for f in "$out"*; do cp "$f" "$KEEP/callgrind.$kept.${f##*.}"; done
    fi
    printf '%-50s %12s %14s %10s\n' "$bin" "$requests" "$total" \
        "$(awk -v t="$total" -v r="$requests" 'BEGIN { printf "%.0f", t / r }')"
done
