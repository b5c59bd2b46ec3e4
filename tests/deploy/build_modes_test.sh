#!/usr/bin/env bash
# The build modes cannot poison each other: `./build.sh serve` turns the tests off in its build
# folder, and a later `./build.sh test` there must find (and so run) the whole suite again, with
# ctest failing rather than passing on zero tests. Configure only (TTT_CONFIGURE_ONLY=1: build.sh
# configures, then lists the tests with `ctest -N`), in a scratch build folder: serve, test,
# serve, test.
#   tests/deploy/build_modes_test.sh [SCRATCH_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
scratch="${1:-$(mktemp -d)}"
rm -rf "$scratch"
mkdir -p "$scratch"
export TTT_BUILD_DIR="$scratch/build" TTT_CONFIGURE_ONLY=1

fail() { echo "FAIL: $*" >&2; exit 1; }

# serve: configured with the tests off. In the fresh folder (first call) ctest must refuse to pass
# on no tests; later the folder keeps the test mode's stale CTestTestfile.cmake (CMake does not
# delete it), so only the cache is checked there (running those stale tests would recurse here).
check_serve() {
  "$root/build.sh" serve >"$scratch/serve.log" 2>&1 || { cat "$scratch/serve.log"; fail "serve"; }
  grep -qx 'TTT_BUILD_TESTS:BOOL=OFF' "$TTT_BUILD_DIR/CMakeCache.txt" \
    || fail "serve left TTT_BUILD_TESTS on in $TTT_BUILD_DIR/CMakeCache.txt"
  # util/fault_point.h: test builds only (a point stops the whole process when asked).
  ! grep -q TTT_FAULT_POINTS "$TTT_BUILD_DIR/build.ninja" \
    || fail "serve compiles fault points (TTT_FAULT_POINTS in $TTT_BUILD_DIR/build.ninja)"
  if [ "${1:-}" = fresh ]; then
    if (cd "$TTT_BUILD_DIR" && ctest --no-tests=error) >"$scratch/ctest.log" 2>&1; then
      cat "$scratch/ctest.log"
      fail "ctest --no-tests=error passed in a build folder with no tests"
    fi
    grep -q 'No tests were found' "$scratch/ctest.log" \
      || { cat "$scratch/ctest.log"; fail "ctest did not say why it failed"; }
    echo "serve: tests off, ctest --no-tests=error refuses: ok"
  else
    echo "serve: tests off: ok"
  fi
}

# test: the same folder, the suite is back (the C++ unit tests, the e2e tests, this test).
check_test() {
  "$root/build.sh" test >"$scratch/test.log" 2>&1 || { cat "$scratch/test.log"; fail "test"; }
  local total
  total="$(sed -n 's/^Total Tests: \([0-9]*\)$/\1/p' "$scratch/test.log")"
  [ -n "$total" ] && [ "$total" -ge 20 ] \
    || { cat "$scratch/test.log"; fail "./build.sh test lists ${total:-no} tests (want >= 20)"; }
  for t in server_test service_e2e_test build_modes_test; do
    grep -qE "Test +#[0-9]+: $t\$" "$scratch/test.log" || fail "./build.sh test does not list $t"
  done
  grep -q TTT_FAULT_POINTS "$TTT_BUILD_DIR/build.ninja" \
    || fail "test builds no fault points (no TTT_FAULT_POINTS in $TTT_BUILD_DIR/build.ninja)"
  echo "test: $total tests listed: ok"
}

check_serve fresh
check_test
check_serve
check_test
echo "OK: serve and test modes do not poison each other"
