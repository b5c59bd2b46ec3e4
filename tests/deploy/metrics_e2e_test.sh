#!/usr/bin/env bash
# End-to-end: starts the real ttt-serve binary on free loopback ports with the reference fixture
# model, waits for gRPC health (with the `ttt` CLI, the container's HEALTHCHECK command) and
# /metrics, drives some traffic, and checks that every metric named in deploy/prometheus/alerts.yml
# and deploy/grafana/ttt-serve-dashboard.json, and every metric of docs/contract.md's "Metrics"
# table, is exported (tests/deploy/check_metrics.py --contract), and that the pool gauges follow
# the flags. Then SIGTERM must end the server within its drain + checkpoint time.
#   metrics_e2e_test.sh SERVER_BIN [TTT_CLI_BIN|-] [MODEL_DIR]
# MODEL_DIR defaults to the llama fixture that tests/reference/ttt_reference.py writes.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
server="$1"; cli="${2:--}"; model="${3:-}"
tmp="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ -z "$model" ] || [ ! -f "$model/config.json" ]; then
  /usr/bin/python3 "$root/tests/reference/ttt_reference.py" --out "$tmp/fixture" >/dev/null
  model="$tmp/fixture/llama"
fi
# shellcheck source=tests/e2e/e2e_support.sh
. "$root/tests/e2e/e2e_support.sh"
read -r grpc_port metrics_port < <(ttt_free_port 2)

ttt_serve_start "$server" "$tmp/server.log" "$tmp/checkpoints" --model="$model" \
  --listen="127.0.0.1:$grpc_port" --metrics_listen="127.0.0.1:$metrics_port" \
  --drain_timeout_s=5 --max_resident_sessions=3 --memory_budget_mb=64
pid=$ttt_serve_pid

fail() { echo "FAIL: $*"; echo "--- server log"; tail -n 50 "$tmp/server.log"; exit 1; }
ready=""
for _ in $(seq 1 240); do
  kill -0 "$pid" 2>/dev/null || fail "the server exited early"
  if curl -fsS -o /dev/null "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null; then
    if [ "$cli" = "-" ] || "$cli" health --address="127.0.0.1:$grpc_port" >/dev/null 2>&1; then
      ready=1; break
    fi
  fi
  sleep 0.5
done
[ -n "$ready" ] || fail "no /metrics or no SERVING health within 120 s"
echo "server up: gRPC 127.0.0.1:$grpc_port, metrics 127.0.0.1:$metrics_port"

# One session with traffic, then 3 more: the 4th admission evicts the first (--max_resident_sessions=3).
rc=0; "${PYTHON:-/usr/bin/python3}" "$root/tests/deploy/drive_traffic.py" "127.0.0.1:$grpc_port" 3 || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 77 ] || fail "traffic driver failed ($rc)"

"${PYTHON:-/usr/bin/python3}" "$root/tests/deploy/check_metrics.py" --contract "$root/docs/contract.md" \
  "http://127.0.0.1:$metrics_port/metrics" || fail "metrics check"
# The pool gauges carry the flags' limits (refreshed every 0.5 s) and, after the traffic, the pool
# kept to its limit by the eviction at the 4th admission.
want="tttserve_sessions_evicted_total 1
tttserve_pool_resident_sessions 3
tttserve_pool_limit_sessions 3
tttserve_pool_limit_bytes 67108864"
[ "$rc" = 0 ] || want="$(echo "$want" | grep limit)"  # no traffic: only the limits
pattern='^tttserve_(sessions_evicted_total|pool_[a-z_]+) '
got=""
for _ in $(seq 1 20); do
  got="$(curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -E "$pattern" | grep -Fx -f <(echo "$want") || true)"
  [ "$got" = "$want" ] && break
  sleep 0.5
done
[ "$got" = "$want" ] || fail "pool gauges: got '$got', want '$want' ($(curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -E "$pattern" | tr '\n' ' '))"

kill -TERM "$pid"
for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$pid" 2>/dev/null && fail "still running 60 s after SIGTERM"
wait "$pid" || fail "exit status $? after SIGTERM"
pid=""
echo "OK: metrics exported, clean shutdown"
