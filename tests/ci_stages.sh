#!/usr/bin/env bash
# The stages of `./build.sh ci` (and so of CI, .ci/run), each in its own build folder, each
# timed (build and run) in a summary at the end; `./build.sh test` runs the first alone:
#   normal  Release build in build/ (or $TTT_BUILD_DIR), the whole suite (ctest); extra
#           arguments go to this ctest
#   asan    AddressSanitizer + UndefinedBehaviorSanitizer, Clang, -O1 (tests' own code -O0),
#           build-asan/: the whole suite (or the tests in kAsanTests, below). Clang, not GCC: it
#           builds this tree under ASan in about half of GCC's time (engine/: 242 s of compiler
#           time against 534 s on the CI machine), the largest part of CI's time
#   tsan    ThreadSanitizer, -O1, build-tsan/: the tests in kTsanTests (below)
#   fuzz    Clang + libFuzzer, build-fuzz/: each tests/fuzz target for TTT_FUZZ_SECONDS
# Environment:
#   TTT_CI_STAGES="normal asan tsan fuzz"   the stages to run, in order (default: all four)
#   TTT_FUZZ_SECONDS=50                    per fuzz target
#   TTT_JOBS                               build and ctest parallelism (default: nproc)
#   TTT_CONFIGURE_ONLY=1                   configure each stage and list its tests (ctest -N)
#                                          instead of building and running them
# Each stage configures with every option explicit (a folder configured by another mode keeps
# nothing of it), and ctest fails when it finds no test (--no-tests=error).
# Sanitizer settings and suppressions (third-party code only, each with its reason):
# tests/sanitizers/. Stops at the first failing stage (set -e); the summary still prints.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
root="$PWD"
stages="${TTT_CI_STAGES:-normal asan tsan fuzz}"
jobs="${TTT_JOBS:-$(nproc)}"
fuzz_seconds="${TTT_FUZZ_SECONDS:-50}"
normal_dir="${TTT_BUILD_DIR:-build}"
summary=()

# What the sanitizer stages run: ASan+UBSan the whole suite (every unit test, and the e2e tests
# against a sanitized ttt-serve); TSan the scheduler's and the session manager's tests (engine
# thread, reaper, concurrent sessions, readers racing through the state cache). Empty means the
# whole suite. TTT_ASAN_TESTS / TTT_TSAN_TESTS override (space-separated test names).
kAsanTests="${TTT_ASAN_TESTS:-}"
# Not under ASan: tests that run none of our C++ or check the release binary's runtime libraries
# (a sanitized binary links libasan on purpose); and the etcd fault suite, minutes of lease
# expiries whose C++ paths session_cluster_test runs under ASan in seconds; and the
# bring-your-own-model pipeline (minutes of sanitized training; its loaders and tokenizer run
# under ASan in model_test, safetensors_test and tokenizer_test).
kAsanSkipped="helm_chart_test prometheus_rules_test install_deps_test check_metrics_test runtime_deps_test
  build_modes_test byom_e2e_test format_check etcd_fault_e2e_test etcd_members_e2e_test etcd_partition_e2e_test
  etcd_full_volume_e2e_test etcd_stall_e2e_test"
# server_test is not among them: Debian's gRPC is not built with TSan, so TSan cannot see the
# synchronisation inside its callback machinery and reports ~1,700 races in gRPC's own headers
# and generated code on every run (docs/fuzzing.md). The reactors run concurrently in the stress
# test (plain and ASan builds) instead; TSan over them needs a gRPC built with TSan.
kTsanTests="${TTT_TSAN_TESTS:-scheduler_test session_test state_cache_race_test}"
as_regex() { local t; t="$*"; echo "^(${t// /|})\$"; }

# -O1 keeps sanitized builds and runs quick while keeping stack traces usable.
kSanitizedFlags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"
                 -DTTT_ENGINE_ONLY=OFF -DTTT_BUILD_BENCH=OFF)
# The plain suite: Release, every test and the benchmark (built so that it keeps compiling).
# TTT_WERROR=ON (`./build.sh ci`, so CI): compiler warnings fail the build.
kNormalFlags=(-DCMAKE_BUILD_TYPE=Release -DTTT_ENGINE_ONLY=OFF -DTTT_BUILD_TESTS=ON
              -DTTT_BUILD_BENCH=ON -DTTT_SANITIZE= -DTTT_FUZZ=OFF
              "-DTTT_WERROR=${TTT_WERROR:-OFF}")
configure_only="${TTT_CONFIGURE_ONLY:-}"

