#!/usr/bin/python3
"""Faults against sessions shared through etcd (issue 23), with a history checker: ttt-serve
replicas on loopback, etcd (one member, or three), --lease_s=3, --durability=sync (every
acknowledgement means committed).

Each client writes its own session in pieces, one Ingest stream per attempt, sending each piece
only after the previous one was acknowledged, and logs every acknowledgement (and which replica
gave it). After any failure it asks the cluster (through any replica) where the session is and
resumes there with expected_tokens_received, so the server refuses a resend that would apply a
piece twice or skip one. The checker holds, for every session, at every resume and at the end:
  - nothing acknowledged is lost: the session's position is never behind the acknowledged pieces,
    and always on a piece boundary (no torn piece);
  - no two owners acknowledged conflicting histories: the final scores are bit-identical to a
    single server replaying exactly the pieces, in order (sessions are written one at a time
    wherever they could share a replica's batches: only the same batches give the same bits).

Faults, one test each (the quick mode, for ctest: one trial per fault, three of the five fault
points; TTT_FAULT_TRIALS=N by hand: N trials, all five points):
  - kill -9 of a session's owner (restarted afterwards), and SIGSTOP of the owner for longer than
    its lease, then SIGCONT (the resumed process must acknowledge nothing more: etcd expired its
    lease, so it exits 3, and is restarted);
  - three etcd members, each replica given all three: a follower killed mid-stream, then the
    leader (found through etcd's maintenance status), each restarted after;
  - a replica cut off from etcd but not from its clients: it runs in a network namespace the test
    makes (iproute2, root), with one veth link for clients and one to etcd, and the test takes
    the etcd link down mid-stream; it must stop acknowledging, turn /readyz 503, and exit 3 once
    the link is back, while another replica serves the session;
  - a full volume: the shared checkpoint folder on a small tmpfs (root), filled up mid-session: a
    commit fails UNAVAILABLE naming the cause, nothing more is acknowledged, and writing goes on
    once space returns;
  - a stall at each step of a commit and of a lease keep-alive (util/fault_point.h, compiled into
    test builds only), longer than the lease: all served elsewhere, each stalled process exits 3;
  - clocks: replicas run 60 s ahead or 60 s behind the others under libfaketime (Debian's
    libfaketime, preloaded) in every test, which must change nothing, since no wall clock is
    compared.

Usage: etcd_fault_test.py --server PATH/ttt-serve --model DIR --proto DIR [EtcdFaultTest.test_x]
Loopback only (and the test's own network namespace), free ports, bounded: every call has a
deadline and every retry loop a budget. The namespace and the tmpfs need root (skipped
otherwise); the fault points need a ttt-serve built with TTT_BUILD_TESTS=ON.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from e2e_support import (Etcd, ServeProcess, bits, free_port, parse_unittest_args, stop_process,
                         tokens, wait_http, wait_until)

ARGS = None
pb = None
pb_grpc = None
grpc = None

LEASE_S = 3
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"  # Debian's libfaketime
PIECES = 12       # per session of the kill and SIGSTOP test
SHORT = 8         # per session of the other tests: a fault after 4, 6 written through it
CALL_S = 3        # one call's deadline: well under the lease, so a stalled owner is left soon
BUDGET_S = 60     # one operation's retries across replicas
# The quick mode (ctest: TTT_FAULT_TRIALS unset) runs one trial per fault and three of the
# five fault points; the documented runs set TTT_FAULT_TRIALS=N by hand: N trials, every point.
QUICK = "TTT_FAULT_TRIALS" not in os.environ
TRIALS = int(os.environ.get("TTT_FAULT_TRIALS", "1"))
VOLUME_MB = 16    # the full-volume test's tmpfs
# Every fault point of util/fault_point.h: each step of a commit and of a lease keep-alive.
FAULT_POINTS = ["commit_before_blob", "commit_before_txn", "commit_after_txn",
                "keepalive_before_send", "keepalive_after_answer"]
# Quick: the blob written but its transaction late, committed but unacknowledged, and a
# keep-alive answer applied late.
QUICK_POINTS = ["commit_before_txn", "commit_after_txn", "keepalive_after_answer"]


class Replica(ServeProcess):
    """One ttt-serve process (e2e_support.ServeProcess). `etcd`: the cluster it coordinates
    through (every member's endpoint is passed; None: a server alone). `netns`: run inside that
    network namespace, answering clients on `host` and reaching etcd on `etcd_host`. `env`: more
    environment (fault points, util/fault_point.h)."""

    def __init__(self, name, tmp, etcd, faketime=None, netns=None, host="127.0.0.1",
                 etcd_host="127.0.0.1", env=None, store=None):
        flags = []
        if etcd is not None:
            flags += ["--etcd_endpoints=" + etcd.endpoints(etcd_host), "--replica_id=" + name,
                      "--lease_s=%d" % LEASE_S, "--durability=sync", "--persist_interval_s=1"]
        # `ip netns exec` execs the server: proc is the server itself, for the test's signals.
        # A session of its own: were it in the test's process group and that group orphaned (a
        # test started in the background), the kernel would SIGCONT a stopped server as soon as
        # any other member of the group exits, ending a stall the test controls.
        super().__init__(ARGS.server, ARGS.model, tmp, flags, host=host,
                         checkpoint_dir=store or os.path.join(tmp, "store"),
                         log_path=os.path.join(tmp, name + ".log"),
                         prefix=["ip", "netns", "exec", netns] if netns else [],
                         new_session=True)
        self.name, self.etcd, self.faketime = name, etcd, faketime
        self.netns, self.etcd_host, self.extra_env = netns, etcd_host, env or {}
        self.store = self.checkpoint_dir
        self.starts = 0

    @property
    def readyz(self):
        return self.metrics_url("/readyz")

    def start(self):
        env = dict(os.environ, **self.extra_env)
        if self.faketime:
            # libfaketime preloaded into the server itself (the faketime command would stand
            # between the test's signals and it). Only the wall clock is skewed, as between
            # machines: each process's monotonic clock is its own anyway.
            env.update(LD_PRELOAD=FAKETIME_LIB, FAKETIME=self.faketime,
                       FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1")
        self.env = env
        super().start()
        self.starts += 1
        wait_http(self.readyz, 120)

    def stopped(self):
        """Whether the process is stopped (SIGSTOP, or a fault point raised it)."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"

    def ready_status(self):
        """/readyz's HTTP status, or None when nothing answered."""
        try:
            with urllib.request.urlopen(self.readyz, timeout=1) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

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
        self.log = []           # (time, replica, pieces acknowledged): every acknowledgement
        self.skip_stopped = False  # route around stopped replicas, as a proxy checking /readyz

    def stubs(self):
        owner = self.test.etcd.get("/ttt/v1/sessions/default/%s/owner" % self.sid)
        order = sorted(self.test.replicas, key=lambda r: r.name != owner)
        return [(r, self.test.stub(r)) for r in order
                if r.proc is not None and r.proc.poll() is None
                and not (self.skip_stopped and r.stopped())]

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

    def stream(self, first, upto, after_ack, only=None):
        # A stream to each replica in turn until one takes it (the owner is asked first), or to
        # `only`.
        for replica, stub in [(only, self.test.stub(only))] if only else self.stubs():
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
                    self.log.append((time.time(), replica.name, self.acked))
                    if after_ack is not None:
                        after_ack(self.acked)
                return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and \
                        "expected_tokens_received" in (e.details() or ""):
                    return  # the session moved on meanwhile: resume from where it is
                # ABORTED "busy": the writer of a stream this client gave up on (its deadline
                # passed while a commit waited out an etcd election) has not finished yet.
                busy = e.code() == grpc.StatusCode.ABORTED and "is busy" in (e.details() or "")
                if not busy and e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                                 grpc.StatusCode.DEADLINE_EXCEEDED,
                                                 grpc.StatusCode.CANCELLED):
                    raise AssertionError("Ingest %s on %s: %s %s" % (
                        self.sid, replica.name, e.code(), e.details()))
                self.retries += 1
                if self.acked > first:
                    return  # progress was made: resume from the cluster's position
            finally:
                done[0] = True

    def one_piece(self, replica):
        """One Ingest of the next piece on `replica`, which must fail: returns its error."""
        k = self.acked
        request = pb.IngestRequest(session_id=self.sid, token_ids=self.pieces[k], flush=True,
                                   expected_tokens_received=sum(map(len, self.pieces[:k])))
        try:
            for _ in self.test.stub(replica).Ingest(iter([request]), timeout=3 * CALL_S):
                pass
        except grpc.RpcError as e:
            return e
        raise AssertionError("%s: piece %d acknowledged by %s" % (self.sid, k, replica.name))

    def score(self, probe):
        return bits(self.call("Score", lambda stub: stub.Score(
            pb.ScoreRequest(session_id=self.sid, token_ids=probe), timeout=CALL_S)).logprobs)


class EtcdFaultTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ttt-etcd-fault-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)  # runs last
        self.etcd = None
        self.replicas, self.channels = [], {}
        # The reference: one server alone, on a folder of its own (started with the replicas).
        self.alone = Replica("alone", self.tmp, None, store=os.path.join(self.tmp, "alone-store"))

    def tearDown(self):
        for r in self.replicas + [self.alone]:
            if r.proc is not None:
                stop_process(r.proc, signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.stop()
        if not getattr(self, "_ok", False):
            for r in self.replicas:
                if os.path.exists(r.log_path):
                    print("---- %s\n%s" % (r.name, r.output()[-3000:]), file=sys.stderr)

    def stub(self, replica):
        key = (replica.name, replica.starts)
        if key not in self.channels:
            self.channels[key] = grpc.insecure_channel(replica.address)
        return pb_grpc.TttServiceStub(self.channels[key])

    def owner(self, sid):
        name = self.etcd.get("/ttt/v1/sessions/default/%s/owner" % sid)
        return next(r for r in self.replicas if r.name == name)

    def reference(self, pieces, probe):
        """The scores of `probe` after each session's pieces on one server alone."""
        alone = self.alone
        if alone.proc is None:
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
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"))
        self.replicas = [Replica("r0", self.tmp, self.etcd), Replica("r1", self.tmp, self.etcd),
                         Replica("r2", self.tmp, self.etcd, faketime="+60s")]
        for r in self.replicas:
            r.start()
        info = self.stub(self.replicas[0]).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        chunk, vocab = info.ttt_chunk, info.vocab_size
        sids = ["%s-%d" % (fault, t) for fault in ("kill", "stop") for t in range(TRIALS)]
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


    # --- What the scenarios below share. ---

    def start_all(self):
        """Starts the replicas and the reference server, all at once."""
        threads = [threading.Thread(target=r.start) for r in self.replicas + [self.alone]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in self.replicas:
            self.assertIsNone(r.proc.poll(), "%s did not start: %s" % (r.name, r.output()[-2000:]))

    def sessions(self, sids, creators):
        """Writers for `sids` (SHORT pieces each), each session created on its creator (a
        replica), two pieces acknowledged; returns (writers, pieces, probe)."""
        info = self.stub(creators[0]).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        chunk, vocab = info.ttt_chunk, info.vocab_size
        pieces = {sid: [tokens(chunk // 2 + 1 + (k % 3), vocab, 1000 * i + k)
                        for k in range(SHORT)] for i, sid in enumerate(sids)}
        writers = {sid: Writer(self, sid, pieces[sid]) for sid in sids}
        for sid, creator in zip(sids, creators):
            self.stub(creator).CreateSession(pb.CreateSessionRequest(session_id=sid), timeout=10)
            writers[sid].write(2)
        return writers, pieces, tokens(chunk + 1, vocab, 7)

    def check_history(self, writers, pieces, probe):
        """The end of every run: each session is complete and its scores are bit-identical to one
        server replaying exactly its pieces (no conflicting acknowledgement got in)."""
        for w in writers.values():
            w.write(len(w.pieces))
        want = self.reference(pieces, probe)
        for sid, w in writers.items():
            self.assertEqual(w.position(), sum(map(len, pieces[sid])))
            self.assertEqual(w.score(probe), want[sid],
                             "%s: the cluster's state is not the acknowledged history" % sid)

    def refused_read(self, replica, sid):
        """A read on `replica` of a session it no longer holds: must be refused, never answered
        from a stale copy. Returns the error's details."""
        try:
            got = self.stub(replica).GetSession(pb.GetSessionRequest(session_id=sid),
                                                timeout=CALL_S)
            self.fail("%s answered a read of %s (position %d) after losing it" % (
                replica.name, sid, got.counters.tokens_received))
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
            return e.details() or ""

    def expect_exit_3(self, replica):
        """A replica whose lease etcd expired while it was stalled or cut off stops by itself."""
        self.assertEqual(replica.proc.wait(timeout=30), 3, replica.output()[-2000:])
        self.assertIn("etcd expired this process's lease", replica.output())

    def report(self, what, figures, writers):
        print("%s: %s; resumes (acknowledged, committed) %s; lost 0" % (
            what, figures, {sid: w.resumes for sid, w in writers.items()}), file=sys.stderr)

    # --- The loss of an etcd member, and of the leader, of three. ---

    def test_etcd_member_and_leader_loss(self):
        """Three etcd members, every replica given all three; mid-stream, a follower is killed
        (and restarted after), then the leader. Clocks: one replica 60 s behind, one ahead."""
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"), members=3)
        self.replicas = [Replica("r0", self.tmp, self.etcd),
                         Replica("r1", self.tmp, self.etcd, faketime="-60s"),
                         Replica("r2", self.tmp, self.etcd, faketime="+60s")]
        self.start_all()
        sids = ["%s-%d" % (kind, t) for t in range(TRIALS) for kind in ("follower", "leader")]
        writers, pieces, probe = self.sessions(sids, [self.replicas[i % 3]
                                                      for i in range(len(sids))])
        figures = []
        for sid, w in writers.items():
            hit = []

            def after_ack(acked, w=w, hit=hit, sid=sid):
                if not hit and acked >= 4:
                    leader = self.etcd.leader()
                    member = leader if sid.startswith("leader") else (leader + 1) % 3
                    self.etcd.kill(member)
                    hit.append((time.time(), member))
            w.write(SHORT - 2, after_ack=after_ack)
            self.assertTrue(hit, "%s: no member killed" % sid)
            killed_at, member = hit[0]
            times = [killed_at] + [t for t, _, _ in w.log if t > killed_at]
            figures.append("%s e%d killed: longest pause between acknowledgements after it "
                           "%.2f s" % (sid, member, max(b - a for a, b in zip(times, times[1:]))))
            self.etcd.start(member)
        self.check_history(writers, pieces, probe)
        exited = [r.name for r in self.replicas if r.proc.poll() is not None]
        self.report("etcd member loss", figures + ["replicas exited: %s" % exited], writers)
        self._ok = True

    # --- A replica cut off from etcd, not from its clients. ---

    def test_replica_cut_off_from_etcd_but_not_from_clients(self):
        """The victim runs in a network namespace of its own, with one link for its clients and
        one to etcd; the test takes the etcd link down mid-stream (packets dropped silently)."""
        if os.geteuid() != 0:
            self.skipTest("network namespaces need root")
        net = NetNamespace()
        self.addCleanup(net.delete)
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"), also_on=net.etcd_ip)
        victim = Replica("cut", self.tmp, self.etcd, netns=net.name, host=net.client_ip,
                         etcd_host=net.etcd_ip)
        self.replicas = [victim, Replica("r1", self.tmp, self.etcd, faketime="-60s")]
        self.start_all()
        sids = ["cut-%d" % t for t in range(TRIALS)]
        writers, pieces, probe = self.sessions(sids, [victim] * len(sids))
        figures = []
        for sid, w in writers.items():
            if victim.proc.poll() is not None:
                victim.start()
            w.position()
            self.assertEqual(self.owner(sid).name, victim.name)
            cut, not_ready = [], []

            def watch_ready(not_ready=not_ready):
                if wait_until(lambda: victim.ready_status() == 503, 30):
                    not_ready.append(time.time())

            def after_ack(acked, cut=cut, watch_ready=watch_ready):
                if not cut and acked >= 4:
                    net.cut()
                    cut.append(time.time())
                    threading.Thread(target=watch_ready, daemon=True).start()
            w.write(SHORT - 2, after_ack=after_ack)
            self.assertTrue(cut, "%s: not cut" % sid)
            self.assertTrue(wait_until(lambda: not_ready, 30), "%s: /readyz never 503" % sid)
            self.assertIsNone(victim.proc.poll(), "cut off, it cannot know its lease expired")
            self.assertIn("lost contact with etcd", self.refused_read(victim, sid))
            self.assertNotEqual(self.owner(sid).name, victim.name)
            last_by_victim = max(t for t, r, _ in w.log if r == victim.name)
            first_elsewhere = min(t for t, r, _ in w.log if r != victim.name and t > cut[0])
            self.assertLess(last_by_victim, first_elsewhere,
                            "%s: the cut-off replica acknowledged after the takeover" % sid)
            net.heal()
            self.expect_exit_3(victim)
            figures.append("%s: last acknowledgement by the cut replica %+.2f s after the cut, "
                           "/readyz 503 %.2f s after, served elsewhere %.2f s after" % (
                               sid, last_by_victim - cut[0], not_ready[0] - cut[0],
                               first_elsewhere - cut[0]))
        self.check_history(writers, pieces, probe)
        self.report("cut off from etcd", figures, writers)
        self._ok = True

    # --- A full volume. ---

    def test_full_volume(self):
        """The shared checkpoint folder is a small tmpfs; filled up, a commit fails with
        UNAVAILABLE naming the cause and is not acknowledged; freed, writing goes on."""
        if os.geteuid() != 0:
            self.skipTest("mounting a tmpfs needs root")
        store = os.path.join(self.tmp, "store")
        os.makedirs(store)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % VOLUME_MB, "tmpfs", store],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", store], check=True)
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"))
        self.replicas = [Replica("r0", self.tmp, self.etcd),
                         Replica("r1", self.tmp, self.etcd, faketime="+60s")]
        self.start_all()
        sids = ["full-%d" % t for t in range(TRIALS)]
        writers, pieces, probe = self.sessions(sids, [self.replicas[0]] * len(sids))
        filler = os.path.join(store, "filler")
        figures = []
        for sid, w in writers.items():
            w.write(4)
            fill(filler)
            for _ in range(2):  # a failed commit sends the session back: then where it is now
                error = w.one_piece(w.stubs()[0][0])
                self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE, error.details())
                self.assertIn("could not be committed", error.details())
                self.assertIn("cannot write the state blob", error.details())
                self.assertIn("No space left on device", error.details())
                self.assertEqual(w.resume_point(), w.acked)  # and not one piece more
            figures.append("%s: %s" % (sid, error.details()))
            os.remove(filler)
            w.write(8)
        self.check_history(writers, pieces, probe)
        self.report("full volume", figures, writers)
        self._ok = True

    # --- A stall at each step of a commit and of a keep-alive. ---

    def test_stall_at_each_step_of_a_commit_and_a_keep_alive(self):
        """One victim per fault point (util/fault_point.h), each owning a session: each is
        stopped at its point mid-stream (all at once), for longer than the lease; the sessions
        are then served elsewhere (one after another: scores are bit-identical only for the same
        batches, docs/contract.md), and each victim, resumed, must acknowledge nothing more and
        exit 3."""
        points = QUICK_POINTS if QUICK else FAULT_POINTS
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"))
        arm = os.path.join(self.tmp, "armed-")
        victims = [Replica("at-" + point.replace("_", "-"), self.tmp, self.etcd,
                           env={"TTT_FAULT_STOP_AT": point, "TTT_FAULT_ARMED_BY": arm + point})
                   for point in points]
        self.replicas = victims + [Replica("r1", self.tmp, self.etcd, faketime="-60s")]
        self.start_all()
        sids = [v.name for v in victims]
        writers, pieces, probe = self.sessions(sids, victims)
        stopped_at, errors = {}, []

        def stall(victim, point, w):
            def after_ack(acked):
                if victim.name not in stopped_at:
                    open(arm + point, "w").close()
                    if wait_until(victim.stopped, 30):
                        stopped_at[victim.name] = time.time()
            try:  # to the victim only: its stream ends when the call's deadline passes
                w.stream(w.resume_point(), SHORT - 2, after_ack, only=victim)
            except Exception as e:  # reported by the main thread
                errors.append("%s: %r" % (point, e))
        threads = [threading.Thread(target=stall, args=(v, p, writers[v.name]))
                   for v, p in zip(victims, points)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        figures = []
        for victim, point in zip(victims, points):  # one after another (batches)
            self.assertIn(victim.name, stopped_at, "%s: never stopped at its point" % point)
            w = writers[victim.name]
            w.skip_stopped = True  # as a proxy would: a stopped process answers no /readyz
            w.write(SHORT - 2)
            self.assertNotEqual(self.owner(victim.name).name, victim.name)
            elsewhere = min(t for t, r, _ in w.log if r != victim.name)
            self.assertLess(max(t for t, r, _ in w.log if r == victim.name), elsewhere)
            figures.append("%s: served elsewhere %.1f s after the stop" % (
                point, elsewhere - stopped_at[victim.name]))
        for victim, point in zip(victims, points):
            os.remove(arm + point)
            victim.proc.send_signal(signal.SIGCONT)
            refused = self.refused_read(victim, victim.name)  # never a stale read
            figures.append("%s resumed: read refused (%s)" % (point, refused[:70]))
        for victim in victims:  # each must acknowledge nothing more, and exit 3
            self.expect_exit_3(victim)
        self.check_history(writers, pieces, probe)
        self.report("stalls", figures, writers)
        self._ok = True


class NetNamespace:
    """A network namespace for one replica, made with iproute2: a veth link for its clients and
    another to etcd, each a /30 of 10.<n>.x.0 on the host side; cut() takes the etcd link down on
    the host side, so the replica's packets to etcd are dropped without an answer."""

    def __init__(self):
        n = 100 + os.getpid() % 100
        self.name = "ttt-fault-%d" % os.getpid()
        self.client_ip, self.etcd_ip = "10.%d.1.2" % n, "10.%d.2.1" % n
        self.etcd_link = "tf%de" % os.getpid()
        ip = lambda *args: subprocess.run(("ip",) + args, check=True)
        ip("netns", "add", self.name)
        try:
            ip("-n", self.name, "link", "set", "lo", "up")
            for subnet, host_side, inside in ((1, "tf%dc" % os.getpid(), "client"),
                                              (2, self.etcd_link, "etcd")):
                ip("link", "add", host_side, "type", "veth", "peer", "name", inside,
                   "netns", self.name)
                ip("addr", "add", "10.%d.%d.1/30" % (n, subnet), "dev", host_side)
                ip("link", "set", host_side, "up")
                ip("-n", self.name, "addr", "add", "10.%d.%d.2/30" % (n, subnet), "dev", inside)
                ip("-n", self.name, "link", "set", inside, "up")
        except subprocess.CalledProcessError:
            self.delete()
            raise

    def cut(self):
        subprocess.run(["ip", "link", "set", self.etcd_link, "down"], check=True)

    def heal(self):
        subprocess.run(["ip", "link", "set", self.etcd_link, "up"], check=True)

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=True)  # its links go with it


def fill(path):
    """Writes `path` until the volume has no space left (the last page included)."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


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
