#!/usr/bin/env bash
# End-to-end load comparison on loopback: wayfinder (round-robin and
# least-connections) against nginx and HAProxy, all in front of the same
# three nginx backends, plus a no-proxy baseline straight to one backend.
#
# Method (see benches/README.md): each proxy is pinned to one core
# (PROXY_CPU) and runs one worker; wrk and the backends share the other core
# (WRK_CPU). Configurations run interleaved (A B C D E, A B C D E, ...) N
# times; each slot is one throughput run at 64 connections and one latency
# run at 8. The table shows medians over the N rounds.
#
# Besides direct, nginx, HAProxy and wayfinder round-robin / least-
# connections, three wayfinder rows answer the scaling and swap targets:
#   wf-2w    round-robin with 2 worker threads on both cores (sharing the
#            wrk core: a floor for 2-core scaling, not a clean figure)
#   wf-10k   round-robin with 10,000 instances across 1,000 services in the
#            registry (the bench service plus 999 never-contacted ones),
#            while the admin API is read every 100 ms (the control)
#   wf-swap  the same, while a registration is added or removed every
#            100 ms through the admin API instead (each one a snapshot
#            rebuild and swap); the summary counts them
#   wf-nomet round-robin with request counting off ([metrics] enabled =
#            false): wf-rr / wf-nomet is the CPU cost of the metrics
#   wf-log   round-robin with the access log on (text, to a file in the
#            temp dir) and request ids: wf-log / wf-rr is its CPU cost
#
# Settings (environment):
#   N=3            rounds
#   DURATION=5s    length of each wrk run (seconds, optional "s")
#   WARMUP=2s      one untimed run per configuration before round 1
#   CONNS=64       connections of the throughput run
#   LAT_CONNS=8    connections of the latency run
#   PROXY_CPU=0    core the proxies are pinned to
#   WRK_CPU=1      core wrk and the backends are pinned to
#   WAYFINDER_BIN  use this binary instead of building with cargo
#   BASELINE_BIN   also run this wayfinder binary (round-robin, 1 worker) as
#                  row wf-base, to compare two builds in the same run; the
#                  summary then gives wf-rr's CPU/request against it
#   ONLY="direct nginx haproxy wf-rr wf-base"
#                  run only these rows (default: all)
#   KEEP_TMP=1     keep the temp dir (configs, logs, raw wrk output)
#   NICE=-10       run the servers and load tools at this niceness (shared
#                  machines; negative values need root)
#
# Only loopback is used. Every wait and every run is bounded by `timeout`.
# On exit, only the processes this script started are stopped.
set -euo pipefail

N=${N:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
LAT_CONNS=${LAT_CONNS:-8}
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BACKEND_CPU=${BACKEND_CPU:-$WRK_CPU}

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BODY=hello # 5 bytes

DUR_S=$(secs "$DURATION")
WARM_S=$(secs "$WARMUP")

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

write_nginx_proxy() { # $1 = port, rest = backend ports
    local port=$1
    shift
    mkdir -p "$TMP/nginx-tmp"
    {
        nginx_common nginx
        echo "    upstream bench {"
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
    } >"$TMP/nginx.conf"
}

write_haproxy() { # $1 = port, rest = backend ports
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
    balance roundrobin
EOF
        for b in "$@"; do
            i=$((i + 1))
            echo "    server b$i 127.0.0.1:$b"
        done
    } >"$TMP/haproxy.cfg"
}

write_wayfinder() { # $1 = name, $2 = balance, $3 = port, $4 = admin port or "off", rest = backend ports
    local name=$1 balance=$2 port=$3 admin=$4 list=""
    shift 4
    for b in "$@"; do list+="\"127.0.0.1:$b\", "; done
    [[ $admin == off ]] || admin=127.0.0.1:$admin
    cat >"$TMP/$name.toml" <<EOF
listen = ["127.0.0.1:$port"]

[admin]
listen = "$admin"

[[routes]]
path = "/"
service = "bench"

[services.bench]
balance = "$balance"
instances = [${list%, }]
EOF
}

# write_wayfinder_10k NAME PORT ADMIN_PORT BACKENDS...: round-robin over the
# backends as service "bench", plus 999 services of 10 instances each on
# 127.1.x.y addresses that are never contacted (no route leads there, no
# health checks), and an admin listener for registrations.
write_wayfinder_10k() {
    local name=$1 port=$2 admin=$3
    shift 3
    write_wayfinder "$name" round_robin "$port" "$admin" "$@"
    awk 'BEGIN {
        for (s = 0; s < 999; s++) {
            printf "\n[services.s%d]\ninstances = [", s
            for (i = 0; i < 10; i++)
                printf "\"127.1.%d.%d:%d\"%s", int(s / 250), s % 250 + 1, 10000 + i, (i < 9 ? ", " : "")
            printf "]\n"
        }
    }' >>"$TMP/$name.toml"
}

