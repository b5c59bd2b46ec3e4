#!/usr/bin/env bash
# The `ttt` CLI against real ttt-serve processes, as a script uses it: the address from
# TTT_ADDRESS, commands that create a session print its id alone, --output=json gives one JSON
# object on stdout, generated text comes before the summary when stdout and stderr share a pipe,
# failures go to stderr with exit 1 (2 for usage), and a connection failure names its fix (a TLS
# port dialled in plaintext: add --tls; nothing listening). A second server serves TLS with a
# self-signed certificate, trusted through TTT_CA_FILE.
#   cli_e2e_test.sh SERVER_BIN TTT_BIN MODEL_DIR   (a model with a tokenizer)
set -euo pipefail
server="$1"; ttt="$2"; model="$3"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$tmp"/*.log; do echo "--- $f"; tail -n 20 "$f"; done
  exit 1
}
# shellcheck source=tests/e2e/e2e_support.sh
. "$(dirname "$0")/e2e_support.sh"
declare -A pid_of
start() {  # start NAME PORT [flags...]
  ttt_serve_start "$server" "$tmp/$1.log" "$tmp/$1-checkpoints" --model="$model" \
    --listen="127.0.0.1:$2" --metrics_listen= "${@:3}"
  pids+=("$ttt_serve_pid")
  pid_of[$1]=$ttt_serve_pid
}
wait_up() { ttt_serve_wait "$tmp/$1.log" "${pid_of[$1]}" || fail "$1 did not start"; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
read -r plain_port tls_port unused < <(ttt_free_port 3)
start plain "$plain_port"
start tls "$tls_port" --tls_cert_file="$tmp/cert.pem" --tls_key_file="$tmp/key.pem"
wait_up plain; wait_up tls

export TTT_ADDRESS="127.0.0.1:$plain_port"
id="$("$ttt" create)"
[[ "$id" =~ ^s-[0-9a-f]+$ ]] || fail "create printed '$id', not an id alone"
"$ttt" --output=json get "$id" >"$tmp/get.json" || fail "get --output=json"
/usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["session_id"] == sys.argv[2], d' \
  "$tmp/get.json" "$id" || fail "get --output=json: $(cat "$tmp/get.json")"
copy="$("$ttt" fork "$id")"
[[ "$copy" =~ ^s-[0-9a-f]+$ && "$copy" != "$id" ]] || fail "fork printed '$copy'"
"$ttt" checkpoint "$id" --checkpoint_id=cli-e2e >/dev/null || fail "checkpoint"
restored="$("$ttt" restore cli-e2e)"
[[ "$restored" =~ ^s-[0-9a-f]+$ ]] || fail "restore printed '$restored'"

# Text first, then the summary, when both streams go to one pipe.
both="$("$ttt" generate "$id" --text="The" --max_tokens=4 --temperature=0 --ignore_eos 2>&1 | cat)"
[ "$(echo "$both" | tail -n 2 | head -n 1 | cut -c1-8)" = "tokens: " ] || fail "order: $both"
[ "$(echo "$both" | tail -n 1 | cut -c1-8)" = "finish: " ] || fail "order: $both"
[ "$(echo "$both" | head -n 1 | cut -c1-8)" != "tokens: " ] || fail "no text before the summary: $both"
"$ttt" --output=json generate "$id" --text="The" --max_tokens=3 --temperature=0 --ignore_eos \
  >"$tmp/gen.json" 2>"$tmp/gen.err" || fail "generate --output=json"
[ ! -s "$tmp/gen.err" ] || fail "generate --output=json wrote to stderr: $(cat "$tmp/gen.err")"
/usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert len(d["token_ids"]) == 3 and d["finish_reason"] == "FINISH_REASON_LENGTH" and d["text"], d' \
  "$tmp/gen.json" || fail "generate --output=json: $(cat "$tmp/gen.json")"

rc=0; "$ttt" get s-0000000000000000 >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && [ ! -s "$tmp/out" ] && grep -q "^ttt: NOT_FOUND: " "$tmp/err" || fail "a failed call: rc $rc"
rc=0; "$ttt" --output=xml info >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" = 2 ] && grep -q "output must be text or json" "$tmp/err" || fail "a bad --output: rc $rc"

# Plaintext against the TLS port: the hint says --tls; with the CA from TTT_CA_FILE it works.
rc=0; "$ttt" --address="127.0.0.1:$tls_port" --timeout_s=10 health 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && grep -q "add --tls" "$tmp/err" || fail "no TLS hint (rc $rc): $(cat "$tmp/err")"
[ "$(TTT_CA_FILE="$tmp/cert.pem" "$ttt" --address="127.0.0.1:$tls_port" health)" = SERVING ] ||
  fail "TLS through TTT_CA_FILE"
rc=0; "$ttt" --address="127.0.0.1:$unused" health 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && grep -q "nothing answers at 127.0.0.1:$unused" "$tmp/err" ||
  fail "no hint for a closed port (rc $rc): $(cat "$tmp/err")"
echo "PASS"
