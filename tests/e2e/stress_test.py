#!/usr/bin/python3
"""Stress: the real ttt-serve on loopback with the shipped model, driven by the stress client
(`ttt stress`, tools/load/stress.h) for a bounded time; fails when the client reports an invariant
violation (the server died, answered INTERNAL/UNKNOWN, an untouched session or an acknowledged
checkpoint scored differently, RSS grew past the limit) or the server did not stop cleanly.

Usage: stress_test.py SERVER_BINARY MODEL_DIR STRESS_COMMAND...
Environment: TTT_STRESS_DURATION_S (default 120), TTT_STRESS_CLIENTS (4), TTT_STRESS_SEED (1),
TTT_STRESS_MAX_RSS_SLOPE (MiB/min after warm-up, default 30: a guard against gross leaks, not a
performance bound; 0 = report only; runs under 90 s only report it),
TTT_STRESS_REPORT (where to keep the JSON report; default: the temporary folder).

Then a short secured run: the server with TLS and a tokens file (a CA and certificate made by
openssl at test time), the client with --ca_file and the token from TTT_TOKEN; and a plaintext
client against it refused at the start (exit 2).
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from e2e_support import ServeProcess, log_tail


def secured_run(server_bin, model, stress_cmd, tmp):
    """A few seconds of `ttt stress` against a server with TLS and bearer tokens."""
    def openssl(*args):
        subprocess.run(["openssl"] + list(args), cwd=tmp, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server")
    with open(os.path.join(tmp, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "server.ext")
    with open(os.path.join(tmp, "tokens"), "w") as f:
        f.write("stressor %s write\n" % hashlib.sha256(b"stress-token").hexdigest())
    secured = ServeProcess(server_bin, model, tmp,
                           ["--threads=1", "--checkpoint_on_shutdown=false", "--drain_timeout_s=5",
                            "--tls_cert_file=" + os.path.join(tmp, "server.pem"),
                            "--tls_key_file=" + os.path.join(tmp, "server.key"),
                            "--auth_tokens_file=" + os.path.join(tmp, "tokens")],
                           metrics=False, log_path=os.path.join(tmp, "secured-server.log"))
    server, port, log_path = secured.start().proc, secured.port, secured.log_path
    try:
        target = "--target=localhost:%d" % port
        missing = subprocess.run(stress_cmd + [target, "--ca_file=/nonexistent/ca.pem"],
                                 capture_output=True, text=True, timeout=60)
        assert missing.returncode == 2 and "/nonexistent/ca.pem" in missing.stderr, (
            missing.returncode, missing.stderr)
        env = dict(os.environ, TTT_TOKEN="stress-token")
        secured = subprocess.run(
            stress_cmd + [target, "--ca_file=" + os.path.join(tmp, "ca.pem"), "--clients=2",
                          "--duration_s=5", "--warmup_s=0"],
            env=env, capture_output=True, text=True, timeout=300)
        if secured.returncode != 0:
            print("FAIL: the secured stress run exited %d:\n%s\nserver log ends:\n%s"
                  % (secured.returncode, secured.stdout[-3000:] + secured.stderr[-3000:],
                     log_tail(log_path)))
            return 1
        print("OK: secured run (TLS, bearer token from TTT_TOKEN)")
        return 0
    finally:
        server.kill()
        server.wait()


def main():
    server_bin, model = sys.argv[1:3]
    stress_cmd = sys.argv[3:]
    duration = float(os.environ.get("TTT_STRESS_DURATION_S", "120"))
    clients = int(os.environ.get("TTT_STRESS_CLIENTS", "4"))
    seed = os.environ.get("TTT_STRESS_SEED", "1")
    slope = os.environ.get("TTT_STRESS_MAX_RSS_SLOPE", "30")
    if duration < 90:  # the first ~30 s are the allocator's warm-up: too little left to judge
        print("run shorter than 90 s: RSS slope reported, not checked")
        slope = "0"
    # Bad flags: exit 2 with a message naming the flag, before any traffic.
    bad = subprocess.run(stress_cmd + ["--clients=0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "bad value for --clients: 0" in bad.stderr, (bad.returncode,
                                                                               bad.stderr)
    tmp = tempfile.mkdtemp(prefix="ttt-stress-")
    report = os.environ.get("TTT_STRESS_REPORT") or os.path.join(tmp, "report.json")
    served = ServeProcess(server_bin, model, tmp,
                          ["--threads=1", "--checkpoint_on_shutdown=false", "--drain_timeout_s=5"],
                          metrics=False, log_path=os.path.join(tmp, "server.log"))
    server, port, log_path = served.start().proc, served.port, served.log_path
    try:
        cmd = stress_cmd + ["--target=127.0.0.1:%d" % port, "--clients=%d" % clients,
                            "--duration_s=%g" % duration, "--seed=" + seed,
                            "--server_pid=%d" % server.pid, "--report_json=" + report,
                            "--max_rss_slope_mib_per_min=" + slope]
        print("running:", " ".join(cmd), flush=True)
        stress = subprocess.run(cmd, timeout=duration + 900)
        server_rc = server.poll()
        if server_rc is not None:
            how = ("killed by %s" % signal.Signals(-server_rc).name if server_rc < 0
                   else "exit code %d" % server_rc)
            print("FAIL: the server died (%s); its log ends:\n%s" % (how, log_tail(log_path)))
            return 1
        if stress.returncode != 0:
            print("FAIL: the stress client exited %d (violations above); server log ends:\n%s"
                  % (stress.returncode, log_tail(log_path)))
            return 1
        with open(report) as f:
            r = json.load(f)
        assert r["violation_count"] == 0 and r["operations"] > 0, r
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=120)
        if rc != 0:
            print("FAIL: the server exited %d on SIGTERM after the run:\n%s" % (rc, log_tail(log_path)))
            return 1
        print("OK: %d operations (%.1f/s), RSS slope %s MiB/min, no violation"
              % (r["operations"], r["operations_per_s"], r["rss_slope_mib_per_min"]))
        return secured_run(server_bin, model, stress_cmd, tmp)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
