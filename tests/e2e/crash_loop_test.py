#!/usr/bin/python3
"""Crash loop (issue 9, "The proof"): the real ttt-serve is killed with SIGKILL at random moments
while a client ingests and checkpoints, or while it persists its sessions after SIGTERM, then
restarted on the same --checkpoint_dir. After every restart:
- the server starts (a half-written file never keeps it down);
- every acknowledged checkpoint is listed and restores to a session whose scores are
  bit-identical to the session's when it was checkpointed (for an id whose replacement was in
  flight at the kill, the old or the new state);
- ListCheckpoints lists no temporary or empty file, only ids the client wrote, and each one it
  lists restores;
- no temporary file of the killed server's writes is left on disk (removed at start).

Usage: crash_loop_test.py SERVER_BINARY MODEL_DIR PROTO_DIR
Environment: TTT_CRASH_LOOP_ITERATIONS (default 10), TTT_CRASH_LOOP_SEED (default 1).
"""
import os
import random
import signal
import struct
import sys
import tempfile
import threading
import time
from e2e_support import ServeProcess, load_stubs, log_tail

ITERATIONS = int(os.environ.get("TTT_CRASH_LOOP_ITERATIONS", "10"))
SEED = int(os.environ.get("TTT_CRASH_LOOP_SEED", "1"))
POOL = ["ck-%d" % i for i in range(6)]  # checkpoint ids: replacing one is part of the test
MODES = ["during ingest and checkpoints", "during back-to-back checkpoints",
         "during the persist that follows SIGTERM"]


def score_bits(resp):
    """The scores as bytes: equal bytes means bit-identical float32 log-probabilities."""
    return (struct.pack("%di" % len(resp.token_ids), *resp.token_ids) +
            struct.pack("%df" % len(resp.logprobs), *resp.logprobs))


