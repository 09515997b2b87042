#!/usr/bin/env bash
# Issue 14's comparison: HTTP/2 (h2c by prior knowledge, and h2 over TLS),
# gRPC unary and TLS handshakes through wayfinder, nginx and HAProxy, in
# the same run, interleaved.
#
#   h2c       h2load over cleartext HTTP/2 to each proxy, which forwards over
#             HTTP/1.1 to the three nginx instances of run.sh ("hello")
#   h2tls     the same over TLS (ALPN h2)
#   grpc      h2load sending one fixed gRPC unary call (bench.Echo/Say, a
#             12-byte framed message; content-type application/grpc,
#             te: trailers) over h2c to each proxy, which forwards over
#             h2c to three gRPC instances (examples/bench_backend.rs, tonic):
#             nginx grpc_pass, HAProxy `proto h2`, wayfinder protocol "h2c"
#   tls-full  new TLS connections per second, full handshakes, each
#             carrying one HTTP/1.0 GET: `openssl s_time -new -www /`,
#             HS_PROCS clients in parallel
#   tls-resume  the same with session resumption: `openssl s_time -reuse`
#             (TLS 1.3 tickets; every connection after each client's first
#             must resume, checked from s_time's per-connection marks).
#             The GET makes the client read the ticket the server sends
#             after the handshake; without it, a client that closes at
#             once often has no ticket yet and cannot resume.
#
# Every proxy runs one worker pinned to PROXY_CPU, serves the same
# certificate (ECDSA P-256, made by `wayfinder cert`), with session
# tickets and a session cache on; the load tools and the instances share
# WRK_CPU. Per run: rate (req/s, calls/s, handshakes/s) and the proxy's
# CPU per request/call/handshake from /proc. Medians over N rounds.
#
# Settings (environment):
#   N=3 DURATION=5s WARMUP=2s PROXY_CPU=0 WRK_CPU=1
#   H2_CONNS=4 H2_STREAMS=16   h2load connections and streams per connection
#   HS_PROCS=4                 parallel s_time clients
#   TESTS="h2c h2tls grpc tls-full tls-resume"   run only these
#   WAYFINDER_BIN, BACKEND_BIN, KEEP_TMP=1
#   NICE=-10       run the servers and load tools at this niceness (shared
#                  machines; negative values need root)
#
# Only loopback is used; every wait and run is bounded; on exit only the
# processes this script started are stopped, by PID.
set -euo pipefail

N=${N:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-16}
HS_PROCS=${HS_PROCS:-4}
TESTS=${TESTS:-h2c h2tls grpc tls-full tls-resume}

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BODY=hello
DUR_S=$(secs "$DURATION")
WARM_S=$(secs "$WARMUP")
PROXIES=(nginx haproxy wayfinder)
GRPC_PATH=/bench.Echo/Say
GRPC_REPLY_BYTES=12 # the echoed frame: 5-byte prefix + 7-byte message

write_backend() { # $1 = name, $2 = port
    mkdir -p "$TMP/$1-tmp"
    {
        nginx_common "$1"
        cat <<EOF
    default_type text/plain;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 "$BODY"; }
    }
}
EOF
    } >"$TMP/$1.conf"
}

