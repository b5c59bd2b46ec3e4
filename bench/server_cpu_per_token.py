#!/usr/bin/python3
"""CPU time per decoded token in ttt-serve, split by thread, against the engine's own.

The wall-clock ratio of bench/server_overhead.py moves with every other job on a shared machine;
CPU time does much less. This starts ttt-serve (one engine thread), runs `ttt loadgen N
--measure=decode` twice with different --max_tokens, and reads the CPU time (/proc, utime +
stime) of the server's engine thread (its busiest), of its other threads (gRPC's) and of the
client; the difference between the two runs divided by the extra tokens (N + 1 sessions: loadgen
also runs its one-session baseline) is the marginal CPU per decoded token, with ingest, start-up
and connection set-up cancelled out. The engine's own CPU per token comes from `engine_bench
--clock=cpu --only=decode` for 1 and N sessions, weighted as loadgen's tokens are.

Usage: bench/server_cpu_per_token.py [--build build] [--server PATH] [--sessions 16] [--short 256]
                                    [--long 768]
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
parser = argparse.ArgumentParser()
parser.add_argument("--build", default=os.path.join(root, "build"))
parser.add_argument("--model", default=os.path.join(root, "models/ttt-brown"))
parser.add_argument("--server", default="", help="ttt-serve binary (default: the build's)")
parser.add_argument("--sessions", type=int, default=16)
parser.add_argument("--short", type=int, default=256)
parser.add_argument("--long", type=int, default=768)
args = parser.parse_args()
tick = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def thread_cpu(pid):
    """{tid: CPU seconds} of every thread of `pid`."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            fields = open("/proc/%d/task/%s/stat" % (pid, tid)).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def loadgen(port, max_tokens):
    """(client CPU seconds, loadgen's stdout) of one run."""
    before = os.times()
    out = subprocess.run([os.path.join(args.build, "cli/ttt"), "loadgen", str(args.sessions),
                          "--measure=decode", "--mix=default", "--doc_tokens=256",
                          "--max_tokens=%d" % max_tokens, "--address=127.0.0.1:%d" % port],
                         capture_output=True, text=True, check=True).stdout
    after = os.times()
    return (after.children_user + after.children_system - before.children_user -
            before.children_system), out


def engine_cpu_per_token():
    out = subprocess.run([os.path.join(args.build, "bench/engine_bench"), "--shape=shipped",
                          "--only=decode", "--threads=1", "--clock=cpu",
                          "--sessions=1,%d" % args.sessions], capture_output=True, text=True,
                         check=True).stdout
    rates = {int(n): float(r) for n, r in re.findall(
        r"decode \(512 steps\), (\d+) session\(s\), TTT on \| (\d+) tok/s", out)}
    return rates


port, mport = free_port(), free_port()
tmp = tempfile.mkdtemp(prefix="server_cpu_")
server = subprocess.Popen([args.server or os.path.join(args.build, "server/ttt-serve"),
                           "--model=" + args.model,
                           "--listen=127.0.0.1:%d" % port,
                           "--metrics_listen=127.0.0.1:%d" % mport, "--threads=1",
                           "--checkpoint_dir=" + os.path.join(tmp, "store"),
                           "--shutdown_delay_s=0"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
try:
    for _ in range(240):
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/readyz" % mport, timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    runs = []
    for max_tokens in (args.short, args.long):
        start = thread_cpu(server.pid)
        client, out = loadgen(port, max_tokens)
        end = thread_cpu(server.pid)
        used = {tid: end[tid] - start.get(tid, 0.0) for tid in end}
        engine_tid = max(used, key=used.get)
        runs.append((used[engine_tid], sum(used.values()) - used[engine_tid], client, out))
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)

extra_tokens = (args.sessions + 1) * (args.long - args.short)
per_token = [1e6 * (b - a) / extra_tokens for a, b in zip(runs[0][:3], runs[1][:3])]
rates = engine_cpu_per_token()
n = args.sessions
engine_us = 1e6 * (args.long - args.short) * (1 / rates[1] + n / rates[n]) / ((n + 1) * (
    args.long - args.short))
print("marginal CPU per decoded token (%d + 1 sessions, max_tokens %d vs %d): server engine "
      "thread %.1f us, server's other threads %.1f us, client %.1f us; engine_bench (1 and %d "
      "sessions, same weights) %.1f us; engine thread / engine_bench %.2f" %
      (n, args.short, args.long, per_token[0], per_token[1], per_token[2], n, engine_us,
       per_token[0] / engine_us))
print("load average %.1f" % os.getloadavg()[0])
