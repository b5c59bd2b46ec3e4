#!/usr/bin/env bash
# Runs each libFuzzer target of tests/fuzz for a while, starting from its seed corpus, and prints
# one summary line per target (executions, executions/s, coverage, crashes). New inputs and
# crash artifacts go to the work folder, never into the repository's corpus.
#
#   tests/fuzz/run_fuzzers.sh [-s SECONDS] [-j JOBS] [-b BUILD_DIR] [-w WORK_DIR] [target...]
#
# Defaults: 60 s per target, JOBS targets at a time (nproc: each fuzzer is one process on one
# core, so every target still gets SECONDS of a core), build-fuzz/ (configured with TTT_FUZZ=ON),
# work folder BUILD_DIR/fuzz-work, every target. Exit status 1 when any target crashed or failed.
# A crash leaves WORK_DIR/<target>/crash-* (reproduce: BUILD_DIR/tests/fuzz/<target> <file>).
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)"
seconds=60
jobs="$(nproc)"
build="$root/build-fuzz"
work=""
while getopts "s:j:b:w:" opt; do
  case "$opt" in
    s) seconds="$OPTARG" ;;
    j) jobs="$OPTARG" ;;
    b) build="$(readlink -f "$OPTARG")" ;;
    w) work="$OPTARG" ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
work="${work:-$build/fuzz-work}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_fuzzer checkpoint_fuzzer sentencepiece_model_fuzzer tokenizer_json_fuzzer
           sentencepiece_encode_fuzzer bpe_encode_fuzzer request_fuzzer x509_identity_fuzzer
           rest_json_fuzzer)
fi

# LibTorch's OpenMP pool is not needed for one tiny model and is not instrumented.
export OMP_NUM_THREADS=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0}"

# fuzz_one <target>: runs it, writes its summary line to WORK_DIR/<target>/summary and returns
# non-zero when it crashed or failed to run.
fuzz_one() {
  local t="$1" bin="$build/tests/fuzz/$1" dict=() log rc=0 execs speed cov ft result
  mkdir -p "$work/$t/corpus"
  if [ ! -x "$bin" ]; then
    printf '%-28s %s\n' "$t" "FAILED ($bin not built: cmake --build $build --target fuzzers)" \
      >"$work/$t/summary"
    return 1
  fi
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=(-dict="$root/tests/fuzz/$t.dict")
  log="$work/$t/log.txt"
  (cd "$work/$t" && "$bin" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$work/$t/" "${dict[@]}" \
      corpus "$root/tests/fuzz/corpus/$t") >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc; see $log)"
    grep -m1 -E 'ERROR: |FUZZ_CHECK|runtime error' "$log" >&2 || tail -5 "$log" >&2
  fi
  printf '%-28s %10s %8s %7s %7s %s\n' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" \
    "$result" >"$work/$t/summary"
  [ "$rc" -eq 0 ]
}

# At most $jobs targets at once; a target's failure is counted when it is reaped.
failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
printf '%-28s %10s %8s %7s %7s %s\n' target execs exec/s cov ft result
for t in "${targets[@]}"; do cat "$work/$t/summary"; done
exit "$failed"
