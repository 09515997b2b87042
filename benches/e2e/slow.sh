#!/usr/bin/env bash
# Issue 17's scenario: three instances, one of them 10x slower, behind
# nginx (least_conn), HAProxy (leastconn) and wayfinder with each balancing
# policy (round_robin, least_connections, p2c_ewma, consistent_hash), in
# the same run, interleaved. Reports req/s, p50/p99, the proxy's CPU per
# request and the share of requests the slow instance got.
#
# The instances are examples/bench_backend.rs (built with cargo): each
# answers "hello" after a fixed delay, DELAY_US for two of them and
# SLOW x DELAY_US for the third (a blocking sleep, exact to tens of µs;
# nginx-light cannot delay and tokio timers round up to whole ms). Each
# counts its answers (GET /count), which gives the slow instance's share.
#
# Same method as run.sh: proxies pinned to PROXY_CPU with one worker each,
# wrk -t1 and the instances on WRK_CPU; N interleaved rounds, each slot one
# run at CONNS and one at LAT_CONNS connections; medians. Row wf-p2c-d is
# p2c_ewma with a shorter decay (SHORT_DECAY). Row wf-floor is round_robin
# over the two fast instances only (the slow one left out): the p99 a
# policy that never picked the slow instance would get on this machine,
# for reference (its slow% is 0 by construction). Every request
# carries `x-user: u<k>` (k cycling over 1,000 values, the same for every
# row), the key of consistent_hash.
#
# Settings (environment):
#   N=3 DURATION=5s WARMUP=2s CONNS=64 LAT_CONNS=8 PROXY_CPU=0 WRK_CPU=1
#   DELAY_US=1000  the fast instances' delay
#   SLOW=10        the slow instance's delay, in multiples of DELAY_US
#   SHORT_DECAY=1s the decay of row wf-p2c-d (p2c_ewma with a shorter
#                  memory than the default 10s; "" drops the row)
#   WAYFINDER_BIN, BACKEND_BIN   use these binaries instead of building
#   ONLY="nginx-lc haproxy-lc wf-p2c"  run only these rows (default: all,
#                  nginx-lc haproxy-lc wf-rr wf-lc wf-p2c wf-ch wf-p2c-d wf-floor)
#   KEEP_TMP=1     keep the temp dir
#   NICE=-10       run the servers and load tools at this niceness (shared
#                  machines; negative values need root)
#
# Only loopback is used; every wait and run is bounded; on exit only the
# processes this script started are stopped, by PID.
set -euo pipefail

N=${N:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
LAT_CONNS=${LAT_CONNS:-8}
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
DELAY_US=${DELAY_US:-1000}
SLOW=${SLOW:-10}
SHORT_DECAY=${SHORT_DECAY-1s}

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BODY=hello
DUR_S=$(secs "$DURATION")
WARM_S=$(secs "$WARMUP")

write_nginx_lc() { # $1 = port, rest = backend ports
    local port=$1
    shift
    mkdir -p "$TMP/nginx-lc-tmp"
    {
        nginx_common nginx-lc
        echo "    upstream bench {"
        echo "        least_conn;"
        for b in "$@"; do echo "        server 127.0.0.1:$b;"; done
        cat <<EOF
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
    } >"$TMP/nginx-lc.conf"
}

write_haproxy_lc() { # $1 = port, rest = backend ports
    local port=$1 i=0
    shift
    {
        cat <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    balance leastconn
EOF
        for b in "$@"; do
            i=$((i + 1))
            echo "    server b$i 127.0.0.1:$b"
        done
    } >"$TMP/haproxy-lc.cfg"
}

write_wayfinder() { # $1 = name, $2 = balance, $3 = port, rest = backend ports
    local name=$1 balance=$2 port=$3 list=""
    shift 3
    for b in "$@"; do list+="\"127.0.0.1:$b\", "; done
    cat >"$TMP/$name.toml" <<EOF
listen = ["127.0.0.1:$port"]

[admin]
listen = "off"

[[routes]]
path = "/"
service = "bench"

[services.bench]
balance = "$balance"
instances = [${list%, }]
EOF
    if [[ $balance == consistent_hash ]]; then
        printf '[services.bench.consistent_hash]\nkey = "header:x-user"\n' >>"$TMP/$name.toml"
    fi
    if [[ $name == wf-p2c-d ]]; then
        printf '[services.bench.p2c_ewma]\ndecay = "%s"\n' "$SHORT_DECAY" >>"$TMP/$name.toml"
    fi
}

# The wrk script: 1,000 requests prepared once, differing in x-user, sent
# in turn; done() prints the exact counts and percentiles.
WRK_LUA='local reqs, n = {}, 0
init = function(args)
  for k = 1, 1000 do
    reqs[k] = wrk.format("GET", "/", { ["Host"] = "bench", ["x-user"] = "u" .. k })
  end
end
request = function()
  n = n % 1000 + 1
  return reqs[n]
end
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("WRKRESULT %d %d %d %d %.1f %.1f\n", s.requests, s.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    lat:percentile(50), lat:percentile(99)))
end'