class Harness:
    def __init__(self, server_bin, model, pb, pb_grpc, tmp):
        self.server_bin, self.model, self.pb, self.pb_grpc = server_bin, model, pb, pb_grpc
        self.ckpt_dir = os.path.join(tmp, "ckpt")
        self.log_path = os.path.join(tmp, "server.log")
        self.rng = random.Random(SEED)
        self.vocab = None  # from GetServerInfo
        self.probe = None
        self.acked = {}   # checkpoint id -> score bits of the session when it was taken
        self.maybe = {}   # checkpoint id -> score bits of a write in flight at the kill
        self.proc = None
        self.stub = None

    def start(self):
        import grpc
        with open(self.log_path, "a") as log:
            log.write("---- start\n")
        server = ServeProcess(self.server_bin, self.model, os.path.dirname(self.log_path),
                              ["--threads=1", "--checkpoint_on_shutdown=true"], metrics=False,
                              checkpoint_dir=self.ckpt_dir, log_path=self.log_path).start()
        self.proc = server.proc
        self.channel = grpc.insecure_channel(server.address)
        self.stub = self.pb_grpc.TttServiceStub(self.channel)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("the server did not start (exit %d):\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            try:
                info = self.stub.GetServerInfo(self.pb.GetServerInfoRequest(), timeout=5,
                                               wait_for_ready=True)
                if self.probe is None:
                    self.vocab = info.vocab_size
                    self.probe = [self.rng.randrange(3, self.vocab) for _ in range(16)]
                return
            except grpc.RpcError:
                if time.time() > deadline:
                    raise AssertionError("the server does not answer:\n" + self.log_tail())

    def log_tail(self):
        return log_tail(self.log_path, 30)

    def score(self, session_id):
        return score_bits(self.stub.Score(self.pb.ScoreRequest(session_id=session_id,
                                                               token_ids=self.probe), timeout=60))

    # ---- the load, on its own thread until the server is gone

    def ingest(self, session_id, rng):
        msgs = []
        for i in range(rng.randint(1, 4)):
            m = self.pb.IngestRequest(token_ids=[rng.randrange(3, self.vocab)
                                                 for _ in range(rng.randint(20, 200))])
            if i == 0:
                m.session_id = session_id
            msgs.append(m)
        for _ in self.stub.Ingest(iter(msgs), timeout=60):
            pass

    def checkpoint(self, session_id, rng):
        want = self.score(session_id)  # no writer between this and the checkpoint
        cid = rng.choice(POOL)
        self.maybe.setdefault(cid, set()).add(want)
        self.stub.Checkpoint(self.pb.CheckpointRequest(session_id=session_id, checkpoint_id=cid),
                             timeout=60)
        self.acked[cid] = want   # acknowledged: from now on it must restore to `want`
        self.maybe[cid].discard(want)

    def load(self, mode, rng, stop, terminating):
        import grpc
        bad = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        try:
            sessions = [self.stub.CreateSession(self.pb.CreateSessionRequest(),
                                                timeout=60).session_id for _ in range(2)]
            while not stop.is_set():
                s = rng.choice(sessions)
                if mode == 1 or rng.random() < 0.4:
                    self.checkpoint(s, rng)
                else:
                    self.ingest(s, rng)
        except grpc.RpcError as e:
            # Once the server drains (SIGTERM) or is killed, calls fail: with a proper code.
            expected = e.code() == grpc.StatusCode.UNAVAILABLE or (
                (terminating.is_set() or stop.is_set()) and e.code() not in bad)
            if not expected:
                raise AssertionError("the load got %s: %s" % (e.code(), e.details()))

    def run_and_kill(self, iteration):
        mode = iteration % len(MODES)
        rng = random.Random(SEED * 1000 + iteration)
        stop, terminating = threading.Event(), threading.Event()
        errors = []

        def body():
            try:
                self.load(mode, rng, stop, terminating)
            except Exception as e:  # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=body)
        t.start()
        time.sleep(rng.uniform(0.5, 2.5))
        if self.proc.poll() is not None:
            raise AssertionError("the server died by itself (exit %d):\n%s"
                                 % (self.proc.returncode, self.log_tail()))
        if mode == 2:  # SIGTERM: drain and persist the live sessions; kill in the middle
            terminating.set()
            self.proc.send_signal(signal.SIGTERM)
            time.sleep(rng.uniform(0.0, 0.3))
            if self.proc.poll() not in (None, 0):
                raise AssertionError("the server exited %d on SIGTERM:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
        self.proc.send_signal(signal.SIGKILL)  # nothing if it already finished its shutdown
        self.proc.wait(timeout=60)
        stop.set()
        t.join(timeout=120)
        self.channel.close()
        if errors:
            raise errors[0]
        return MODES[mode]

    # ---- after the restart

    def verify(self):
        import grpc
        listed = {c.checkpoint_id: c for c in self.stub.ListCheckpoints(
            self.pb.ListCheckpointsRequest(), timeout=60).checkpoints}
        for cid, c in listed.items():
            assert cid in POOL, "ListCheckpoints lists %r, which the client never wrote" % cid
            assert c.size_bytes > 0, "ListCheckpoints lists %r with %d bytes" % (cid, c.size_bytes)
        for cid in self.acked:
            assert cid in listed, "acknowledged checkpoint %s is not listed after the restart" % cid
        for cid in listed:
            allowed = set(self.maybe.get(cid, set()))
            if cid in self.acked:
                allowed.add(self.acked[cid])
            assert allowed, "checkpoint %s is listed but was never written" % cid
            try:
                s = self.stub.Restore(self.pb.RestoreRequest(checkpoint_id=cid), timeout=60)
            except grpc.RpcError as e:
                raise AssertionError("checkpoint %s (acknowledged: %s) does not restore: %s: %s"
                                     % (cid, cid in self.acked, e.code(), e.details()))
            got = self.score(s.session_id)
            assert got in allowed, ("checkpoint %s restores to a session that scores differently "
                                    "from the session when it was checkpointed" % cid)
            self.acked[cid] = got  # the durable state now
            self.maybe.pop(cid, None)
        self.maybe.clear()
        for s in self.stub.ListSessions(self.pb.ListSessionsRequest(), timeout=60).sessions:
            self.stub.DeleteSession(self.pb.DeleteSessionRequest(session_id=s.session_id),
                                    timeout=60)
        return len(listed)


def main():
    server_bin, model, proto = sys.argv[1:4]
    tmp = tempfile.mkdtemp(prefix="ttt-crash-loop-")
    pb, pb_grpc = load_stubs(proto, tmp)
    h = Harness(server_bin, model, pb, pb_grpc, tmp)
    print("crash loop: %d iterations, seed %d, checkpoint dir %s" % (ITERATIONS, SEED, h.ckpt_dir))
    try:
        h.start()
        for i in range(ITERATIONS):
            how = h.run_and_kill(i)
            h.start()
            # The killed server's temporary files are gone once the new one has started.
            temps = [f for root, _, files in os.walk(h.ckpt_dir) for f in files if ".tmp." in f]
            assert not temps, "temporary files left after the restart: %s" % temps
            n = h.verify()
            print("iteration %d: SIGKILL %s; restarted; %d checkpoints listed, %d acknowledged, "
                  "all restore bit-identically, no temporary file left"
                  % (i, how, n, len(h.acked)), flush=True)
        assert h.acked, "no checkpoint was ever acknowledged: the loop tested nothing"
        h.proc.send_signal(signal.SIGTERM)
        h.proc.wait(timeout=120)
        print("OK: %d kills, %d acknowledged checkpoints verified after each restart"
              % (ITERATIONS, len(h.acked)))
        return 0
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
