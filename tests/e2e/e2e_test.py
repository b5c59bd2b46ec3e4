#!/usr/bin/python3
"""End-to-end test of ttt-serve: starts the real binary on a free loopback port and drives it
over gRPC with stubs generated at test time from proto/ (Debian's python3-grpc-tools).

Goes through: health, create, ingest split two ways (same results), score, generate (seeded,
deterministic), checkpoint, restart the server, restore, score again (bit-identical), fork,
reset, delete, export/import, and a few bad inputs.

Usage: e2e_test.py --server PATH/ttt-serve --model MODEL_DIR --proto PROTO_DIR
"""
import math
import os
import shutil
import struct
import tempfile
import threading
import unittest
from e2e_support import ServeProcess, error_details, parse_unittest_args

ARGS = None
pb = None
pb_grpc = None
grpc = None


class ServerProcess(ServeProcess):
    """The real ttt-serve binary on loopback (e2e_support.ServeProcess) with a channel and a stub
    to it; its checkpoints in `ckpt_dir`, which outlives it (a restart restores from there)."""

    def __init__(self, folder, ckpt_dir):
        super().__init__(ARGS.server, ARGS.model, folder, ["--drain_timeout_s=5"],
                         checkpoint_dir=ckpt_dir)
        self.start()
        self.channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = pb_grpc.TttServiceStub(self.channel)

    def stop(self):
        self.channel.close()
        return super().stop()  # SIGTERM: drain, persist sessions


def ingest(stub, session_id, pieces, report_loss=True, metadata=None):
    """Streams `pieces` (lists of token ids) into a session; returns the responses."""
    def requests():
        for i, ids in enumerate(pieces):
            yield pb.IngestRequest(session_id=session_id if i == 0 else "", token_ids=ids,
                                   report_loss=report_loss)
    return list(stub.Ingest(requests(), metadata=metadata))


def tokens_for_test(n, vocab, seed=7):
    out, x = [], seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(3 + x % (vocab - 3))
    return out


def same_floats(a, b):
    """Bit-identical float32 sequences (NaN equals NaN)."""
    return [struct.pack("<f", x) for x in a] == [struct.pack("<f", x) for x in b]