write_nginx() {
    mkdir -p "$TMP/nginx-tmp"
    {
        nginx_common nginx
        echo "    upstream bench {"
        for b in "${B[@]}"; do echo "        server 127.0.0.1:$b;"; done
        echo "        keepalive 64;"
        echo "        keepalive_requests 1000000;"
        echo "    }"
        echo "    upstream grpc {"
        for b in "${G[@]}"; do echo "        server 127.0.0.1:$b;"; done
        echo "        keepalive 64;"
        echo "        keepalive_requests 1000000;"
        echo "    }"
        cat <<EOF
    ssl_certificate $TMP/pki/server.crt;
    ssl_certificate_key $TMP/pki/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:${H2C[nginx]} http2;
        listen 127.0.0.1:${TLS[nginx]} ssl http2;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
        location /bench.Echo/ {
            grpc_pass grpc://grpc;
            grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
    } >"$TMP/nginx.conf"
}

write_haproxy() {
    local i
    cat "$TMP/pki/server.crt" "$TMP/pki/server.key" >"$TMP/pki/haproxy.pem"
    {
        cat <<EOF
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:${H2C[haproxy]} proto h2
    bind 127.0.0.1:${TLS[haproxy]} ssl crt $TMP/pki/haproxy.pem alpn h2,http/1.1
    use_backend grpc if { path_beg /bench.Echo/ }
    default_backend be
backend be
    balance roundrobin
EOF
        for i in 0 1 2; do echo "    server b$i 127.0.0.1:${B[$i]}"; done
        echo "backend grpc"
        echo "    balance roundrobin"
        for i in 0 1 2; do echo "    server g$i 127.0.0.1:${G[$i]} proto h2"; done
    } >"$TMP/haproxy.cfg"
}

write_wayfinder() {
    local list="" glist="" b
    for b in "${B[@]}"; do list+="\"127.0.0.1:$b\", "; done
    for b in "${G[@]}"; do glist+="\"127.0.0.1:$b\", "; done
    cat >"$TMP/wayfinder.toml" <<EOF
listen = ["127.0.0.1:${H2C[wayfinder]}"]

[admin]
listen = "off"

[[tls]]
listen = ["127.0.0.1:${TLS[wayfinder]}"]
certificates = [{ cert = "pki/server.crt", key = "pki/server.key" }]

[[routes]]
path = "/bench.Echo/"
service = "grpc"

[[routes]]
path = "/"
service = "bench"

[services.bench]
instances = [${list%, }]

[services.grpc]
protocol = "h2c"
instances = [${glist%, }]
EOF
}

# Waits (at most 10 s) until proxy $1 answers all three ways: h2c and h2
# over TLS with "hello", and the gRPC call with grpc-status 0.
wait_ready_h2() {
    local name=$1 pid=$2 h2c tls grpc
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || {
            cat "$TMP/$name.log" >&2
            die "$name exited during start-up (log above)"
        }
        h2c=$(timeout 2 curl -s --http2-prior-knowledge "http://127.0.0.1:${H2C[$name]}/" || true)
        tls=$(timeout 2 curl -s --http2 --cacert "$TMP/pki/ca.crt" \
            "https://127.0.0.1:${TLS[$name]}/" || true)
        grpc=$(timeout 2 nghttp -v -n -d "$TMP/grpc.bin" -H 'content-type: application/grpc' \
            -H 'te: trailers' "http://127.0.0.1:${H2C[$name]}$GRPC_PATH" 2>&1 || true)
        [[ $GRPC == 1 ]] || grpc="grpc-status: 0 (not tested)"
        if [[ $h2c == "$BODY" && $tls == "$BODY" && $grpc == *"grpc-status: 0"* ]]; then
            return
        fi
        sleep 0.1
    done
    cat "$TMP/$name.log" >&2
    die "$name not ready after 10 s (h2c: '${h2c:-}', tls: '${tls:-}', grpc: $(grep -o 'grpc-[a-z]*: .*' <<<"$grpc" | tr '\n' ' '))"
}

# Seconds (float) since the epoch.
now() { date +%s.%N; }

# run_test TEST PROXY SECONDS RECORD: one run; with RECORD=1 appends to
# $TMP/results: test proxy rate cpu_us_per_op own_pct other_pct wrk_pct
# mean_latency_us errors sys_us_per_op (h2load's mean, in the raw results only: with
# -D it reads far above what 64 requests in flight at that rate allow, so
# the table leaves it out).
run_test() {
    local test=$1 proxy=$2 dur=$3 record=$4 pid
    local out="$TMP/$test-$proxy-$(date +%s%N)" t0 t1 s0 s1 pc0 pc1 wc0 wc1 w0 w1
    local ops errs mean=0 url
    pid=${PID[$proxy]}
    t0=$(cpu_ticks "$pid") s0=$(sys_ticks "$pid")
    pc0=$(core_ticks "$PROXY_CPU") wc0=$(core_ticks "$WRK_CPU")
    w0=$(now)
    case $test in
    h2c | h2tls | grpc)
        local extra=()
        url="http://127.0.0.1:${H2C[$proxy]}/"
        [[ $test == h2tls ]] && url="https://127.0.0.1:${TLS[$proxy]}/"
        if [[ $test == grpc ]]; then
            url="http://127.0.0.1:${H2C[$proxy]}$GRPC_PATH"
            extra=(-d "$TMP/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers')
        fi
        timeout -k 5 $((dur + 30)) taskset -c "$WRK_CPU" "${NICE_CMD[@]}" \
            h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$dur" "${extra[@]}" "$url" \
            >"$out" 2>&1 || die "h2load failed: $test against $proxy (see $out)"
        ;;
    tls-full | tls-resume)
        local mode=-new i spids=()
        [[ $test == tls-resume ]] && mode=-reuse
        for i in $(seq "$HS_PROCS"); do
            timeout -k 5 $((dur + 30)) taskset -c "$WRK_CPU" "${NICE_CMD[@]}" \
                openssl s_time -connect "127.0.0.1:${TLS[$proxy]}" "$mode" -time "$dur" -www / \
                >"$out.$i" 2>&1 &
            spids+=($!)
        done
        for i in "${spids[@]}"; do
            wait "$i" || die "openssl s_time failed: $test against $proxy (see $out.*)"
        done
        ;;
    esac
    w1=$(now)
    t1=$(cpu_ticks "$pid") s1=$(sys_ticks "$pid")
    pc1=$(core_ticks "$PROXY_CPU") wc1=$(core_ticks "$WRK_CPU")
    [[ $record == 1 ]] || return 0
    case $test in
    h2c | h2tls | grpc)
        # h2load: "requests: T total, S started, D done, OK succeeded, F failed, E errored, X timeout"
        read -r ops errs < <(awk '/^requests:/ { print $8, $10 + $12 + $14 }' "$out")
        [[ -n ${ops:-} ]] || die "no h2load result: $test against $proxy: $(cat "$out")"
        local ok2xx data
        ok2xx=$(awk '/^status codes:/ { print $3 }' "$out")
        # A request with a 2xx head that then failed is already in errs.
        ((ops <= ok2xx)) || errs=$((errs + ops - ok2xx))
        # The time h2load measured (excludes its start-up), for the rate.
        local took
        took=$(awk '/^finished in/ { sub(/s,$/, "", $3); print $3 }' "$out")
        w0=0 w1=$took
        mean=$(awk '/^time for request:/ { v = $5
            if (v ~ /us$/) { sub(/us$/, "", v); print v }
            else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
            else { sub(/s$/, "", v); print v * 1e6 } }' "$out")
        if [[ $test == grpc ]]; then
            # Every call must have come back with the echoed message: a
            # proxy's own gRPC error (HTTP 200, grpc-status in headers) has
            # no body. h2load's "data" is the response payload received.
            data=$(awk '/^traffic:/ { for (i = 1; i <= NF; i++) if ($i == "data") { d = $(i - 1) } }
                END { gsub(/[()]/, "", d); print d }' "$out")
            local missing=$(((ops * GRPC_REPLY_BYTES - data) / GRPC_REPLY_BYTES))
            ((missing <= 0)) || errs=$((errs + missing))
        fi
        ;;
    tls-full | tls-resume)
        ops=0 errs=0
        local i n r
        for i in $(seq "$HS_PROCS"); do
            n=$(awk '/connections in .* real seconds/ { print $1 }' "$out.$i")
            [[ -n $n ]] || die "no s_time result: $test against $proxy: $(cat "$out.$i")"
            ops=$((ops + n))
            if [[ $test == tls-resume ]]; then
                # s_time marks each timed connection: 'r' resumed, '*' full
                # (its first, untimed connection primes the session); every
                # one not marked resumed is an error.
                r=$(grep -E '^[*r]+$' "$out.$i" | tr -cd 'r' | wc -c)
                errs=$((errs + n - r))
            fi
        done
        ;;
    esac
    awk -v t="$test" -v p="$proxy" -v n="$ops" -v wall="$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" \
        -v dt=$((t1 - t0)) -v ds=$((s1 - s0)) -v hz="$CLK_TCK" -v e="$errs" -v mean="$mean" \
        -v pc="$pc0 $pc1" -v wc="$wc0 $wc1" 'BEGIN {
            cpu_s = dt / hz
            split(pc, q, " "); split(wc, w, " ")
            own_pct = cpu_s / wall * 100
            pcore = (q[4] > q[2] ? (q[3] - q[1]) / (q[4] - q[2]) * 100 : 0)
            wcore = (w[4] > w[2] ? (w[3] - w[1]) / (w[4] - w[2]) * 100 : 0)
            other = pcore - own_pct
            printf "%s %s %.1f %.2f %.1f %.1f %.1f %.0f %d %.2f\n", t, p, n / wall,
                (n > 0 ? cpu_s * 1e6 / n : 0), own_pct, (other > 0 ? other : 0), wcore, mean, e,
                (n > 0 ? ds / hz * 1e6 / n : 0)
        }' >>"$TMP/results"
    log "$(printf '%-10s %-9s %s' "$test" "$proxy" "$(tail -n1 "$TMP/results" | cut -d' ' -f3-)")"
}