# The answers instance $1 (index) has counted so far.
served() {
    local out
    out=$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET /count HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" >&3
        cat <&3' _ "${B[$1]}" 2>/dev/null | tr -d '\r' | tail -n1)
    [[ $out =~ ^[0-9]+$ ]] || die "instance $1 did not report its count"
    echo "$out"
}

# run_wrk CONFIG CONNS SECONDS PORT PID RECORD: one wrk run; with RECORD=1
# appends to $TMP/results: config conns rps p50_us p99_us cpu_us_per_req
# own_pct other_pct wrk_pct sock_err http_err slow_share_pct.
run_wrk() {
    local cfg=$1 conns=$2 dur=$3 port=$4 pid=$5 record=$6
    local out t0 t1 pc0 pc1 wc0 wc1 s0 s1 f0 f1 line
    out="$TMP/wrk-$cfg-$conns-$(date +%s%N).txt"
    f0=$(($(served 0) + $(served 1))) s0=$(served 2)
    t0=$(cpu_ticks "$pid")
    pc0=$(core_ticks "$PROXY_CPU") wc0=$(core_ticks "$WRK_CPU")
    timeout -k 5 $((dur + 30)) taskset -c "$WRK_CPU" "${NICE_CMD[@]}" \
        wrk -t1 -c"$conns" -d"${dur}s" -s "$TMP/result.lua" \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || die "wrk failed against $cfg (see $out)"
    t1=$(cpu_ticks "$pid")
    pc1=$(core_ticks "$PROXY_CPU") wc1=$(core_ticks "$WRK_CPU")
    f1=$(($(served 0) + $(served 1))) s1=$(served 2)
    line=$(grep '^WRKRESULT' "$out") || die "no wrk result for $cfg: $(cat "$out")"
    [[ $record == 1 ]] || return 0
    local reqs dur_us sock http p50 p99
    read -r _ reqs dur_us sock http p50 p99 <<<"$line"
    awk -v c="$cfg" -v n="$conns" -v r="$reqs" -v d="$dur_us" -v dt=$((t1 - t0)) \
        -v hz="$CLK_TCK" -v s="$sock" -v h="$http" -v p50="$p50" -v p99="$p99" \
        -v pc="$pc0 $pc1" -v wc="$wc0 $wc1" -v slow=$((s1 - s0)) -v fast=$((f1 - f0)) 'BEGIN {
            cpu_s = dt / hz
            split(pc, p, " "); split(wc, w, " ")
            own_pct = cpu_s * 1e6 / d * 100
            pcore = (p[4] > p[2] ? (p[3] - p[1]) / (p[4] - p[2]) * 100 : 0)
            wcore = (w[4] > w[2] ? (w[3] - w[1]) / (w[4] - w[2]) * 100 : 0)
            other = pcore - own_pct
            printf "%s %d %.1f %.1f %.1f %.2f %.1f %.1f %.1f %d %d %.2f\n", c, n, r / (d / 1e6),
                p50, p99, (r > 0 ? cpu_s * 1e6 / r : 0), own_pct, (other > 0 ? other : 0),
                wcore, s, h, (slow + fast > 0 ? slow / (slow + fast) * 100 : 0)
        }' >>"$TMP/results"
    log "$(printf '%-10s c=%-3s %s' "$cfg" "$conns" "$(tail -n1 "$TMP/results" | cut -d' ' -f3-)")"
}

