# Helpers shared by the end-to-end bench scripts (run.sh, slow.sh,
# protocols.sh): sourced, not run. Tools, the release build, processes
# started and stopped by PID, CPU accounting from /proc, free loopback
# ports, readiness, nginx's common config, medians and ratios.
# The sourcing script sets TMP (a mktemp -d), BODY, PROXY_CPU and WRK_CPU.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[e2e] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
secs() { # "5s" or "5" -> 5
    local v=${1%s}
    [[ $v =~ ^[0-9]+$ ]] || die "not a whole number of seconds: $1"
    echo "$v"
}

# === tools ===

# install_tools [COMMAND=PACKAGE...]: nginx, haproxy, wrk and taskset, plus
# the given commands, installed with apt-get when missing.
install_tools() {
    local missing=() want
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v taskset >/dev/null || missing+=(util-linux)
    for want in "$@"; do
        command -v "${want%%=*}" >/dev/null || missing+=("${want#*=}")
    done
    ((${#missing[@]})) || return 0
    local sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    log "installing missing tools with apt-get: ${missing[*]}"
    timeout 300 "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 "${sudo_cmd[@]}" \
        apt-get install -y -qq "${missing[@]}" >&2
}

build_wayfinder() {
    if [[ -n ${WAYFINDER_BIN:-} ]]; then
        [[ -x $WAYFINDER_BIN ]] || die "WAYFINDER_BIN=$WAYFINDER_BIN is not executable"
        return
    fi
    log "building wayfinder (cargo build --release)"
    (cd "$ROOT" && timeout 1800 cargo build --release) >&2 ||
        die "cargo build --release failed"
    local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    WAYFINDER_BIN=$target_dir/release/wayfinder
}

# The bench instance (examples/bench_backend.rs): BACKEND_BIN, else built
# with `cargo build --release --example bench_backend` unless it already
# sits beside WAYFINDER_BIN (target/release/examples/) and is newer than
# its source.
build_backend() {
    if [[ -n ${BACKEND_BIN:-} ]]; then
        [[ -x $BACKEND_BIN ]] || die "BACKEND_BIN=$BACKEND_BIN is not executable"
        return
    fi
    BACKEND_BIN=$(dirname "$WAYFINDER_BIN")/examples/bench_backend
    [[ -x $BACKEND_BIN && $BACKEND_BIN -nt $ROOT/examples/bench_backend.rs ]] && return
    log "building the bench backend (cargo build --release --example bench_backend)"
    (cd "$ROOT" && timeout 1800 cargo build --release --example bench_backend) >&2 ||
        die "cargo build --release --example bench_backend failed"
    local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    BACKEND_BIN=$target_dir/release/examples/bench_backend
}

# The 1-minute load average and the machine's core count, for the header.
load_note() { echo "load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores${NICE:+ (bench at nice $NICE)}"; }

# === processes ===

TMP=""
PIDS=()

# NICE=-10 (for example) runs every server and load tool of the bench at
# that niceness, so that other work on a shared machine takes less of
# their cores (negative values need root). Unset: the default priority.
NICE_CMD=()
if [[ -n ${NICE:-} ]]; then
    [[ $NICE =~ ^-?[0-9]+$ ]] || die "NICE must be a number: $NICE"
    NICE_CMD=(nice -n "$NICE")
fi

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait, then force.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ -n ${KEEP_TMP:-} ]]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD...: starts CMD pinned to CPU, output to $TMP/NAME.log;
# sets STARTED to its PID (taskset and env exec, so it is CMD's own PID).
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "${NICE_CMD[@]}" "$@" >"$TMP/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# The PID and its children (nginx's workers), for CPU and memory totals.
tree_pids() {
    echo "$1"
    ps -o pid= --ppid "$1" 2>/dev/null || true
}

# Sum over a process tree ($1) of the /proc/PID/stat fields given (0 = the
# state field, 11 = utime, 12 = stime), in clock ticks.
stat_ticks() {
    local root=$1 total=0 pid stat rest i
    shift
    for pid in $(tree_pids "$root"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) } # fields from the 3rd (state) on
        read -r -a f <<<"$rest"
        for i in "$@"; do total=$((total + f[i])); done
    done
    echo "$total"
}