# median TEST PROXY COLUMN
median2() {
    awk -v t="$1" -v p="$2" -v k="$3" '$1 == t && $2 == p { print $k }' "$TMP/results" |
        sort -g | awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}
spread2() {
    awk -v t="$1" -v p="$2" -v k="$3" -v m="$4" '$1 == t && $2 == p {
            v = $k; if (seen++ == 0) lo = hi = v; if (v < lo) lo = v; if (v > hi) hi = v }
        END { printf "%.1f", (m > 0 ? (hi - lo) / m * 100 : 0) }' "$TMP/results"
}
total2() {
    awk -v t="$1" -v p="$2" '$1 == t && $2 == p { s += $9 } END { print s + 0 }' "$TMP/results"
}

# === main ===

install_tools h2load=nghttp2-client nghttp=nghttp2-client curl=curl openssl=openssl
build_wayfinder
# The gRPC instances (and so the example build) only when gRPC is tested.
GRPC=0
[[ " $TESTS " != *" grpc "* ]] || GRPC=1
((GRPC == 0)) || build_backend
TMP=$(mktemp -d /tmp/wayfinder-proto.XXXXXX)
chmod 755 "$TMP" # nginx workers drop to an unprivileged user
"$WAYFINDER_BIN" cert --out "$TMP/pki" --name localhost --name 127.0.0.1 >&2
chmod 644 "$TMP/pki/"*
# One gRPC message, framed: no compression, length 7, field 1 = "hello".
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$TMP/grpc.bin"

