#!/usr/bin/env bash
# Runs each fuzz target for a fixed time (default 20 s), starting from its
# committed corpus (fuzz/corpus/TARGET, read only) and writing what it finds
# to a scratch directory, so the committed seeds stay as they are. A crash
# (a panic in a target's oracle) stops the run with libFuzzer's report and
# the input under fuzz/artifacts/TARGET/. Installs cargo-fuzz when it is
# missing.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz runs on the stable toolchain with `--sanitizer none` (the
# sanitizers need nightly; the crate forbids unsafe code, so coverage
# guidance and the oracles are what matter here).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(request_head response_head chunked config)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cargo fuzz build --sanitizer none

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "$scratch/$target"
    status=0
    cargo fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1 || status=$?
    if ((status != 0)); then
        tail -n 60 "$scratch/$target.log" >&2
        echo "fuzz: $target failed (exit $status); the input is under fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
    # The last progress line and the final stats: executions, coverage.
    grep -E '^#[0-9]+' "$scratch/$target.log" | tail -n 1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$scratch/$target.log"
done