# Each instance alone, wrk straight to it at LAT_CONNS connections for
# WARMUP seconds: the fast and slow latencies the proxies work with.
calibrate() {
    local i out line
    for i in 0 1 2; do
        out="$TMP/wrk-instance$i.txt"
        timeout -k 5 $((WARM_S + 30)) taskset -c "$WRK_CPU" "${NICE_CMD[@]}" \
            wrk -t1 -c"$LAT_CONNS" -d"${WARM_S}s" -s "$TMP/result.lua" \
            "http://127.0.0.1:${B[$i]}/" >"$out" 2>&1 || die "wrk failed against instance $i"
        line=$(grep '^WRKRESULT' "$out") || die "no wrk result for instance $i"
        read -r _ _ _ _ _ INST_P50[i] INST_P99[i] <<<"$line"
    done
}

# === main ===

install_tools
build_wayfinder
build_backend
TMP=$(mktemp -d /tmp/wayfinder-slow.XXXXXX)
chmod 755 "$TMP" # nginx workers drop to an unprivileged user
printf '%s\n' "$WRK_LUA" >"$TMP/result.lua"

pick_ports 11
B=("${PORTS[@]:0:3}")
declare -A PID PORT
PORT[nginx-lc]=${PORTS[3]} PORT[haproxy-lc]=${PORTS[4]}
PORT[wf-rr]=${PORTS[5]} PORT[wf-lc]=${PORTS[6]} PORT[wf-p2c]=${PORTS[7]} PORT[wf-ch]=${PORTS[8]}
PORT[wf-p2c-d]=${PORTS[9]} PORT[wf-floor]=${PORTS[10]}
log "instances on ${B[*]} (the last one ${SLOW}x slower)"

for i in 0 1 2; do
    delay=$DELAY_US
    ((i < 2)) || delay=$((DELAY_US * SLOW))
    start "instance$i" "$WRK_CPU" "$BACKEND_BIN" http "127.0.0.1:${B[$i]}" "$delay"
    wait_ready "instance$i" "${B[$i]}" "$STARTED"
done

write_nginx_lc "${PORT[nginx-lc]}" "${B[@]}"
start nginx-lc "$PROXY_CPU" nginx -e "$TMP/nginx-lc.log" -p "$TMP" -c "$TMP/nginx-lc.conf"
PID[nginx-lc]=$STARTED
write_haproxy_lc "${PORT[haproxy-lc]}" "${B[@]}"
start haproxy-lc "$PROXY_CPU" haproxy -db -f "$TMP/haproxy-lc.cfg"
PID[haproxy-lc]=$STARTED
declare -A POLICY=([wf-rr]=round_robin [wf-lc]=least_connections [wf-p2c]=p2c_ewma
    [wf-ch]=consistent_hash [wf-p2c-d]=p2c_ewma [wf-floor]=round_robin)