pick_ports 12
B=("${PORTS[@]:0:3}") G=("${PORTS[@]:3:3}")
declare -A PID H2C TLS
H2C[nginx]=${PORTS[6]} TLS[nginx]=${PORTS[7]}
H2C[haproxy]=${PORTS[8]} TLS[haproxy]=${PORTS[9]}
H2C[wayfinder]=${PORTS[10]} TLS[wayfinder]=${PORTS[11]}
log "nginx instances on ${B[*]}, gRPC instances on ${G[*]}"

for i in 0 1 2; do
    write_backend "backend$i" "${B[$i]}"
    start "backend$i" "$WRK_CPU" nginx -e "$TMP/backend$i.log" -p "$TMP" -c "$TMP/backend$i.conf"
    wait_ready "backend$i" "${B[$i]}" "$STARTED"
    ((GRPC == 0)) || start "grpc$i" "$WRK_CPU" "$BACKEND_BIN" grpc "127.0.0.1:${G[$i]}"
done

write_nginx
start nginx "$PROXY_CPU" nginx -e "$TMP/nginx.log" -p "$TMP" -c "$TMP/nginx.conf"
PID[nginx]=$STARTED
write_haproxy
start haproxy "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg"
PID[haproxy]=$STARTED
write_wayfinder
start wayfinder "$PROXY_CPU" env TOKIO_WORKER_THREADS=1 \
    "$WAYFINDER_BIN" --log-level warn run --config "$TMP/wayfinder.toml"
PID[wayfinder]=$STARTED
for p in "${PROXIES[@]}"; do
    wait_ready_h2 "$p" "${PID[$p]}"
done

log "versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -n1 | cut -d' ' -f1-3), $(h2load --version | head -n1), $(openssl version | cut -d' ' -f1-2), kernel $(uname -r)"
LOAD_BEFORE=$(load_note)
log "$LOAD_BEFORE"
check_idle
log "warm-up: ${WARM_S}s per test and proxy"
for test in $TESTS; do
    for p in "${PROXIES[@]}"; do
        run_test "$test" "$p" "$WARM_S" 0
    done
done

: >"$TMP/results"
for round in $(seq "$N"); do
    log "round $round/$N (${DUR_S}s per run; $(load_note))"
    for test in $TESTS; do
        for p in "${PROXIES[@]}"; do
            run_test "$test" "$p" "$DUR_S" 1
        done
    done
done
LOAD_AFTER=$(load_note)

echo
echo "wayfinder protocols: N=$N rounds of ${DUR_S}s runs, medians. Proxies pinned to CPU" \
    "$PROXY_CPU (1 worker each); h2load -t1 -c$H2_CONNS -m$H2_STREAMS, $HS_PROCS openssl s_time" \
    "clients and the instances on CPU $WRK_CPU. $LOAD_BEFORE before, $LOAD_AFTER after."
