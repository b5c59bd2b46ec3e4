#!/usr/bin/env python3
"""Drives a little of every kind of traffic through a ttt-serve (server info, a session, ingest,
score, generate, checkpoint, one NOT_FOUND) so that its labelled metric families have samples
before tests/deploy/check_metrics.py scrapes it; then creates EXTRA_SESSIONS more sessions, one
after another (to fill the resident pool).
  drive_traffic.py HOST:PORT [EXTRA_SESSIONS] Compiles proto/ at run time (Debian's protoc and
grpc_python_plugin, else grpc_tools).
Exits 0 when the calls ran (individual call errors are printed, not fatal: the metrics check is
the test), 77 when grpcio or a proto compiler is missing."""
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main(address, extra_sessions=0):
    try:
        import grpc
    except ImportError as e:
        print("drive_traffic: %s (install python3-grpcio python3-protobuf)" % e)
        return 77
    out = tempfile.mkdtemp()
    proto_dir = os.path.join(ROOT, "proto")
    src = os.path.join(proto_dir, "tttserve/v1/ttt_service.proto")
    # Debian's protoc and grpc_python_plugin (the build's own compilers) match python3-protobuf.
    plugin = shutil.which("grpc_python_plugin")
    if shutil.which("protoc") and plugin:
        rc = subprocess.call(["protoc", "-I" + proto_dir, "--python_out=" + out, "--grpc_python_out=" + out,
                              "--plugin=protoc-gen-grpc_python=" + plugin, src])
    else:
        try:
            from grpc_tools import protoc
        except ImportError as e:
            print("drive_traffic: no protoc + grpc_python_plugin and %s: no traffic driven" % e)
            return 77
        rc = protoc.main(["protoc", "-I" + proto_dir, "--python_out=" + out, "--grpc_python_out=" + out, src])
    if rc != 0:
        print("drive_traffic: cannot compile the proto: no traffic driven")
        return 77
    sys.path.insert(0, out)
    pb = importlib.import_module("tttserve.v1.ttt_service_pb2")
    rpc = importlib.import_module("tttserve.v1.ttt_service_pb2_grpc")
    stub = rpc.TttServiceStub(grpc.insecure_channel(address))

    def call(what, fn):
        try:
            r = fn()
            print("drive_traffic: %s OK" % what)
            return r
        except grpc.RpcError as e:
            print("drive_traffic: %s %s: %s" % (what, e.code().name, e.details()))
            return None

    info = call("GetServerInfo", lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30))
    vocab = info.vocab_size if info else 32
    chunk = info.ttt_chunk if info and info.ttt_chunk > 0 else 16
    ids = [(7 * i + 3) % vocab for i in range(2 * chunk + 3)]
    s = call("CreateSession", lambda: stub.CreateSession(pb.CreateSessionRequest(), timeout=30))
    if s:
        sid = s.session_id
        msgs = [pb.IngestRequest(session_id=sid, token_ids=ids[:chunk]),
                pb.IngestRequest(token_ids=ids[chunk:], flush=True)]
        call("Ingest", lambda: list(stub.Ingest(iter(msgs), timeout=60)))
        call("Score", lambda: stub.Score(pb.ScoreRequest(session_id=sid, token_ids=ids[:5]), timeout=60))
        call("Generate", lambda: list(stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=3), timeout=60)))
        call("Checkpoint", lambda: stub.Checkpoint(pb.CheckpointRequest(session_id=sid), timeout=60))
    call("GetSession(unknown)", lambda: stub.GetSession(pb.GetSessionRequest(session_id="s-0"), timeout=30))
    for _ in range(extra_sessions):
        call("CreateSession", lambda: stub.CreateSession(pb.CreateSessionRequest(), timeout=30))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