WF_ROWS=(wf-rr wf-lc wf-p2c wf-ch)
[[ -z $SHORT_DECAY ]] || WF_ROWS+=(wf-p2c-d)
WF_ROWS+=(wf-floor)
for name in "${WF_ROWS[@]}"; do
    if [[ $name == wf-floor ]]; then
        write_wayfinder "$name" "${POLICY[$name]}" "${PORT[$name]}" "${B[0]}" "${B[1]}"
    else
        write_wayfinder "$name" "${POLICY[$name]}" "${PORT[$name]}" "${B[@]}"
    fi
    start "$name" "$PROXY_CPU" env TOKIO_WORKER_THREADS=1 \
        "$WAYFINDER_BIN" --log-level warn run --config "$TMP/$name.toml"
    PID[$name]=$STARTED
done

CONFIGS=(nginx-lc haproxy-lc "${WF_ROWS[@]}")
if [[ -n ${ONLY:-} ]]; then
    wanted=()
    for cfg in "${CONFIGS[@]}"; do
        [[ " $ONLY " == *" $cfg "* ]] && wanted+=("$cfg")
    done
    CONFIGS=("${wanted[@]}")
fi
for cfg in "${CONFIGS[@]}"; do
    wait_ready "$cfg" "${PORT[$cfg]}" "${PID[$cfg]}"
done

log "versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -n1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), kernel $(uname -r)"
LOAD_BEFORE=$(load_note)
log "$LOAD_BEFORE"
check_idle
declare -a INST_P50 INST_P99
calibrate
log "instances alone at $LAT_CONNS connections: p50 ${INST_P50[*]} us, p99 ${INST_P99[*]} us"
log "warm-up: ${WARM_S}s per configuration"
for cfg in "${CONFIGS[@]}"; do
    run_wrk "$cfg" "$CONNS" "$WARM_S" "${PORT[$cfg]}" "${PID[$cfg]}" 0
done

: >"$TMP/results"
for round in $(seq "$N"); do
    log "round $round/$N (${DUR_S}s per run; $(load_note))"
    for cfg in "${CONFIGS[@]}"; do
        run_wrk "$cfg" "$CONNS" "$DUR_S" "${PORT[$cfg]}" "${PID[$cfg]}" 1
        run_wrk "$cfg" "$LAT_CONNS" "$DUR_S" "${PORT[$cfg]}" "${PID[$cfg]}" 1
    done
done
LOAD_AFTER=$(load_note)

# Columns in $TMP/results: 3 rps, 4 p50, 5 p99, 6 cpu us/req, 7 own %,
# 8 other %, 9 wrk core %, 10 sock errors, 11 http errors, 12 slow share %.
us() { printf '%.0fus' "$1"; }
better() { # the lower of nginx-lc's and haproxy-lc's median column $2 at $1 connections
    awk -v a="$(median nginx-lc "$1" "$2")" -v b="$(median haproxy-lc "$1" "$2")" 'BEGIN {
        if (a == "nan") print b; else if (b == "nan") print a; else print (a < b ? a : b) }'
}
BEST99=$(better "$CONNS" 5) BEST99L=$(better "$LAT_CONNS" 5)
CPU_RR=$(median wf-rr "$CONNS" 6)

echo
echo "wayfinder slow-instance scenario: N=$N rounds of ${DUR_S}s runs, medians. Instances:" \
    "2 x ${DELAY_US}us and 1 x $((DELAY_US * SLOW))us delay; alone at $LAT_CONNS connections their" \
    "p50 was ${INST_P50[0]}/${INST_P50[1]}/${INST_P50[2]}us, p99 ${INST_P99[0]}/${INST_P99[1]}/${INST_P99[2]}us. Proxies pinned to CPU $PROXY_CPU (1 worker)," \
    "wrk -t1 and the instances on CPU $WRK_CPU. $LOAD_BEFORE before, $LOAD_AFTER after."
fmt='%-10s %9s %5s %8s %5s %5s %8s %8s %8s %8s %7s %7s %8s %8s %8s %7s\n'
# shellcheck disable=SC2059
printf "$fmt" config "req/s@$CONNS" "+-%" "cpuus/rq" "own%" "wrk%" "p50@$LAT_CONNS" "p99@$LAT_CONNS" \
    "p50@$CONNS" "p99@$CONNS" "slow%@$LAT_CONNS" "slow%@$CONNS" "errs s/h" \
    "p99/best@$LAT_CONNS" "p99/best@$CONNS" "cpu/rr"
