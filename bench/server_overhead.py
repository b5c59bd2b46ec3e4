#!/usr/bin/python3
"""What the server adds to decoding (issue 26, item 4): the server's aggregate decode tokens/s
(`ttt loadgen N --measure=decode`: every session ingests 256 tokens first, then all generate
--max_tokens greedily at once, and only that phase is timed) against the engine's own decode rate
on the same shape (`engine_bench --shape=shipped --only=decode`: the shipped model's shape, one
token per session per step), for 1 and N sessions, one engine thread each, in the same run.

Usage: bench/server_overhead.py [--build build] [--sessions 16] [--max_tokens 256] [--rounds 2]
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "tests", "e2e"))
from e2e_support import free_port, stop_process, wait_http  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--build", default=os.path.join(root, "build"))
parser.add_argument("--model", default=os.path.join(root, "models/ttt-brown"))
parser.add_argument("--sessions", type=int, default=16)
parser.add_argument("--max_tokens", type=int, default=256)
parser.add_argument("--rounds", type=int, default=2)
args = parser.parse_args()
tmp = tempfile.mkdtemp(prefix="overhead-")
env = dict(os.environ, OMP_NUM_THREADS="1")


def engine_rates():
    out = subprocess.run([os.path.join(args.build, "bench/engine_bench"), "--shape=shipped",
                          "--only=decode", "--threads=1", "--clock=wall",
                          "--sessions=1,%d" % args.sessions],
                         capture_output=True, text=True, env=env, check=True).stdout
    rates = {}
    for n, on in re.findall(r"^\| (\d+) \| (\d+) tok/s \|", out, re.M):
        rates[int(n)] = float(on)
    return rates


def server_rates():
    port, mport = free_port(), free_port()
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen([os.path.join(args.build, "server/ttt-serve"),
                               "--model=" + args.model, "--listen=127.0.0.1:%d" % port,
                               "--metrics_listen=127.0.0.1:%d" % mport, "--threads=1",
                               "--checkpoint_dir=" + os.path.join(tmp, "store"),
                               "--shutdown_delay_s=0"], stdout=log, stderr=subprocess.STDOUT,
                              env=env)
    try:
        wait_http("http://127.0.0.1:%d/readyz" % mport, 120)
        out = subprocess.run([os.path.join(args.build, "cli/ttt"), "loadgen",
                              str(args.sessions), "--measure=decode", "--mix=default",
                              "--doc_tokens=256", "--max_tokens=%d" % args.max_tokens,
                              "--address=127.0.0.1:%d" % port],
                             capture_output=True, text=True, check=True).stdout
    finally:
        stop_process(server, signal.SIGTERM)
    return {int(n): float(r) for n, r in re.findall(r"^decode N=(\d+) +(\d+) tokens/s", out, re.M)}


machine = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True,
                         text=True).stdout.strip()
for r in range(args.rounds):
    engine, served = engine_rates(), server_rates()
    n = args.sessions
    print("round %d: engine 1 session %.0f tok/s, %d sessions %.0f tok/s (%.2fx); server 1 "
          "session %.0f tok/s, %d sessions %.0f tok/s (%.2fx); server / engine: 1 session "
          "%.2f, %d sessions %.2f" % (r + 1, engine[1], n, engine[n], engine[n] / engine[1],
                                      served[1], n, served[n], served[n] / served[1],
                                      served[1] / engine[1], n, served[n] / engine[n]))
print("machine: %s, %d cores, load average %.1f" % (machine, os.cpu_count(), os.getloadavg()[0]))
