#!/usr/bin/env bash
# End-to-end: with --etcd_endpoints, each ttt-serve process holds one etcd lease and claims its
# --replica_id under it (docs/coordination.md, "Process identity"). Against a real etcd on loopback
# and the real binary with the shipped model: a second process with a live process's id exits 1
# naming the holder; another id starts beside it; --etcd_endpoints without --replica_id exits 2;
# after kill -9 of the holder the id is claimed again once etcd expires its lease; SIGTERM frees it
# at once (the lease is revoked). Every wait is bounded.
#   etcd_identity_test.sh SERVER_BIN [ETCD_BIN]
set -euo pipefail
server="$1"; etcd="${2:-/usr/bin/etcd}"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for log in "$tmp"/*.log; do echo "--- $log"; tail -n 20 "$log"; done
  exit 1
}
[ -x "$etcd" ] || fail "no etcd at $etcd (deploy/install-deps.sh test installs etcd-server)"
# shellcheck source=tests/e2e/e2e_support.sh
. "$(dirname "$0")/e2e_support.sh"

read -r client_port peer_port < <(ttt_free_port 2)
client_url="http://127.0.0.1:$client_port"; peer_url="http://127.0.0.1:$peer_port"
"$etcd" --name e0 --data-dir "$tmp/etcd" \
  --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
  --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
  --initial-cluster "e0=$peer_url" --logger zap --log-outputs stderr >"$tmp/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  curl -fsS "$client_url/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.25
done
curl -fsS "$client_url/health" | grep -q '"health":"true"' || fail "etcd not healthy"
etcd_flag="--etcd_endpoints=127.0.0.1:$client_port"

# start NAME REPLICA_ID: a server in the background; its pid in $last_pid.
start() {
  ttt_serve_start "$server" "$tmp/$1.log" "$tmp/store" "$etcd_flag" --replica_id="$2" \
    --lease_s=3 --listen=127.0.0.1:0 --metrics_listen=
  last_pid=$ttt_serve_pid
  pids+=("$last_pid")
}
# wait_up NAME PID: until the server says it serves (at most 120 s).
wait_up() { ttt_serve_wait "$tmp/$1.log" "$2" || fail "$1 did not start"; }
# wait_exit PID: waits for the process (at most 60 s); its exit status in $rc. (Not in a command
# substitution: a subshell cannot wait for this shell's children.)
wait_exit() {
  for _ in $(seq 1 120); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$1" 2>/dev/null && fail "process $1 still running after 60 s"
  rc=0; wait "$1" || rc=$?
}
# key_count KEY: how many keys etcd holds under exactly KEY (its v3 JSON gateway).
key_count() {
  local key; key="$(printf '%s' "$1" | base64 -w0)"
  curl -fsS -X POST -d "{\"key\":\"$key\",\"count_only\":true}" \
    "$client_url/v3/kv/range" | /usr/bin/python3 -c \
    'import json,sys; print(json.load(sys.stdin).get("count", "0"))'
}

start a r1; a=$last_pid; wait_up a "$a"
grep -q "replica r1 holds etcd lease" "$tmp/a.log" || fail "a did not report its lease"
[ "$(key_count /ttt/v1/replicas/r1)" = 1 ] || fail "no key for r1"

start b r1; b=$last_pid
wait_exit "$b"
[ "$rc" = 1 ] || fail "b (duplicate r1) exited $rc, not 1"
grep -q "another live process holds --replica_id r1" "$tmp/b.log" || fail "b's message"
grep -q "pid $a on" "$tmp/b.log" || fail "b's message does not name a's pid $a"
echo "OK: a duplicate --replica_id is refused, naming the holder"

start c r2; c=$last_pid; wait_up c "$c"
echo "OK: another --replica_id starts beside it"

ttt_serve_start "$server" "$tmp/noid.log" "$tmp/store" "$etcd_flag" --listen=127.0.0.1:0 \
  --metrics_listen=
pids+=("$ttt_serve_pid")
wait_exit "$ttt_serve_pid"
[ "$rc" = 2 ] || fail "--etcd_endpoints without --replica_id exited $rc, not 2"
grep -q -- "--etcd_endpoints needs --replica_id" "$tmp/noid.log" || fail "noid's message"
echo "OK: --etcd_endpoints without --replica_id exits 2"

kill -KILL "$a"
start d r1; d=$last_pid; wait_up d "$d"
echo "OK: r1 claimed again after its holder was killed (etcd expired the holder's lease)"

kill -TERM "$d"
wait_exit "$d"
[ "$rc" = 0 ] || fail "d exited $rc on SIGTERM"
# The lease was kept alive until d revoked it: its key is gone now, not a TTL later.
[ "$(key_count /ttt/v1/replicas/r1)" = 0 ] || fail "r1 still held after d's SIGTERM"
echo "OK: SIGTERM frees the id"
kill -TERM "$c"; wait_exit "$c"; [ "$rc" = 0 ] || fail "c exited $rc on SIGTERM"
echo "PASS"
