#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable for the
# same binary and inputs whatever else the machine is doing, so two builds
# can be compared on a busy machine where wall-clock CPU figures drift.
#
#   benches/callgrind.sh [BIN ...]     # default: target/release/wayfinder
#   CONNS=8 REQUESTS=20000 benches/callgrind.sh old/wayfinder target/release/wayfinder
#   EXTRA=$'[metrics]\nenabled = false' benches/callgrind.sh   # config tables appended
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
# Only loopback is used; every wait is bounded; only processes this script
# started are stopped.
set -euo pipefail

CONNS=${CONNS:-8}
SECS=${SECS:-20}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
BINS=("$@")
((${#BINS[@]})) || BINS=("$ROOT/target/release/wayfinder")

for tool in valgrind callgrind_control nginx wrk; do
    command -v "$tool" >/dev/null || {
        echo "callgrind.sh: $tool is missing (apt-get install valgrind nginx-light wrk)" >&2
        exit 1
    }
done

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

printf '%-50s %12s %14s %10s\n' binary requests instructions per_req
for bin in "${BINS[@]}"; do
    port=$(free_port)
    cfg="$TMP/wf-$port.toml"
    cat >"$cfg" <<EOF
listen = ["127.0.0.1:$port"]
[admin]
listen = "off"
[runtime]
worker_threads = 1
[services.bench]
instances = ["127.0.0.1:$BPORT"]
${EXTRA:-}
EOF
    out="$TMP/cg-$port.out"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin" --log-level error run --config "$cfg" >"$TMP/wf-$port.log" 2>&1 &
    vpid=$!
    PIDS+=("$vpid")
    wait_port "$port"
    # Warm-up: pools, first-use allocations.
    timeout 60 wrk -t1 -c"$CONNS" -d3s -H 'Host: bench.svc' "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -i on "$vpid" >/dev/null
    wrk_out=$(timeout 120 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'Host: bench.svc' "http://127.0.0.1:$port/")
    callgrind_control -i off "$vpid" >/dev/null
    requests=$(awk '/requests in/ { print $1 }' <<<"$wrk_out")
    errors=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$wrk_out")
    [[ -z $errors ]] || echo "callgrind.sh: $bin: $errors" >&2
    callgrind_control -d "$vpid" >/dev/null
    kill -INT "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    total=0
    for f in "$out"*; do
        n=$(awk '/^totals:/ { print $2 }' "$f" 2>/dev/null || true)
        [[ -n $n ]] && total=$((total + n))
    done
    printf '%-50s %12s %14s %10s\n' "$bin" "$requests" "$total" \
        "$(awk -v t="$total" -v r="$requests" 'BEGIN { printf "%.0f", t / r }')"
done
