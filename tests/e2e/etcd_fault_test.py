#!/usr/bin/python3
"""Faults against sessions shared through etcd (issue 23), with a history checker: three ttt-serve
replicas on loopback, one etcd member, --durability=sync (every acknowledgement means committed).

Each client writes its own session in pieces, one Ingest stream per attempt, sending each piece
only after the previous one was acknowledged, and logs every acknowledgement. After any failure it
asks the cluster (through any replica) where the session is and resumes there with
expected_tokens_received, so the server refuses a resend that would apply a piece twice or skip
one. The checker holds, for every session, at every resume and at the end:
  - nothing acknowledged is lost: the session's position is never behind the acknowledged pieces,
    and always on a piece boundary (no torn piece);
  - no two owners acknowledged conflicting histories: the final scores are bit-identical to a
    single server replaying exactly the pieces, in order.

Faults, each repeated: kill -9 of a session's owner (restarted afterwards); SIGSTOP of the owner
for longer than its lease, then SIGCONT (the resumed process must acknowledge nothing more: etcd
expired its lease, so it exits 3, and is restarted); one replica runs 60 s ahead of the others
under libfaketime (Debian's libfaketime, preloaded) the whole time, which must change nothing, since no wall
clock is compared.

Usage: etcd_fault_test.py --server PATH/ttt-serve --model DIR --proto DIR
Loopback only, free ports, bounded: every call has a deadline and every retry loop a budget.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from e2e_support import (Etcd, bits, free_port, parse_unittest_args, stop_process, tokens,
                         wait_http)

ARGS = None
pb = None
pb_grpc = None
grpc = None

LEASE_S = 3
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"  # Debian's libfaketime
PIECES = 12
CALL_S = 3        # one call's deadline: well under the lease, so a stalled owner is left soon
BUDGET_S = 60     # one operation's retries across replicas


class Replica:
    def __init__(self, name, tmp, etcd, faketime=None):
        self.name, self.etcd, self.faketime = name, etcd, faketime
        self.port, self.metrics_port = free_port(), free_port()
        self.store = os.path.join(tmp, "store")
        self.log_path = os.path.join(tmp, name + ".log")
        self.proc = None
        self.starts = 0

    def start(self):
        flags = ["--model=" + ARGS.model, "--listen=127.0.0.1:%d" % self.port,
                 "--metrics_listen=127.0.0.1:%d" % self.metrics_port,
                 "--checkpoint_dir=" + self.store, "--shutdown_delay_s=0", "--drain_timeout_s=2"]
        if self.etcd is not None:
            flags += ["--etcd_endpoints=" + self.etcd.endpoint, "--replica_id=" + self.name,
                      "--lease_s=%d" % LEASE_S, "--durability=sync", "--persist_interval_s=1"]
        env = dict(os.environ)
        if self.faketime:
            # libfaketime preloaded into the server itself (the faketime command would stand
            # between the test's signals and it). Only the wall clock is skewed, as between
            # machines: each process's monotonic clock is its own anyway.
            env.update(LD_PRELOAD=FAKETIME_LIB, FAKETIME=self.faketime,
                       FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([ARGS.server] + flags, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        wait_http("http://127.0.0.1:%d/readyz" % self.metrics_port, 120)

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Writer:
    """One client and its session: pieces sent in order, acknowledgements logged, failures
    resumed from the cluster's position. Calls go to the replica that owns the session when it
    is known, else to each replica in turn (as a proxy would), retrying UNAVAILABLE, deadlines
    and dropped connections."""

    def __init__(self, test, sid, pieces):
        self.test, self.sid, self.pieces = test, sid, pieces
        self.acked = 0          # pieces acknowledged
        self.retries = 0
        self.resumes = []       # (acknowledged, found at the resume) pieces

    def stubs(self):
        owner = self.test.etcd.get("/ttt/v1/sessions/default/%s/owner" % self.sid)
        order = sorted(self.test.replicas, key=lambda r: r.name != owner)
        return [(r, self.test.stub(r)) for r in order if r.proc.poll() is None]

    def call(self, what, fn):
        end = time.time() + BUDGET_S
        while True:
            for replica, stub in self.stubs():
                try:
                    return fn(stub)
                except grpc.RpcError as e:
                    transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                 grpc.StatusCode.CANCELLED)
                    if e.code() not in transient:
                        raise AssertionError("%s %s on %s: %s %s" % (
                            what, self.sid, replica.name, e.code(), e.details()))
                    self.retries += 1
            if time.time() > end:
                raise AssertionError("%s %s: no replica answered within %d s"
                                     % (what, self.sid, BUDGET_S))
            time.sleep(0.2)

    def position(self):
        return self.call("GetSession", lambda stub: stub.GetSession(
            pb.GetSessionRequest(session_id=self.sid), timeout=CALL_S)).counters.tokens_received

    def resume_point(self):
        """Where the committed history is, in pieces; checks that nothing acknowledged is lost
        and that no piece is torn."""
        have, done = self.position(), 0
        while done < len(self.pieces) and have >= sum(map(len, self.pieces[:done + 1])):
            done += 1
        self.test.assertEqual(have, sum(map(len, self.pieces[:done])),
                              "%s: position %d is inside piece %d" % (self.sid, have, done))
        self.test.assertGreaterEqual(done, self.acked, "%s LOST acknowledged pieces: %d "
                                     "acknowledged, %d committed" % (self.sid, self.acked, done))
        self.resumes.append((self.acked, done))
        self.acked = done  # committed without its acknowledgement reaching us: it is history
        return done

    def write(self, upto, after_ack=None):
        while self.acked < upto:
            first = self.resume_point()
            if first >= upto:
                return
            try:
                self.stream(first, upto, after_ack)
            except grpc.RpcError:
                self.retries += 1
                time.sleep(0.2)

    def stream(self, first, upto, after_ack):
        # A stream to each replica in turn until one takes it (the owner is asked first).
        for replica, stub in self.stubs():
            def messages():
                for k in range(first, upto):
                    request = pb.IngestRequest(token_ids=self.pieces[k], flush=True)
                    if k == first:
                        request.session_id = self.sid
                        request.expected_tokens_received = sum(map(len, self.pieces[:first]))
                    yield request
                    while self.acked < k + 1 and not done[0]:
                        time.sleep(0.005)
            done = [False]
            try:
                # A commit takes milliseconds: a stream silent for longer has a stalled owner.
                for response in stub.Ingest(messages(), timeout=CALL_S + 0.5 * (upto - first)):
                    self.acked = first + response.message_index + 1
                    if after_ack is not None:
                        after_ack(self.acked)
                return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and \
                        "expected_tokens_received" in (e.details() or ""):
                    return  # the session moved on meanwhile: resume from where it is
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                    raise AssertionError("Ingest %s on %s: %s %s" % (
                        self.sid, replica.name, e.code(), e.details()))
                self.retries += 1
                if self.acked > first:
                    return  # progress was made: resume from the cluster's position
            finally:
                done[0] = True

    def score(self, probe):
        return bits(self.call("Score", lambda stub: stub.Score(
            pb.ScoreRequest(session_id=self.sid, token_ids=probe), timeout=CALL_S)).logprobs)


class EtcdFaultTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ttt-etcd-fault-")
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"))
        self.replicas, self.channels = [], {}

    def tearDown(self):
        for r in self.replicas:
            if r.proc is not None:
                stop_process(r.proc, signal.SIGKILL)
        self.etcd.stop()
        if not getattr(self, "_ok", False):
            for r in self.replicas:
                print("---- %s\n%s" % (r.name, r.output()[-3000:]), file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stub(self, replica):
        key = (replica.name, replica.starts)
        if key not in self.channels:
            self.channels[key] = grpc.insecure_channel("127.0.0.1:%d" % replica.port)
        return pb_grpc.TttServiceStub(self.channels[key])

    def owner(self, sid):
        name = self.etcd.get("/ttt/v1/sessions/default/%s/owner" % sid)
        return next(r for r in self.replicas if r.name == name)

    def reference(self, pieces, probe):
        """The scores of `probe` after each session's pieces on one server alone."""
        alone = Replica("alone", os.path.join(self.tmp), None)
        alone.store = os.path.join(self.tmp, "alone-store")
        alone.start()
        stub = pb_grpc.TttServiceStub(grpc.insecure_channel("127.0.0.1:%d" % alone.port))
        want = {}
        for sid, ps in pieces.items():
            stub.CreateSession(pb.CreateSessionRequest(session_id=sid), timeout=10)
            for p in ps:
                for _ in stub.Ingest(iter([pb.IngestRequest(session_id=sid, token_ids=p,
                                                            flush=True)]), timeout=30):
                    pass
            want[sid] = bits(stub.Score(pb.ScoreRequest(session_id=sid, token_ids=probe),
                                        timeout=30).logprobs)
        stop_process(alone.proc, signal.SIGKILL)
        return want

    def test_no_acknowledged_write_is_lost_under_kill_stall_and_skew(self):
        started = time.time()
        self.replicas = [Replica("r0", self.tmp, self.etcd), Replica("r1", self.tmp, self.etcd),
                         Replica("r2", self.tmp, self.etcd, faketime="+60s")]
        for r in self.replicas:
            r.start()
        info = self.stub(self.replicas[0]).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        chunk, vocab = info.ttt_chunk, info.vocab_size
        sids = ["kill-0", "kill-1", "stop-0", "stop-1"]
        pieces = {sid: [tokens(chunk // 2 + 1 + (k % 3), vocab, 100 * i + k)
                        for k in range(PIECES)] for i, sid in enumerate(sids)}
        probe = tokens(chunk + 1, vocab, 7)
        writers = {sid: Writer(self, sid, pieces[sid]) for sid in sids}
        for i, sid in enumerate(sids):  # spread: each created on its own replica
            self.stub(self.replicas[i % 3]).CreateSession(
                pb.CreateSessionRequest(session_id=sid), timeout=10)
        for w in writers.values():
            w.write(2)
        failovers = []

        def fault_mid_stream(w, fault):
            w.position()  # some replica owns the session now (a call takes it over if none does)
            victim = self.owner(w.sid)
            hit = []

            def after_ack(acked):
                if not hit and acked == w.acked and acked >= 4:
                    hit.append(time.time())
                    if fault == "kill":
                        victim.proc.send_signal(signal.SIGKILL)
                        victim.proc.wait()
                    else:
                        victim.proc.send_signal(signal.SIGSTOP)
            w.write(PIECES // 2 + 2, after_ack=after_ack)
            self.assertTrue(hit, "%s: no fault injected" % w.sid)
            failovers.append((fault, w.sid, victim.name, time.time() - hit[0]))
            if fault == "stop":
                # Resumed after its lease expired: it must not serve or acknowledge any more, and
                # stops by itself (exit 3) once its keep-alive hears that etcd expired the lease.
                time.sleep(max(0.0, hit[0] + LEASE_S + 2 - time.time()))
                victim.proc.send_signal(signal.SIGCONT)
                self.assertEqual(victim.proc.wait(timeout=30), 3, victim.output()[-2000:])
                self.assertIn("etcd expired this process's lease", victim.output())
            self.assertNotEqual(self.owner(w.sid).name, victim.name)
            victim.start()

        for sid in sids:
            fault_mid_stream(writers[sid], "kill" if sid.startswith("kill") else "stop")
        for w in writers.values():
            w.write(PIECES)
        want = self.reference(pieces, probe)
        for sid, w in writers.items():
            self.assertEqual(w.position(), sum(map(len, pieces[sid])))
            self.assertEqual(w.score(probe), want[sid],
                             "%s: the cluster's state is not the acknowledged history" % sid)
        skewed = self.replicas[2].output().count("took over session")
        print("etcd faults: %s; resumes (acknowledged, committed) %s; retries %s; the replica "
              "60 s ahead took %d sessions over; whole test %.1f s" % (
                  ["%s %s on %s: done %.1f s later" % f for f in failovers],
                  {sid: w.resumes for sid, w in writers.items()},
                  {sid: w.retries for sid, w in writers.items()}, skewed,
                  time.time() - started), file=sys.stderr)
        self._ok = True


def main():
    global ARGS, pb, pb_grpc, grpc
    ARGS, pb, pb_grpc, argv = parse_unittest_args()
    if not os.path.exists(FAKETIME_LIB):
        print("libfaketime missing: run deploy/install-deps.sh test", file=sys.stderr)
        sys.exit(1)
    import grpc  # binds the module's global (declared above), as pb and pb_grpc
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