# Registration churn against the admin API on port $1, every 100 ms until
# killed. MODE ($2) "change": a PUT or DELETE of service "churn" (each a
# rebuild and swap of the snapshot; successes are counted in $TMP/swaps).
# MODE "read": a GET of the same registration (no change), the control run
# that puts the same load on the admin API and the wrk core without swaps.
# Bash builtins only (/dev/tcp, read -t on a FIFO as the sleep), so the loop
# adds little load to the wrk core it shares.
churn() {
    local admin=$1 mode=$2 n=0 status body='{"address":"127.0.0.1:9","ttl":"60s"}'
    local path=/v1/registry/churn/c1
    [[ -p $TMP/churn-tick ]] || mkfifo "$TMP/churn-tick"
    exec 4<>"$TMP/churn-tick"
    while :; do
        if exec 3<>"/dev/tcp/127.0.0.1/$admin"; then
            if [[ $mode == read ]]; then
                printf 'GET %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n' "$path" >&3
            elif ((n % 2 == 0)); then
                printf 'PUT %s HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
                    "$path" "${#body}" "$body" >&3
            else
                printf 'DELETE %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n' "$path" >&3
            fi
            status=""
            read -r -t 5 _ status _ <&3 || true
            exec 3<&-
            [[ $mode == change && $status == 2* ]] && echo >>"$TMP/swaps"
        fi
        n=$((n + 1))
        read -r -t 0.1 -u 4 _ || true
    done
}

# === load ===

WRK_LUA='done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("WRKRESULT %d %d %d %d %.1f %.1f\n", s.requests, s.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    lat:percentile(50), lat:percentile(99)))
end'

# run_wrk CONFIG CONNS SECONDS PORT PID RECORD: one wrk run; with RECORD=1
# appends one line to $TMP/results: config conns rps p50_us p99_us
# cpu_us_per_req own_core_pct other_on_proxy_core_pct wrk_core_pct
# sock_err http_err.
run_wrk() {
    local cfg=$1 conns=$2 dur=$3 port=$4 pid=$5 record=$6 t0 t1 line
    local reqs dur_us sock http p50 p99 pc0 pc1 wc0 wc1 own=1
    local out churn_pid=""
    out="$TMP/wrk-$cfg-$conns-$(date +%s%N).txt"
    if [[ $cfg == wf-swap || $cfg == wf-10k ]]; then
        local admin=$P_WF_ADMIN mode=change
        [[ $cfg == wf-10k ]] && admin=$P_WF_ADMIN_10K mode=read
        taskset -c "$WRK_CPU" bash -c "$(declare -f churn); TMP=$TMP; churn $admin $mode" &
        churn_pid=$!
    fi
    t0=$(cpu_ticks "$pid")
    pc0=$(core_ticks "$PROXY_CPU") wc0=$(core_ticks "$WRK_CPU")
    timeout -k 5 $((dur + 30)) taskset -c "$WRK_CPU" "${NICE_CMD[@]}" \
        wrk -t1 -c"$conns" -d"${dur}s" --latency -s "$TMP/result.lua" \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || die "wrk failed against $cfg (see $out)"
    if [[ -n $churn_pid ]]; then
        kill "$churn_pid" 2>/dev/null || true
        wait "$churn_pid" 2>/dev/null || true
    fi
    t1=$(cpu_ticks "$pid")
    pc1=$(core_ticks "$PROXY_CPU") wc1=$(core_ticks "$WRK_CPU")
    line=$(grep '^WRKRESULT' "$out") || die "no wrk result for $cfg: $(cat "$out")"
    [[ $record == 1 ]] || return 0
    read -r _ reqs dur_us sock http p50 p99 <<<"$line"
    # The direct run's server (a backend) is not on the proxy core, so all
    # of that core's busy time is someone else's.
    [[ $cfg == direct ]] && own=0
    awk -v c="$cfg" -v n="$conns" -v r="$reqs" -v d="$dur_us" -v dt=$((t1 - t0)) \
        -v hz="$CLK_TCK" -v s="$sock" -v h="$http" -v p50="$p50" -v p99="$p99" \
        -v pc="$pc0 $pc1" -v wc="$wc0 $wc1" -v own="$own" 'BEGIN {
            cpu_s = dt / hz
            split(pc, p, " "); split(wc, w, " ")
            own_pct = cpu_s * 1e6 / d * 100
            pcore = (p[4] > p[2] ? (p[3] - p[1]) / (p[4] - p[2]) * 100 : 0)
            wcore = (w[4] > w[2] ? (w[3] - w[1]) / (w[4] - w[2]) * 100 : 0)
            other = pcore - (own ? own_pct : 0)
            printf "%s %d %.1f %.1f %.1f %.2f %.1f %.1f %.1f %d %d\n", c, n, r / (d / 1e6),
                p50, p99, (r > 0 ? cpu_s * 1e6 / r : 0), own_pct, (other > 0 ? other : 0),
                wcore, s, h
        }' >>"$TMP/results"
    log "$(printf '%-8s c=%-3s %s' "$cfg" "$conns" "$(tail -n1 "$TMP/results" | cut -d' ' -f3-)")"
}