class E2ETest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ttt-e2e-")
        self.ckpt = os.path.join(self.tmp, "ckpt")
        self.server = ServerProcess(self.tmp, self.ckpt)
        self.stub = self.server.stub
        self.info = self.stub.GetServerInfo(pb.GetServerInfoRequest())

    def tearDown(self):
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_health_and_reflection(self):
        # Raw calls (Debian ships no grpc_health Python package): HealthCheckRequest{service=1}
        # and HealthCheckResponse{status=1}, SERVING = 1.
        check = self.server.channel.unary_unary("/grpc.health.v1.Health/Check")
        for service in (b"", b"tttserve.v1.TttService"):
            req = (b"\x0a" + bytes([len(service)]) + service) if service else b""
            self.assertEqual(check(req, timeout=10), b"\x08\x01")
        # Server reflection lists the service: ServerReflectionRequest{list_services=7}.
        info = self.server.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        replies = list(info(iter([b"\x3a\x00"]), timeout=10))
        self.assertIn(b"tttserve.v1.TttService", b"".join(replies))

    def test_full_lifecycle(self):
        stub, vocab = self.stub, self.info.vocab_size
        chunk = self.info.ttt_chunk
        doc = tokens_for_test(5 * chunk + 3, vocab)
        probe = tokens_for_test(2 * chunk + 1, vocab, seed=99)

        a = stub.CreateSession(pb.CreateSessionRequest(
            options=pb.SessionOptions(labels={"who": "e2e"})))
        b = stub.CreateSession(pb.CreateSessionRequest())
        # Split two different ways: one message vs. ragged pieces.
        ra = ingest(stub, a.session_id, [doc])
        cuts = [0, 1, chunk - 1, chunk + 2, 3 * chunk, len(doc)]
        rb = ingest(stub, b.session_id, [doc[i:j] for i, j in zip(cuts, cuts[1:])])
        self.assertEqual(len(ra), 1)
        self.assertEqual(len(rb), len(cuts) - 1)
        self.assertEqual([r.message_index for r in rb], list(range(len(cuts) - 1)))
        self.assertEqual(ra[-1].stream_tokens, len(doc))
        self.assertEqual(rb[-1].stream_tokens, len(doc))
        self.assertEqual(ra[-1].counters.chunks_applied, 5)
        self.assertEqual(ra[-1].counters.tokens_pending, 3)
        self.assertEqual(ra[-1].counters.tokens_applied, 5 * chunk)
        self.assertEqual(rb[-1].counters, ra[-1].counters)
        self.assertTrue(math.isfinite(ra[-1].loss) and ra[-1].loss > 0)
        self.assertAlmostEqual(ra[-1].loss, rb[-1].loss, places=4)
        self.assertAlmostEqual(ra[-1].perplexity, math.exp(ra[-1].loss), places=3)

        sa = stub.Score(pb.ScoreRequest(session_id=a.session_id, token_ids=probe))
        sb = stub.Score(pb.ScoreRequest(session_id=b.session_id, token_ids=probe))
        self.assertEqual(list(sa.token_ids), probe)
        self.assertEqual(len(sa.logprobs), len(probe))
        for x, y in zip(sa.logprobs, sb.logprobs):
            self.assertAlmostEqual(x, y, places=4)
        # Score changes nothing.
        again = stub.Score(pb.ScoreRequest(session_id=a.session_id, token_ids=probe))
        self.assertTrue(same_floats(sa.logprobs, again.logprobs))
        got = stub.GetSession(pb.GetSessionRequest(session_id=a.session_id))
        self.assertEqual(got.counters.position, len(doc))
        self.assertEqual(len(got.deltas), len(self.info.ttt_layers))
        self.assertTrue(all(d.delta_norm > 0 for d in got.deltas))
        self.assertGreater(got.memory_bytes, 0)

        # Generate: seeded and deterministic; by default the session is unchanged.
        gen_req = pb.GenerateRequest(session_id=a.session_id, max_tokens=6, temperature=0.8,
                                     seed=42, ignore_eos=True)
        g1 = list(stub.Generate(gen_req))
        g2 = list(stub.Generate(gen_req))
        toks1 = [r.token_id for r in g1 if r.HasField("token_id")]
        toks2 = [r.token_id for r in g2 if r.HasField("token_id")]
        self.assertEqual(len(toks1), 6)
        self.assertEqual(toks1, toks2)
        self.assertEqual(g1[-1].finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(g1[-1].tokens_generated, 6)
        after = stub.GetSession(pb.GetSessionRequest(session_id=a.session_id))
        self.assertEqual(after.counters.position, len(doc))

        # Checkpoint, restart the server, restore: bit-identical scores.
        ck = stub.Checkpoint(pb.CheckpointRequest(session_id=a.session_id, checkpoint_id="e2e-a"))
        self.assertEqual(ck.checkpoint_id, "e2e-a")
        self.assertGreater(ck.size_bytes, 0)
        # SIGTERM: drains, persists live sessions, exits 0.
        self.assertEqual(self.server.stop(), 0, self.server.output())
        self.assertIn("stopped", self.server.output())
        self.server = ServerProcess(self.tmp, self.ckpt)
        stub = self.stub = self.server.stub
        listed = stub.ListCheckpoints(pb.ListCheckpointsRequest())
        self.assertIn("e2e-a", [c.checkpoint_id for c in listed.checkpoints])
        restored = stub.Restore(pb.RestoreRequest(checkpoint_id="e2e-a"))
        self.assertEqual(restored.counters.position, len(doc))
        self.assertEqual(restored.options.labels["who"], "e2e")
        sr = stub.Score(pb.ScoreRequest(session_id=restored.session_id, token_ids=probe))
        self.assertTrue(same_floats(sa.logprobs, sr.logprobs),
                        "restored scores differ: %s vs %s" % (list(sa.logprobs)[:4],
                                                              list(sr.logprobs)[:4]))
        # Sessions that were live at shutdown came back too (checkpoint_on_shutdown).
        live = stub.GetSession(pb.GetSessionRequest(session_id=a.session_id))
        self.assertEqual(live.counters.position, len(doc))
        sl = stub.Score(pb.ScoreRequest(session_id=a.session_id, token_ids=probe))
        self.assertTrue(same_floats(sa.logprobs, sl.logprobs))

        # Fork: an exact copy that then diverges independently.
        fork = stub.Fork(pb.ForkRequest(session_id=restored.session_id))
        self.assertNotEqual(fork.session_id, restored.session_id)
        sf = stub.Score(pb.ScoreRequest(session_id=fork.session_id, token_ids=probe))
        self.assertTrue(same_floats(sa.logprobs, sf.logprobs))
        ingest(stub, fork.session_id, [probe])
        self.assertEqual(stub.GetSession(pb.GetSessionRequest(
            session_id=restored.session_id)).counters.position, len(doc))

        # Export / import round trip.
        data = b"".join(r.data for r in stub.ExportSession(
            pb.ExportSessionRequest(session_id=restored.session_id)))
        imported = stub.ImportSession(iter([pb.ImportSessionRequest(data=data[:1000]),
                                            pb.ImportSessionRequest(data=data[1000:])]))
        si = stub.Score(pb.ScoreRequest(session_id=imported.session_id, token_ids=probe))
        self.assertTrue(same_floats(sa.logprobs, si.logprobs))
        with self.assertRaises(grpc.RpcError) as e:
            bad = bytearray(data)
            bad[-5] ^= 0xFF
            stub.ImportSession(iter([pb.ImportSessionRequest(data=bytes(bad))]))
        self.assertEqual(e.exception.code(), grpc.StatusCode.DATA_LOSS)
        self.assertIn("checksum", e.exception.details())

        # Reset: back to the initial state.
        reset = stub.Reset(pb.ResetRequest(session_id=restored.session_id))
        self.assertEqual(reset.counters.position, 0)
        self.assertTrue(all(d.delta_norm == 0 for d in reset.deltas))

        # Delete, then it is gone.
        stub.DeleteSession(pb.DeleteSessionRequest(session_id=restored.session_id))
        with self.assertRaises(grpc.RpcError) as e:
            stub.GetSession(pb.GetSessionRequest(session_id=restored.session_id))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(checkpoint_id="e2e-a"))

    def test_tenants_are_isolated(self):
        s = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=[("x-tenant-id", "alice")])
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.GetSession(pb.GetSessionRequest(session_id=s.session_id),
                                 metadata=[("x-tenant-id", "bob")])
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        listed = self.stub.ListSessions(pb.ListSessionsRequest(), metadata=[("x-tenant-id", "bob")])
        self.assertEqual(len(listed.sessions), 0)

    def test_bad_input(self):
        s = self.stub.CreateSession(pb.CreateSessionRequest())
        with self.assertRaises(grpc.RpcError) as e:
            ingest(self.stub, s.session_id, [[self.info.vocab_size + 5]])
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("outside the vocabulary", e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stub.Generate(pb.GenerateRequest(session_id=s.session_id, top_p=1.5,
                                                       prompt_token_ids=[5])))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("top_p", e.exception.details())
        if not self.info.has_tokenizer:
            with self.assertRaises(grpc.RpcError) as e:
                self.stub.Score(pb.ScoreRequest(session_id=s.session_id, text=b"hello"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("no tokenizer", e.exception.details())

    def test_errors_carry_reason_and_retry_delay(self):
        """Issue 25 item 5: google.rpc.ErrorInfo on every error, RetryInfo where retrying helps,
        read the way a program would (grpc-status-details-bin)."""
        s = self.stub.CreateSession(pb.CreateSessionRequest())
        with self.assertRaises(grpc.RpcError) as e:
            ingest(self.stub, s.session_id, [[self.info.vocab_size + 5]])
        reason, domain, metadata, delay = error_details(e.exception)
        self.assertEqual((reason, domain, delay), ("TOKEN_OUT_OF_VOCAB", "ttt-serve", None))
        self.assertEqual(metadata["token_id"], str(self.info.vocab_size + 5))
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.GetSession(pb.GetSessionRequest(session_id="no-such-session"))
        self.assertEqual(error_details(e.exception)[0::3], ("NOT_FOUND", None))
        # A second writer while an Ingest stream holds the session: busy, retry in 1 s.
        release = threading.Event()

        def held_stream():
            yield pb.IngestRequest(session_id=s.session_id, token_ids=[5, 6], flush=True)
            release.wait(30)

        responses = self.stub.Ingest(held_stream())
        try:
            next(responses)  # the stream holds the writer now
            with self.assertRaises(grpc.RpcError) as e:
                self.stub.Reset(pb.ResetRequest(session_id=s.session_id))
            self.assertEqual(e.exception.code(), grpc.StatusCode.ABORTED)
            reason, _, _, delay = error_details(e.exception)
            self.assertEqual((reason, delay), ("SESSION_BUSY", 1.0))
        finally:
            release.set()
            list(responses)


def main():
    global ARGS, pb, pb_grpc, grpc
    ARGS, pb, pb_grpc, argv = parse_unittest_args()
    import grpc  # binds the module's global (declared above), as pb and pb_grpc
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