fmt='%-10s %-9s %9s %5s %8s %8s %5s %6s %5s %6s %8s %8s %7s %7s\n'
# shellcheck disable=SC2059
printf "$fmt" test proxy "rate/s" "+-%" "cpuus/op" "sysus/op" "own%" "other%" "wrk%" "errs" \
    "rate/ngx" "rate/hap" "cpu/ngx" "cpu/hap"
for test in $TESTS; do
    for p in "${PROXIES[@]}"; do
        rate=$(median2 "$test" "$p" 3) cpu=$(median2 "$test" "$p" 4)
        # shellcheck disable=SC2059
        printf "$fmt" "$test" "$p" "$(printf '%.0f' "$rate")" "$(spread2 "$test" "$p" 3 "$rate")" \
            "$(printf '%.2f' "$cpu")" "$(printf '%.2f' "$(median2 "$test" "$p" 10)")" \
            "$(printf '%.0f' "$(median2 "$test" "$p" 5)")" \
            "$(printf '%.0f' "$(median2 "$test" "$p" 6)")" \
            "$(printf '%.0f' "$(median2 "$test" "$p" 7)")" \
            "$(total2 "$test" "$p")" \
            "$(ratio "$rate" "$(median2 "$test" nginx 3)")" "$(ratio "$rate" "$(median2 "$test" haproxy 3)")" \
            "$(ratio "$cpu" "$(median2 "$test" nginx 4)")" "$(ratio "$cpu" "$(median2 "$test" haproxy 4)")"
    done
done
cat <<EOF

rate/s: requests (h2c, h2tls), gRPC calls (grpc) or new TLS connections (tls-*) per
second. cpuus/op: the proxy's utime+stime (process tree) per request, call or
handshake; sysus/op: the part of it spent in the kernel (stime: system calls, and the
loopback TCP work they do). own%: the proxy's CPU over the run's wall time (100 = it saturates its core);
other%: the rest of the proxy core's busy time (other processes: noise); wrk%: how busy
the load tools' core was. errs: failed or
non-2xx requests, gRPC calls that came back without the echoed message, or resumption
attempts that did a full handshake (totals over the recorded runs).

Targets (issue 14; ratios of cpuus/op, lower is better):
EOF
best_cpu() { awk -v a="$(median2 "$1" nginx 4)" -v b="$(median2 "$1" haproxy 4)" 'BEGIN { print (a < b ? a : b) }'; }
best_rate() { awk -v a="$(median2 "$1" nginx 3)" -v b="$(median2 "$1" haproxy 3)" 'BEGIN { print (a > b ? a : b) }'; }
for test in $TESTS; do
    case $test in
    h2c | h2tls)
        echo "  $test CPU/request vs the better peer: $(ratio "$(median2 "$test" wayfinder 4)" "$(best_cpu "$test")") (target <= 0.80)"
        # The kernel's share: the same system calls cost about the same in
        # any proxy, so this bounds what user-space work can win.
        echo "    $test kernel time alone vs the better peer's CPU: $(ratio "$(median2 "$test" wayfinder 10)" "$(best_cpu "$test")");" \
            "user time: wayfinder $(awk -v c="$(median2 "$test" wayfinder 4)" -v s="$(median2 "$test" wayfinder 10)" 'BEGIN { printf "%.2f", c - s }') us," \
            "nginx $(awk -v c="$(median2 "$test" nginx 4)" -v s="$(median2 "$test" nginx 10)" 'BEGIN { printf "%.2f", c - s }') us," \
            "HAProxy $(awk -v c="$(median2 "$test" haproxy 4)" -v s="$(median2 "$test" haproxy 10)" 'BEGIN { printf "%.2f", c - s }') us per request"
        ;;
    grpc) echo "  grpc CPU/call vs nginx grpc_pass: $(ratio "$(median2 grpc wayfinder 4)" "$(median2 grpc nginx 4)"); vs HAProxy: $(ratio "$(median2 grpc wayfinder 4)" "$(median2 grpc haproxy 4)")" ;;
    tls-*) echo "  $test handshakes/s vs the better peer: $(ratio "$(median2 "$test" wayfinder 3)" "$(best_rate "$test")") (target >= 1.00); CPU/handshake: $(ratio "$(median2 "$test" wayfinder 4)" "$(best_cpu "$test")")" ;;
    esac
done