# === main ===

install_tools
build_wayfinder
TMP=$(mktemp -d /tmp/wayfinder-e2e.XXXXXX)
chmod 755 "$TMP" # nginx workers drop to an unprivileged user
printf '%s\n' "$WRK_LUA" >"$TMP/result.lua"

pick_ports 15
B=("${PORTS[@]:0:3}")
P_NGINX=${PORTS[3]} P_HAPROXY=${PORTS[4]} P_WF_RR=${PORTS[5]} P_WF_LC=${PORTS[6]}
P_WF_2W=${PORTS[7]} P_WF_10K=${PORTS[8]} P_WF_SWAP=${PORTS[9]} P_WF_ADMIN=${PORTS[10]}
P_WF_ADMIN_10K=${PORTS[11]} P_WF_BASE=${PORTS[12]}
P_WF_NOMET=${PORTS[13]} P_WF_LOG=${PORTS[14]}
log "backends on ${B[*]}; nginx $P_NGINX, haproxy $P_HAPROXY, wayfinder rr $P_WF_RR, lc $P_WF_LC"

declare -A PID PORT
for i in 0 1 2; do
    write_backend "backend$i" "${B[$i]}"
    start "backend$i" "$BACKEND_CPU" nginx -e "$TMP/backend$i.log" -p "$TMP" -c "$TMP/backend$i.conf"
    wait_ready "backend$i" "${B[$i]}" "$STARTED"
    [[ $i == 0 ]] && PID[direct]=$STARTED
done
PORT[direct]=${B[0]}

write_nginx_proxy "$P_NGINX" "${B[@]}"
start nginx "$PROXY_CPU" nginx -e "$TMP/nginx.log" -p "$TMP" -c "$TMP/nginx.conf"
PID[nginx]=$STARTED PORT[nginx]=$P_NGINX

write_haproxy "$P_HAPROXY" "${B[@]}"
start haproxy "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg"
PID[haproxy]=$STARTED PORT[haproxy]=$P_HAPROXY

write_wayfinder wf-rr round_robin "$P_WF_RR" off "${B[@]}"
write_wayfinder wf-lc least_connections "$P_WF_LC" off "${B[@]}"
write_wayfinder wf-2w round_robin "$P_WF_2W" off "${B[@]}"
write_wayfinder_10k wf-10k "$P_WF_10K" "$P_WF_ADMIN_10K" "${B[@]}"
write_wayfinder_10k wf-swap "$P_WF_SWAP" "$P_WF_ADMIN" "${B[@]}"
write_wayfinder wf-nomet round_robin "$P_WF_NOMET" off "${B[@]}"
printf '\n[metrics]\nenabled = false\n' >>"$TMP/wf-nomet.toml"
write_wayfinder wf-log round_robin "$P_WF_LOG" off "${B[@]}"
printf '\n[access_log]\nenabled = true\npath = "%s"\n' "$TMP/access.log" >>"$TMP/wf-log.toml"
# Request ids go in [proxy], which must come before the service tables.
sed -i 's/^\[admin\]$/[proxy]\nrequest_id = true\n\n[admin]/' "$TMP/wf-log.toml"
for name in wf-rr wf-lc wf-10k wf-swap wf-nomet wf-log; do
    start "$name" "$PROXY_CPU" env TOKIO_WORKER_THREADS=1 \
        "$WAYFINDER_BIN" --log-level warn run --config "$TMP/$name.toml"
    PID[$name]=$STARTED
done
start wf-2w "$PROXY_CPU,$WRK_CPU" env TOKIO_WORKER_THREADS=2 \
    "$WAYFINDER_BIN" --log-level warn run --config "$TMP/wf-2w.toml"
