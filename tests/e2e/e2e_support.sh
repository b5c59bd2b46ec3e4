# shellcheck shell=bash
# Sourced by the end-to-end shell scripts (tests/e2e, tests/deploy): the one way they start
# ttt-serve, as e2e_support.py's ServeProcess does for the Python scripts.

# ttt_free_port [N]: N (default 1) different TCP ports on 127.0.0.1, on one line, that were free
# a moment ago (bound together, so that the kernel cannot hand out one twice, as two calls in a
# row may).
ttt_free_port() {
  /usr/bin/python3 -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "${1:-1}"
}

# ttt_serve_start SERVER LOG CHECKPOINT_DIR [FLAG...]: starts SERVER in the background with
# --checkpoint_dir, --shutdown_delay_s=0 and --drain_timeout_s=2, then the FLAGs, which override
# these (the last of a repeated flag wins); its output replaces LOG. The pid is in
# $ttt_serve_pid.
ttt_serve_start() {
  local server="$1" log="$2" checkpoint_dir="$3"
  shift 3
  "$server" --checkpoint_dir="$checkpoint_dir" --shutdown_delay_s=0 --drain_timeout_s=2 "$@" \
    >"$log" 2>&1 &
  # shellcheck disable=SC2034  # read by the scripts that source this file
  ttt_serve_pid=$!
}

# ttt_serve_wait LOG PID [SECONDS]: returns 0 once LOG says "gRPC on port" (every listener is up
# and the server serves); 1, with the reason on stderr, when PID exits first or SECONDS (default
# 120) pass.
ttt_serve_wait() {
  local log="$1" pid="$2" tries=$((${3:-120} * 4))
  for _ in $(seq 1 "$tries"); do
    grep -q "gRPC on port" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "ttt-serve ($log) exited before serving" >&2; return 1; }
    sleep 0.25
  done
  echo "ttt-serve ($log) not serving within ${3:-120} s" >&2
  return 1
}
