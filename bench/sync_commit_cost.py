#!/usr/bin/python3
"""What sync durability costs on sessions shared through etcd (issue 23): the acknowledgement
latency of one 16-token Ingest message (a stream each) with --durability=sync (every message
committed: a blob written and fsync'd, then one etcd transaction) against write_behind, and the
rate of 400 such messages streamed without waiting (those queued behind a commit are committed
together by the next one), in the same run, on one etcd member (Debian's etcd-server) on loopback,
or a cluster of three (--etcd_members=3: each transaction then waits for a quorum's fsync).

Usage: bench/sync_commit_cost.py [--server build/server/ttt-serve] [--model models/ttt-brown]
                                 [--etcd_members 1|3]
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "tests", "e2e"))
from e2e_support import Etcd, free_port, load_stubs, stop_process, wait_http  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--server", default=os.path.join(root, "build/server/ttt-serve"))
parser.add_argument("--model", default=os.path.join(root, "models/ttt-brown"))
parser.add_argument("--etcd_members", type=int, default=1, choices=(1, 3))
args = parser.parse_args()
pb, pb_grpc = load_stubs(os.path.join(root, "proto"), tempfile.mkdtemp())
import grpc  # noqa: E402
tmp = tempfile.mkdtemp(prefix="synccost-")
etcd = Etcd(os.path.join(tmp, "etcd"), members=args.etcd_members)
server, model = args.server, args.model
res = {}
try:
    for mode in ["write_behind", "sync"]:
        port, mport = free_port(), free_port()
        log = open(os.path.join(tmp, mode + ".log"), "w")
        p = subprocess.Popen([server, "--model=" + model, "--listen=127.0.0.1:%d" % port,
                              "--metrics_listen=127.0.0.1:%d" % mport,
                              "--checkpoint_dir=" + os.path.join(tmp, "store"),
                              "--etcd_endpoints=" + etcd.endpoints(), "--replica_id=" + mode,
                              "--durability=" + mode, "--shutdown_delay_s=0", "--threads=1"],
                             stdout=log, stderr=subprocess.STDOUT)
        wait_http("http://127.0.0.1:%d/readyz" % mport, 120)
        stub = pb_grpc.TttServiceStub(grpc.insecure_channel("127.0.0.1:%d" % port))
        sid = "bench-" + mode
        stub.CreateSession(pb.CreateSessionRequest(session_id=sid), timeout=10)
        lat = []
        for k in range(300):
            t = time.perf_counter()
            for _ in stub.Ingest(iter([pb.IngestRequest(session_id=sid, token_ids=[5 + (k + i) % 200 for i in range(16)])]), timeout=30):
                pass
            lat.append((time.perf_counter() - t) * 1000)
        lat = lat[20:]
        q = statistics.quantiles(lat, n=100)
        # One stream of 400 messages sent without waiting (up to --max_inflight_messages in
        # flight): in sync mode the messages queued behind a commit are committed by the next.
        t = time.perf_counter()
        for _ in stub.Ingest(iter([pb.IngestRequest(
                session_id=sid, token_ids=[5 + (k + i) % 200 for i in range(16)])
                for k in range(400)]), timeout=120):
            pass
        streamed = 400 / (time.perf_counter() - t)
        res[mode] = (statistics.median(lat), q[98], 1000 / statistics.mean(lat), streamed)
        stop_process(p, signal.SIGTERM)
finally:
    etcd.stop()
for m, (p50, p99, rate, streamed) in res.items():
    print("%-12s one message a stream: p50 %.2f ms  p99 %.2f ms  %.0f messages/s;  "
          "400 messages in one stream: %.0f messages/s" % (m, p50, p99, rate, streamed))
print("etcd members: %d" % args.etcd_members)
print("sync / write_behind messages/s: one a stream %.2f, streamed %.2f" % (
    res["sync"][2] / res["write_behind"][2], res["sync"][3] / res["write_behind"][3]))
print("machine: %s, %d cores, load average %.1f" % (
    next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
          if line.startswith("model name")), "?"), os.cpu_count(), os.getloadavg()[0]))
