#!/usr/bin/python3
"""Writes tests/fuzz/corpus/request_fuzzer/: one valid request of each RPC (and a few bad ones the
contract names), each as request_fuzzer reads its input: a byte picking the RPC, a byte of split
point, then the serialized request. Run from anywhere; needs protoc and python3-protobuf.

  tests/fuzz/make_request_seeds.py
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus", "request_fuzzer")
# The RPC numbers of request_fuzzer.cc's switch.
RPC = {"GetServerInfo": 0, "CreateSession": 1, "GetSession": 2, "ListSessions": 3,
       "DeleteSession": 4, "Ingest": 5, "Generate": 6, "Score": 7, "Checkpoint": 8,
       "Restore": 9, "Reset": 10, "Fork": 11, "ListCheckpoints": 12, "DeleteCheckpoint": 13,
       "ExportSession": 14, "ImportSession": 15, "Tenant": 16}


def load_pb():
    tmp = tempfile.mkdtemp(prefix="request-seeds-")
    subprocess.check_call(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", tmp,
                           "tttserve/v1/ttt_service.proto"])
    sys.path.insert(0, tmp)
    from tttserve.v1 import ttt_service_pb2
    return ttt_service_pb2


def main():
    pb = load_pb()
    opts = pb.SessionOptions(reset_at_document_end=True, idle_ttl_seconds=60,
                             labels={"team": "a", "run": "7"})
    le64 = lambda n: n.to_bytes(8, "little")
    seeds = {
        "get_server_info": ("GetServerInfo", 0, pb.GetServerInfoRequest()),
        "create_session": ("CreateSession", 0, pb.CreateSessionRequest(options=opts)),
        "get_session": ("GetSession", 0, pb.GetSessionRequest(session_id="s-0123456789abcdef")),
        "get_session_bad_id": ("GetSession", 0, pb.GetSessionRequest(session_id="../etc/passwd")),
        "list_sessions": ("ListSessions", 0, pb.ListSessionsRequest(label_selector={"team": "a"})),
        "delete_session": ("DeleteSession", 0, pb.DeleteSessionRequest(session_id="s-1")),
        "ingest_ids": ("Ingest", 0, pb.IngestRequest(session_id="s-1", token_ids=[5, 6, 7],
                                                     report_loss=True)),
        "ingest_text_cut": ("Ingest", 9, pb.IngestRequest(session_id="s-1", flush=True,
                                                          text="the café, 日本 😀".encode())),
        "ingest_bad_utf8": ("Ingest", 3, pb.IngestRequest(text=b"ok \xc3", end_of_document=True)),
        "ingest_both": ("Ingest", 0, pb.IngestRequest(text=b"hi", token_ids=[1])),
        "generate": ("Generate", 0, pb.GenerateRequest(
            session_id="s-1", prompt_text="Once upon".encode(), max_tokens=8, temperature=0.7,
            top_k=40, top_p=0.9, seed=42, stop=["\n", "The"], commit=True)),
        "generate_defaults": ("Generate", 0, pb.GenerateRequest(session_id="s-1",
                                                                prompt_token_ids=[1, 2])),
        "score_text": ("Score", 0, pb.ScoreRequest(session_id="s-1", text="naïve words".encode())),
        "score_ids": ("Score", 0, pb.ScoreRequest(session_id="s-1", token_ids=[3, 4, 5, -1])),
        "checkpoint": ("Checkpoint", 0, pb.CheckpointRequest(session_id="s-1",
                                                             checkpoint_id="ck-1")),
        "restore": ("Restore", 0, pb.RestoreRequest(checkpoint_id="ck-1", session_id="s-2",
                                                    options=opts)),
        "reset": ("Reset", 0, pb.ResetRequest(session_id="s-1")),
        "fork": ("Fork", 0, pb.ForkRequest(session_id="s-1", options=opts)),
        "list_checkpoints": ("ListCheckpoints", 0, pb.ListCheckpointsRequest()),
        "delete_checkpoint": ("DeleteCheckpoint", 0, pb.DeleteCheckpointRequest(
            checkpoint_id="ck-1")),
        "export": ("ExportSession", 0, pb.ExportSessionRequest(session_id="s-1")),
        "import": ("ImportSession", 10, pb.ImportSessionRequest(
            data=le64(32) + b'{"__metadata__":{"a":"b"}}'.ljust(32) + b"\0" * 16,
            options=opts)),
        "import_deep": ("ImportSession", 5, pb.ImportSessionRequest(
            data=le64(64) + b'{"a":' + b"[" * 30 + b"]" * 29)),
    }
    os.makedirs(OUT, exist_ok=True)
    for name, (rpc, cut, msg) in seeds.items():
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(bytes([RPC[rpc], cut]) + msg.SerializeToString())
    for name, tenant in {"tenant_ok": b"team-a", "tenant_bad": b"a/b\xff"}.items():
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(bytes([RPC["Tenant"], 0]) + tenant)
    print("wrote %d seeds to %s" % (len(seeds) + 2, os.path.relpath(OUT, ROOT)))


if __name__ == "__main__":
    main()
