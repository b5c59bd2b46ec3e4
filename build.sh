#!/usr/bin/env bash
# The entry points a new user needs on a fresh Debian 12 machine (README.md):
#   ./build.sh serve [server flags...]   install what is missing, build the server, run it on the
#                                         shipped default model
#   ./build.sh test [ctest args...]      install what is missing, build, run the whole test suite
#                                         once (the plain suite: minutes); `--quick` first is
#                                         accepted and means the same (it named the plain suite
#                                         when `test` ran every CI stage)
#   ./build.sh ci [ctest args...]        every CI stage (tests/ci_stages.sh): the plain suite, then
#                                         ASan+UBSan, the concurrent tests under TSan, and each fuzz
#                                         target for 50 s; .ci/run calls this
# Every mode configures with explicit options, so one mode never inherits another's cached
# settings (serve turns the tests off; test and ci turn them on again), and ctest fails when it
# finds no test (--no-tests=error). All are idempotent: apt-get installs only what is missing;
# the build is incremental.
# Environment: TTT_BUILD_DIR (default build/), TTT_JOBS (default nproc);
#   TTT_CONFIGURE_ONLY=1   configure, then stop (serve) or list the tests (`ctest -N`) instead of
#                          building and running them: tests/deploy/build_modes_test.sh uses it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
mode="${1:-}"; shift || true
build_dir="${TTT_BUILD_DIR:-build}"
jobs="${TTT_JOBS:-$(nproc)}"

# The serve build: the server and the CLI, no tests, no benchmarks, no sanitizers.
kServeOptions=(-DCMAKE_BUILD_TYPE=Release -DTTT_ENGINE_ONLY=OFF -DTTT_BUILD_TESTS=OFF
               -DTTT_BUILD_BENCH=OFF -DTTT_SANITIZE= -DTTT_FUZZ=OFF)

case "$mode" in
  serve)
    bash deploy/install-deps.sh build
    cmake -S . -B "$build_dir" -G Ninja "${kServeOptions[@]}" >/dev/null
    [ -n "${TTT_CONFIGURE_ONLY:-}" ] && exit 0
    cmake --build "$build_dir" -j "$jobs"
    exec "$build_dir/server/ttt-serve" --model=models/ttt-brown "$@"
    ;;
  test)
    [ "${1:-}" = --quick ] && shift
    bash deploy/install-deps.sh test
    TTT_JOBS="$jobs" TTT_CI_STAGES=normal exec bash tests/ci_stages.sh "$@"
    ;;
  ci)
    bash deploy/install-deps.sh test
    TTT_JOBS="$jobs" TTT_WERROR="${TTT_WERROR:-ON}" exec bash tests/ci_stages.sh "$@"
    ;;
  *)
    echo "usage: $0 serve [server flags...] | test [ctest args...] | ci [ctest args...]" >&2
    exit 2
    ;;
esac