for cfg in "${CONFIGS[@]}"; do
    rps=$(median "$cfg" "$CONNS" 3) cpu=$(median "$cfg" "$CONNS" 6)
    # shellcheck disable=SC2059
    printf "$fmt" "$cfg" "$(printf '%.0f' "$rps")" "$(spread "$cfg" "$CONNS" 3 "$rps")" \
        "$(printf '%.2f' "$cpu")" "$(printf '%.0f' "$(median "$cfg" "$CONNS" 7)")" \
        "$(printf '%.0f' "$(median "$cfg" "$CONNS" 9)")" \
        "$(us "$(median "$cfg" "$LAT_CONNS" 4)")" "$(us "$(median "$cfg" "$LAT_CONNS" 5)")" \
        "$(us "$(median "$cfg" "$CONNS" 4)")" "$(us "$(median "$cfg" "$CONNS" 5)")" \
        "$(printf '%.2f' "$(median "$cfg" "$LAT_CONNS" 12)")" \
        "$(printf '%.2f' "$(median "$cfg" "$CONNS" 12)")" \
        "$(total "$cfg" 10)/$(total "$cfg" 11)" \
        "$(ratio "$(median "$cfg" "$LAT_CONNS" 5)" "$BEST99L")" \
        "$(ratio "$(median "$cfg" "$CONNS" 5)" "$BEST99")" \
        "$(ratio "$cpu" "$CPU_RR")"
done
cat <<EOF

req/s, cpuus/rq, own% and wrk% come from the $CONNS-connection runs; latency and slow%
columns name their run. slow% is the share of the requests the slow instance answered
(from the instances' own counts). p99/best divides a row's p99 by the lower of nginx
least_conn's and HAProxy leastconn's at the same concurrency; cpu/rr divides cpuus/rq by
wayfinder round_robin's. errs s/h: socket errors / non-2xx-3xx answers, totals.

Targets (issue 17):
  p2c_ewma p99 vs the better peer: $(ratio "$(median wf-p2c "$CONNS" 5)" "$BEST99") at $CONNS connections, $(ratio "$(median wf-p2c "$LAT_CONNS" 5)" "$BEST99L") at $LAT_CONNS (target <= 0.50)
  p2c_ewma CPU/request vs round_robin: $(ratio "$(median wf-p2c "$CONNS" 6)" "$CPU_RR") (target <= 1.05)
EOF
[[ -z $SHORT_DECAY || " ${CONFIGS[*]} " != *" wf-p2c-d "* ]] ||
    echo "  p2c_ewma with decay $SHORT_DECAY (wf-p2c-d), p99 vs the better peer: $(ratio "$(median wf-p2c-d "$CONNS" 5)" "$BEST99") at $CONNS connections, $(ratio "$(median wf-p2c-d "$LAT_CONNS" 5)" "$BEST99L") at $LAT_CONNS"
[[ " ${CONFIGS[*]} " != *" wf-floor "* ]] ||
    echo "  floor (wf-floor: the fast instances only), p99 vs the better peer: $(ratio "$(median wf-floor "$CONNS" 5)" "$BEST99") at $CONNS connections, $(ratio "$(median wf-floor "$LAT_CONNS" 5)" "$BEST99L") at $LAT_CONNS; p2c_ewma's p99 vs the floor: $(ratio "$(median wf-p2c "$CONNS" 5)" "$(median wf-floor "$CONNS" 5)") at $CONNS, $(ratio "$(median wf-p2c "$LAT_CONNS" 5)" "$(median wf-floor "$LAT_CONNS" 5)") at $LAT_CONNS"