now() { date +%s; }
# time_step <label> <command...>: runs it, records "<label> <seconds>s" for the summary.
time_step() {
  local label="$1" start rc=0
  shift
  start=$(now)
  echo "=== $label: $*" >&2
  "$@" || rc=$?
  summary+=("$(printf '%-14s %5ss%s' "$label" "$(($(now) - start))" "$([ $rc = 0 ] || echo "  FAILED ($rc)")")")
  return $rc
}
print_summary() {
  echo "=== ci_stages summary (build and run times on $(nproc) cores)" >&2
  printf '  %s\n' "${summary[@]}" >&2
}
trap print_summary EXIT

configure_build() {  # <dir> <targets or ""> <cmake args...>
  local dir="$1" targets="$2"
  shift 2
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  [ -z "$configure_only" ] || return 0
  # shellcheck disable=SC2086
  cmake --build "$dir" -j "$jobs" ${targets:+--target $targets}
}

run_ctest() {  # <dir> <ctest args...>
  local dir="$1"
  shift
  if [ -n "$configure_only" ]; then
    (cd "$dir" && ctest -N "$@")  # -N ignores --no-tests; tests/deploy/build_modes_test.sh counts
  else
    (cd "$dir" && ctest --no-tests=error --output-on-failure --timeout 900 -j "$jobs" "$@")
  fi
}

stage_normal() {
  time_step "normal build" configure_build "$normal_dir" "" "${kNormalFlags[@]}"
  time_step "normal run" run_ctest "$normal_dir" "$@"
}

# The sanitizers' runtime settings: every finding fails the test; suppressions only for
# third-party libraries (tests/sanitizers/*.supp says why each is there). OMP_NUM_THREADS=1:
# LibTorch's OpenMP pool runs in libgomp, which no sanitizer instruments (TSan cannot see its
# synchronisation); the engine runs one intra-op thread in these tests anyway.
export_sanitizer_env() {
  local supp="$root/tests/sanitizers"
  export ASAN_OPTIONS="detect_leaks=1:strict_init_order=1:check_initialization_order=1"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp"
  export OMP_NUM_THREADS=1
  # ASan's quarantine and shadow memory make RSS say nothing about leaks (LeakSanitizer checks
  # those at the server's exit): the stress test reports the RSS slope but does not judge it.
  export TTT_STRESS_MAX_RSS_SLOPE=0
}
asan_ctest() (  # a subshell: the sanitizer settings stay out of the other stages
  export_sanitizer_env
  if [ -n "$kAsanTests" ]; then
    run_ctest build-asan -R "$(as_regex $kAsanTests)"
  else
    run_ctest build-asan -E "$(as_regex $kAsanSkipped)"
  fi
)
tsan_ctest() (export_sanitizer_env; run_ctest build-tsan -R "$(as_regex $kTsanTests)")
# Explicit compilers, not CC/CXX alone: CMake ignores those in a folder already configured (one
# that a GCC build made before), and a changed CMAKE_CXX_COMPILER makes it start that folder anew.
clang_configure_build() {
  local dir="$1" targets="$2"
  shift 2
  configure_build "$dir" "$targets" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 "$@"
}

stage_asan() {
  time_step "asan build" clang_configure_build build-asan "$kAsanTests" "${kSanitizedFlags[@]}" \
    -DTTT_BUILD_TESTS=ON -DTTT_FUZZ=OFF -DTTT_SANITIZE=address,undefined
  time_step "asan run" asan_ctest
}

stage_tsan() {
  # Only what the tests need; ctest adds any fixture setup they require.
  time_step "tsan build" configure_build build-tsan "$kTsanTests" \
    "${kSanitizedFlags[@]}" -DTTT_BUILD_TESTS=ON -DTTT_FUZZ=OFF -DTTT_SANITIZE=thread
  time_step "tsan run" tsan_ctest
}

stage_fuzz() {
  time_step "fuzz build" clang_configure_build build-fuzz fuzzers "${kSanitizedFlags[@]}" \
    -DTTT_FUZZ=ON -DTTT_BUILD_TESTS=OFF -DTTT_SANITIZE=
  [ -z "$configure_only" ] || return 0
  time_step "fuzz run" tests/fuzz/run_fuzzers.sh -s "$fuzz_seconds" -b build-fuzz
}

for stage in $stages; do
  case "$stage" in
    normal) stage_normal "$@" ;;
    asan | tsan | fuzz) "stage_$stage" ;;
    *) echo "unknown stage '$stage' (normal asan tsan fuzz)" >&2; exit 2 ;;
  esac
done
