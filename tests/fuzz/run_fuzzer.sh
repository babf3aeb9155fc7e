#!/usr/bin/env bash
# run_fuzzer.sh FUZZER SEED_DIR WORK_DIR SECONDS [libFuzzer flags...]
# Runs one libFuzzer target for a bounded time. New inputs it finds go to
# WORK_DIR/corpus (kept between runs, so longer runs build on shorter ones);
# a crash is written to WORK_DIR/crash-* and fails the run. FUZZ_SECONDS in
# the environment overrides SECONDS (`make fuzz FUZZ_SECONDS=3600`).
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 seconds=${FUZZ_SECONDS:-$4}
shift 4
mkdir -p "$work/corpus"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$here/lsan.supp:print_suppressions=0}
echo "fuzzing $(basename "$fuzzer") for ${seconds}s; reproduce a crash with: $fuzzer CRASH_FILE"
exec "$fuzzer" "$work/corpus" "$seeds" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 \
  -artifact_prefix="$work/" -print_final_stats=1 "$@"