# utime + stime of a process tree, in clock ticks.
cpu_ticks() { stat_ticks "$1" 11 12; }

# stime alone of a process tree (time in the kernel), in clock ticks.
sys_ticks() { stat_ticks "$1" 12; }

# "busy total" clock ticks of core $1 since boot (busy: all but idle and
# iowait; guest time is already inside user).
core_ticks() {
    awk -v cpu="cpu$1" '$1 == cpu {
        t = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
        print t - $5 - $6, t }' /proc/stat
}

# Peak resident set (VmHWM) of a process tree, in KiB.
peak_rss_kib() {
    local total=0 pid kib
    for pid in $(tree_pids "$1"); do
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# === ports and readiness ===

used_ports() {
    local _ local_addr
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] || continue
        while read -r _ local_addr _; do
            echo $((16#${local_addr##*:}))
        done < <(tail -n +2 "$f")
    done
}

# Picks $1 free loopback ports from a random high base, skipping any port
# with a socket on it now.
pick_ports() {
    local want=$1 port used
    used=" $(used_ports | sort -un | tr '\n' ' ') "
    port=$((20000 + RANDOM % 30000))
    PORTS=()
    while ((${#PORTS[@]} < want)); do
        [[ $used == *" $port "* ]] || PORTS+=("$port")
        port=$((port + 1))
    done
}

# GET / on 127.0.0.1:$1; prints the status line and the body.
http_get() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" >&3
        cat <&3' _ "$1" 2>/dev/null | tr -d '\r' | sed -n '1p;$p'
}

# Waits (at most 10 s) until 127.0.0.1:$2 answers 200 with the backend
# body, while process $3 is alive.
wait_ready() {
    local name=$1 port=$2 pid=$3 out
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || {
            cat "$TMP/$name.log" >&2
            die "$name exited during start-up (log above)"
        }
        out=$(http_get "$port" || true)
        if [[ $out == "HTTP/1."?" 200"*$'\n'"$BODY" ]]; then
            return
        fi
        sleep 0.1
    done
    cat "$TMP/$name.log" >&2
    die "$name on port $port not ready after 10 s (last answer: ${out:-none})"
}

# === configs ===

nginx_common() { # $1 = name
    cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/$1.pid;
error_log $TMP/$1.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    # Every temp path in the temp dir, so a non-root user can run nginx.
    client_body_temp_path $TMP/$1-tmp/body;
    proxy_temp_path $TMP/$1-tmp/proxy;
    fastcgi_temp_path $TMP/$1-tmp/fastcgi;
    scgi_temp_path $TMP/$1-tmp/scgi;
    uwsgi_temp_path $TMP/$1-tmp/uwsgi;
EOF
}


# Warns when the two cores are busy before the runs start: other processes
# there make every number noisy.
check_idle() {
    local a b busy
    a="$(core_ticks "$PROXY_CPU") $(core_ticks "$WRK_CPU")"
    sleep 1
    b="$(core_ticks "$PROXY_CPU") $(core_ticks "$WRK_CPU")"
    busy=$(awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        printf "%.0f", ((y[1] - x[1]) + (y[3] - x[3])) / ((y[2] - x[2]) + (y[4] - x[4])) * 100 }')
    if ((busy > 10)); then
        log "WARNING: cores $PROXY_CPU and $WRK_CPU are already ${busy}% busy before the runs"
        log "WARNING: (other processes); expect noisy numbers - see the other% column"
    fi
}

# median CONFIG CONNS COLUMN over the recorded runs.
median() {
    awk -v c="$1" -v n="$2" -v k="$3" '$1 == c && $2 == n { print $k }' "$TMP/results" |
        sort -g | awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}
# (max - min) / median of a column, in percent: the run-to-run spread.
spread() {
    awk -v c="$1" -v n="$2" -v k="$3" -v m="$4" '$1 == c && $2 == n {
            v = $k; if (seen++ == 0) lo = hi = v; if (v < lo) lo = v; if (v > hi) hi = v }
        END { printf "%.1f", (m > 0 ? (hi - lo) / m * 100 : 0) }' "$TMP/results"
}
total() {
    awk -v c="$1" -v k="$2" '$1 == c { t += $k } END { print t + 0 }' "$TMP/results"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
