#!/usr/bin/env bash
# The two entry points a new user needs on a fresh Debian 12 machine (README.md):
#   ./build.sh serve [server flags...]   install what is missing, build, run the server on the
#                                         shipped default model
#   ./build.sh test [--quick] [ctest args...]
#                                         install what is missing, build, run the whole test suite,
#                                         then again under ASan+UBSan, the concurrent tests under
#                                         TSan, and each fuzz target for a minute
#                                         (tests/ci_stages.sh); --quick: the plain suite only
# Both are idempotent: apt-get installs only what is missing; the build is incremental.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
mode="${1:-}"; shift || true
build_dir="${TTT_BUILD_DIR:-build}"
jobs="${TTT_JOBS:-$(nproc)}"

configure_and_build() {
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$build_dir" -j "$jobs"
}

case "$mode" in
  serve)
    bash deploy/install-deps.sh build
    configure_and_build -DTTT_BUILD_TESTS=OFF -DTTT_BUILD_BENCH=OFF
    exec "$build_dir/server/ttt-serve" --model=models/ttt-brown "$@"
    ;;
  test)
    bash deploy/install-deps.sh test
    if [ "${1:-}" = --quick ]; then
      shift
      configure_and_build
      cd "$build_dir"
      exec ctest --output-on-failure --timeout 600 -j "$jobs" "$@"
    fi
    TTT_JOBS="$jobs" exec bash tests/ci_stages.sh "$@"
    ;;
  *)
    echo "usage: $0 serve [server flags...] | test [--quick] [ctest args...]" >&2
    exit 2
    ;;
esac
