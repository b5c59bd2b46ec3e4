#!/usr/bin/python3
"""Measures what never-read ExportSession streams cost the server (issue 9, item 4).

Starts the real ttt-serve on loopback, gives a few sessions some state, then opens N
ExportSession streams over C HTTP/2 connections and never reads them. Prints the server's RSS
before and while the streams are held, and how the calls ended (served and stalled, or refused
with RESOURCE_EXHAUSTED by --max_concurrent_exports). A measurement, not a test: the figures go
to docs/robustness.md.

  tools/measure_unread_exports.py SERVER_BINARY MODEL_DIR [--streams 1000] [--connections 20]
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from e2e_support import free_port, load_stubs  # noqa: E402


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("model")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=2000, help="ingested into each session")
    ap.add_argument("--hold_s", type=float, default=15)
    args = ap.parse_args()

    import grpc
    tmp = tempfile.mkdtemp(prefix="ttt-unread-")
    pb, pb_grpc = load_stubs(os.path.join(os.path.dirname(__file__), "..", "proto"), tmp)

    port = free_port()
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen([args.server, "--model=" + args.model, "--threads=1",
                               "--listen=127.0.0.1:%d" % port, "--metrics_listen=",
                               "--checkpoint_dir=" + os.path.join(tmp, "ckpt"),
                               "--checkpoint_on_shutdown=false"], stdout=log, stderr=log)
    try:
        target = "127.0.0.1:%d" % port
        control = grpc.insecure_channel(target)
        grpc.channel_ready_future(control).result(timeout=120)
        stub = pb_grpc.TttServiceStub(control)
        ids = []
        for s in range(args.sessions):
            sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
            tokens = [(7 * i + 13 * s) % 1000 + 5 for i in range(args.tokens)]
            for _ in stub.Ingest(iter([pb.IngestRequest(session_id=sid, token_ids=tokens,
                                                        flush=True)])):
                pass
            ids.append(sid)
        export_bytes = sum(len(m.data) for m in stub.ExportSession(
            pb.ExportSessionRequest(session_id=ids[0])))
        time.sleep(2)
        before = rss_mib(server.pid)

        # One connection per channel: a distinct channel argument keeps gRPC from sharing them.
        channels = [grpc.insecure_channel(target, options=[("ttt.connection", c)])
                    for c in range(args.connections)]
        stubs = [pb_grpc.TttServiceStub(c) for c in channels]
        calls = []
        for i in range(args.streams):
            req = pb.ExportSessionRequest(session_id=ids[i % len(ids)])
            calls.append(stubs[i % len(stubs)].ExportSession(req))
        time.sleep(args.hold_s)
        held = rss_mib(server.pid)
        outcome = collections.Counter()
        for call in calls:
            if call.done():
                outcome[call.code().name] += 1
            else:
                outcome["still open (never read)"] += 1
        peak = held
        for call in calls:
            call.cancel()
        time.sleep(3)
        after = rss_mib(server.pid)
        print("model %s, %d sessions of %d tokens (export %.2f MiB each)"
              % (os.path.basename(os.path.normpath(args.model)), args.sessions, args.tokens,
                 export_bytes / 2**20))
        print("%d ExportSession streams over %d connections, never read, held %.0f s"
              % (args.streams, args.connections, args.hold_s))
        for k, v in sorted(outcome.items()):
            print("  %-28s %d" % (k, v))
        print("server RSS: %.0f MiB before, %.0f MiB while held (+%.0f), %.0f MiB after cancel"
              % (before, peak, peak - before, after))
        alive = server.poll() is None
        print("server alive:", alive)
        for c in channels + [control]:
            c.close()
        return 0 if alive else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