PID[wf-2w]=$STARTED
PORT[wf-rr]=$P_WF_RR PORT[wf-lc]=$P_WF_LC PORT[wf-2w]=$P_WF_2W
PORT[wf-10k]=$P_WF_10K PORT[wf-swap]=$P_WF_SWAP
PORT[wf-nomet]=$P_WF_NOMET PORT[wf-log]=$P_WF_LOG

CONFIGS=(direct nginx haproxy wf-rr wf-lc wf-2w wf-10k wf-swap wf-nomet wf-log)
if [[ -n ${BASELINE_BIN:-} ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not executable"
    write_wayfinder wf-base round_robin "$P_WF_BASE" off "${B[@]}"
    start wf-base "$PROXY_CPU" env TOKIO_WORKER_THREADS=1 \
        "$BASELINE_BIN" --log-level warn run --config "$TMP/wf-base.toml"
    PID[wf-base]=$STARTED PORT[wf-base]=$P_WF_BASE
    CONFIGS+=(wf-base)
fi
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

# Tokio names its workers "tokio-rt-worker" (older releases:
# "tokio-runtime-worker", cut to 15 characters in comm).
for name in wf-rr wf-lc wf-10k wf-swap wf-nomet wf-log; do
    workers=$(cat /proc/"${PID[$name]}"/task/*/comm 2>/dev/null |
        grep -cE '^tokio-(rt-worker|runtime-w)' || true)
    if [[ $workers != 1 ]]; then
        log "NOTE: $name has $workers Tokio worker threads; TOKIO_WORKER_THREADS=1 was not honoured"
    else
        log "$name runs 1 Tokio worker thread (TOKIO_WORKER_THREADS=1 honoured)"
    fi
done

log "versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -n1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), kernel $(uname -r)"
check_idle
log "warm-up: ${WARM_S}s per configuration"
for cfg in "${CONFIGS[@]}"; do
    run_wrk "$cfg" "$CONNS" "$WARM_S" "${PORT[$cfg]}" "${PID[$cfg]}" 0
done

: >"$TMP/results"
: >"$TMP/swaps"
for round in $(seq "$N"); do
    log "round $round/$N (${DUR_S}s per run)"
    for cfg in "${CONFIGS[@]}"; do
        run_wrk "$cfg" "$CONNS" "$DUR_S" "${PORT[$cfg]}" "${PID[$cfg]}" 1
        run_wrk "$cfg" "$LAT_CONNS" "$DUR_S" "${PORT[$cfg]}" "${PID[$cfg]}" 1
    done
done

# Columns in $TMP/results: 3 rps, 4 p50, 5 p99, 6 cpu us/req, 7 own core %,
# 8 others on the proxy core %, 9 wrk core %, 10 sock errors, 11 http errors.
declare -A RPS CPU
for cfg in "${CONFIGS[@]}"; do
    RPS[$cfg]=$(median "$cfg" "$CONNS" 3)
    CPU[$cfg]=$(median "$cfg" "$CONNS" 6)
done
us() { printf '%.0fus' "$1"; }
# Rows left out by ONLY count as missing ("-") in the summary.
for cfg in direct nginx haproxy wf-rr wf-lc wf-2w wf-10k wf-swap wf-base wf-nomet wf-log; do
    RPS[$cfg]=${RPS[$cfg]:-0} CPU[$cfg]=${CPU[$cfg]:-0}
done

echo
echo "wayfinder e2e: N=$N rounds of ${DUR_S}s runs, medians. Proxies pinned to CPU $PROXY_CPU" \
    "(1 worker each); wrk -t1 and the backends on CPU $WRK_CPU."
fmt='%-8s %9s %5s %8s %5s %6s %5s %7s %7s %8s %7s %9s %7s %7s %7s %7s %7s\n'
# shellcheck disable=SC2059
printf "$fmt" config "req/s@$CONNS" "+-%" "cpuus/rq" "own%" "other%" "wrk%" \
    "p50@$LAT_CONNS" "p99@$LAT_CONNS" "p99@$CONNS" "RSS MiB" "errs s/h" \
    "rps/ngx" "rps/hap" "rps/dir" "cpu/ngx" "cpu/hap"
for cfg in "${CONFIGS[@]}"; do
    rps=${RPS[$cfg]} cpu=${CPU[$cfg]}
    # shellcheck disable=SC2059
    printf "$fmt" "$cfg" "$(printf '%.0f' "$rps")" "$(spread "$cfg" "$CONNS" 3 "$rps")" \
        "$(printf '%.2f' "$cpu")" "$(printf '%.0f' "$(median "$cfg" "$CONNS" 7)")" \
        "$(printf '%.0f' "$(median "$cfg" "$CONNS" 8)")" \
        "$(printf '%.0f' "$(median "$cfg" "$CONNS" 9)")" \
        "$(us "$(median "$cfg" "$LAT_CONNS" 4)")" "$(us "$(median "$cfg" "$LAT_CONNS" 5)")" \
        "$(us "$(median "$cfg" "$CONNS" 5)")" \
        "$(awk -v k="$(peak_rss_kib "${PID[$cfg]}")" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(total "$cfg" 10)/$(total "$cfg" 11)" \
        "$(ratio "$rps" "${RPS[nginx]}")" "$(ratio "$rps" "${RPS[haproxy]}")" \
        "$(ratio "$rps" "${RPS[direct]}")" \
        "$(ratio "$cpu" "${CPU[nginx]}")" "$(ratio "$cpu" "${CPU[haproxy]}")"
done
cat <<EOF

Throughput, CPU and core columns come from the $CONNS-connection runs; each latency column
names its run. +-% is (max-min)/median of req/s over the rounds (the noise floor).
cpuus/rq is the server's utime+stime (whole process tree) per request; own% is that time
over the run's wall time (100 = the proxy saturates its core). other% is the proxy core's
busy time not spent by the server under test (other processes: noise). wrk% is how busy
the wrk/backend core was (near 100 = the load rig, not the proxy, is the limit). For
"direct" the server is backend 0, which runs on the wrk core. RSS is peak VmHWM over the
session (nginx: master + worker). errs s/h are totals over all recorded runs: socket
errors / responses that were not 2xx or 3xx. Ratios divide req/s and cpuus/rq by nginx's,
HAProxy's and direct's medians.
EOF
swaps=$(wc -l <"$TMP/swaps")
swap_s=$((N * 2 * DUR_S))
echo
echo "Targets (ratios from the table above):"
echo "  req/s vs the better peer:      $(ratio "${RPS[wf-rr]}" "$(awk -v a="${RPS[nginx]}" -v b="${RPS[haproxy]}" 'BEGIN { print (a > b ? a : b) }')") (target >= 1.15)"
echo "  CPU/request vs the better peer: $(ratio "${CPU[wf-rr]}" "$(awk -v a="${CPU[nginx]}" -v b="${CPU[haproxy]}" 'BEGIN { print (a < b ? a : b) }')") (target <= 0.80)"
echo "  p99@$LAT_CONNS vs no proxy:           $(ratio "$(median wf-rr "$LAT_CONNS" 5)" "$(median direct "$LAT_CONNS" 5)") (target <= 1.10)"
echo "  p99@$CONNS vs the better peer:   $(ratio "$(median wf-rr "$CONNS" 5)" "$(awk -v a="$(median nginx "$CONNS" 5)" -v b="$(median haproxy "$CONNS" 5)" 'BEGIN { print (a < b ? a : b) }')") (target <= 1.00)"
echo "  least-conn vs round-robin:     $(ratio "${RPS[wf-lc]}" "${RPS[wf-rr]}") (target >= 0.95)"
echo "  2 workers vs 1 (req/s):        $(ratio "${RPS[wf-2w]}" "${RPS[wf-rr]}") (2 workers share the wrk core)"
echo "  10k registry vs 3 (req/s):     $(ratio "${RPS[wf-10k]}" "${RPS[wf-rr]}")"
echo "  p99@$LAT_CONNS during swaps vs none:  $(ratio "$(median wf-swap "$LAT_CONNS" 5)" "$(median wf-10k "$LAT_CONNS" 5)") (target < 1.10); p99@$CONNS: $(ratio "$(median wf-swap "$CONNS" 5)" "$(median wf-10k "$CONNS" 5)")"
[[ -z ${BASELINE_BIN:-} ]] || echo "  CPU/request vs the baseline build: $(ratio "${CPU[wf-rr]}" "${CPU[wf-base]}") (wf-rr / wf-base, same run)"
echo "  CPU/request, metrics on vs off:  $(ratio "${CPU[wf-rr]}" "${CPU[wf-nomet]}") (wf-rr / wf-nomet, target <= 1.03)"
echo "  CPU/request, access log on vs off: $(ratio "${CPU[wf-log]}" "${CPU[wf-rr]}") (wf-log / wf-rr; $(wc -l <"$TMP/access.log" 2>/dev/null || echo 0) lines written)"
echo "  swaps during wf-swap runs:    $swaps in ${swap_s}s ($(awk -v n="$swaps" -v t="$swap_s" 'BEGIN { printf "%.0f", (n > 0 ? t * 1000 / n : 0) }') ms apart)"
