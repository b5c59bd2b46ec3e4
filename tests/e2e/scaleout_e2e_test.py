#!/usr/bin/python3
"""Scale-out end to end (issues 13 and 23): three ttt-serve replicas on loopback sharing sessions
through one etcd member (each session owned by one replica, its states committed as blobs in one
shared folder), behind Debian's HAProxy 2.6 running the haproxy.cfg RENDERED FROM THE HELM CHART
(helm/ttt-serve/templates/haproxy.yaml, values tests/deploy/values/scaleout-haproxy.yaml; only the
bind and server addresses and each server's check port are replaced by loopback ones), which
checks each replica's /readyz. The replicas' store flags (--durability, --lease_s,
--persist_interval_s) and --shutdown_delay_s come from the rendered StatefulSet too, which must
also pass --etcd_endpoints (replaced here by the loopback member's).

Scenario:
  1. Clients create sessions with their own ids and ingest through the proxy (sync durability:
     every message has `flush`, so each acknowledgement means "in the store").
  2. Mid-stream, the replica holding one session is killed with SIGKILL. The client retries
     UNAVAILABLE; the proxy moves the session's key to another replica, which takes the session
     over once etcd expires the dead replica's lease. On resuming, every acknowledged token is there
     (the session's position in the store is at least what was acknowledged).
  3. A rolling restart (SIGTERM, start again, one replica at a time) while clients keep
     ingesting and scoring, also during each replica's shutdown delay (not ready, still taking
     calls): no call fails and none needs a retry (a replica the proxy moves a session's calls
     to waits for the owner to hand it over; the owner reads handover requests every 100 ms).
  4. Every score along the way is bit-identical (float32 bits) to the same stream on a single
     server. Calls are made one at a time, so batches hold one session's message, as there.

A second test runs the chart's TLS router (values tests/deploy/values/haproxy-tls.yaml, certificates
made by openssl at test time): clients speak TLS to HAProxy, which re-encrypts to two TLS replicas
and verifies them against the CA; sessions still spread by their header; plaintext is refused.

Usage: scaleout_e2e_test.py --server PATH/ttt-serve --model DIR --proto DIR --source REPO_ROOT
Loopback only, free ports, bounded (a deadline per call, ~60 s in all).
"""
import queue
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from e2e_support import Etcd, ServeProcess, bits, free_port, parse_unittest_args, tokens

ARGS = None
pb = None
pb_grpc = None
grpc = None

SESSIONS = ["conv-%d" % i for i in range(6)]
PIECES = 8            # messages per session
PHASE_A = 5           # pieces ingested before the rolling restart
CALL_DEADLINE_S = 40  # a call retried on UNAVAILABLE gives up after this


def wait_port(port, proc, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def render_chart(tmp, values="scaleout-haproxy.yaml"):
    """Renders the chart with the repo's renderer (tests/deploy/helmrender, as helm_chart_test.sh)
    and returns (haproxy.cfg text, store flags of the StatefulSet's server)."""
    import yaml
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOMAXPROCS="1",
               HOME=os.environ.get("HOME", tmp))
    binary = os.path.join(tmp, "helmrender")
    subprocess.run(["go", "build", "-p", "1", "-o", binary, "."], check=True, env=env,
                   cwd=os.path.join(ARGS.source, "tests/deploy/helmrender"), timeout=300)
    out = subprocess.run(
        [binary, "-chart", os.path.join(ARGS.source, "helm/ttt-serve"), "-release", "ttt",
         "-namespace", "serving", "-f",
         os.path.join(ARGS.source, "tests/deploy/values", values)],
        check=True, capture_output=True, text=True, timeout=60).stdout
    cfg, flags, etcd = None, [], False
    for doc in yaml.safe_load_all(out):
        if not doc:
            continue
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-haproxy"):
            cfg = doc["data"]["haproxy.cfg"]
        if doc["kind"] == "StatefulSet":
            args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            flags = [a for a in args if a.split("=")[0] in
                     ("--durability", "--lease_s", "--persist_interval_s", "--shutdown_delay_s")]
            etcd = any(a.startswith("--etcd_endpoints=") for a in args)
    if cfg is None or len(flags) != 4 or (values == "scaleout-haproxy.yaml" and not etcd):
        raise RuntimeError("the chart rendered no haproxy.cfg or no store flags:\n" + out[:2000])
    return cfg, flags


def loopback_cfg(cfg, proxy_port, replicas):
    """The rendered config with loopback addresses: the bind line, each server's address and the
    port its /readyz check goes to (replicas: (gRPC port, metrics port) each)."""
    cfg, n = re.subn(r"(?m)^(\s*bind ):\d+( .*)$", r"\g<1>127.0.0.1:%d\2" % proxy_port, cfg)
    assert n == 1, cfg
    servers = iter(replicas)

    def server(m):
        return "%sserver %s 127.0.0.1:%d port %d" % ((m.group(1), m.group(2)) + next(servers))
    cfg, n = re.subn(r"(?m)^(\s*)server (\S+) \S+$", server, cfg)
    assert n == len(replicas), cfg
    return cfg


class Replica(ServeProcess):
    """One replica (e2e_support.ServeProcess): one port across restarts, its checkpoints in
    `store`, shared by the replicas. `flags`: the chart's store flags (none: a server alone)."""

    def __init__(self, name, store, flags, log_dir, tls_flags=(), etcd=None):
        etcd_flags = ["--etcd_endpoints=" + etcd.endpoint] if etcd else []
        super().__init__(ARGS.server, ARGS.model, log_dir,
                         ["--drain_timeout_s=5"] + (["--replica_id=" + name] if flags else [])
                         + list(flags) + etcd_flags + list(tls_flags),
                         checkpoint_dir=store, log_path=os.path.join(log_dir, name + ".log"))
        self.name = name


class Client:
    """Calls through the proxy, one at a time, retrying UNAVAILABLE (and only that) with backoff.
    Every call carries x-session-id, the key HAProxy hashes."""

    def __init__(self, port, pieces, probe, ca=None):
        self.channel = (grpc.secure_channel("localhost:%d" % port, grpc.ssl_channel_credentials(ca))
                        if ca else grpc.insecure_channel("127.0.0.1:%d" % port))
        self.stub = pb_grpc.TttServiceStub(self.channel)
        self.pieces, self.probe = pieces, probe
        self.acked = {sid: 0 for sid in pieces}    # pieces acknowledged per session
        self.unavailable = 0
        self.unavailable_log = []                 # (phase, what, session, details) of each
        self.phase = ""                           # what the test is doing, for that log
        self.resets = 0                           # streams the proxy reset (replica died)
        self.errors = []                          # anything but a retried UNAVAILABLE

    def retry(self, what, sid, call):
        end = time.time() + CALL_DEADLINE_S
        backoff = 0.05
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                # HAProxy resets a stream whose replica died mid-call (RST_STREAM CANCEL, which
                # gRPC reports as CANCELLED): the client did not cancel, so it is a transport
                # failure like UNAVAILABLE, retried the same way and counted apart.
                reset = (e.code() == grpc.StatusCode.CANCELLED and
                         "RST_STREAM" in (e.details() or ""))
                if (e.code() != grpc.StatusCode.UNAVAILABLE and not reset) or time.time() > end:
                    self.errors.append("%s %s: %s %s" % (what, sid, e.code(), e.details()))
                    raise
                if reset:
                    self.resets += 1
                else:
                    self.unavailable += 1
                    self.unavailable_log.append((self.phase, what, sid, e.details()))
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    def md(self, sid):
        return [("x-session-id", sid)]

    def create(self, sid):
        self.retry("CreateSession", sid, lambda: self.stub.CreateSession(
            pb.CreateSessionRequest(session_id=sid), metadata=self.md(sid), timeout=10))

    def position(self, sid):
        return self.retry("GetSession", sid, lambda: self.stub.GetSession(
            pb.GetSessionRequest(session_id=sid), metadata=self.md(sid),
            timeout=10)).counters.position

    def score(self, sid):
        r = self.retry("Score", sid, lambda: self.stub.Score(
            pb.ScoreRequest(session_id=sid, token_ids=self.probe), metadata=self.md(sid),
            timeout=10))
        return list(r.logprobs)

    def resume_point(self, sid):
        """The store's position for the session, as a count of whole pieces: at least what was
        acknowledged (sync durability), and never inside a piece."""
        pos, done = self.position(sid), 0
        while done < len(self.pieces[sid]) and pos >= sum(map(len, self.pieces[sid][:done + 1])):
            done += 1
        if pos != sum(map(len, self.pieces[sid][:done])):
            raise AssertionError("%s: position %d is inside piece %d" % (sid, pos, done))
        if done < self.acked[sid]:
            raise AssertionError("%s lost acknowledged tokens: %d pieces acknowledged, %d in the "
                                 "store" % (sid, self.acked[sid], done))
        return done

    def ingest(self, sid, upto, after_ack=None):
        """Ingests the session's pieces up to `upto`, one message each with flush; resumes from
        the session's position after a failure. after_ack(sid, n) runs after each acknowledgement
        (the test kills a replica from there, mid-stream)."""
        def attempt():
            first = self.resume_point(sid)
            if first >= upto:
                return
            acks = queue.Queue()

            def paced():  # the next message once the last is acknowledged: one per batch
                for k, p in enumerate(self.pieces[sid][first:upto]):
                    if k > 0 and acks.get(timeout=20) is None:
                        return
                    yield pb.IngestRequest(session_id=sid, token_ids=p, flush=True)
            stream = self.stub.Ingest(paced(), metadata=self.md(sid), timeout=20)
            try:
                for r in stream:
                    self.acked[sid] = first + r.message_index + 1
                    if after_ack is not None:
                        after_ack(sid, self.acked[sid])
                    acks.put(True)
            finally:
                acks.put(None)
        self.retry("Ingest", sid, attempt)


class ScaleOutTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ttt-scaleout-")
        self.replicas, self.proxy, self.single = [], None, None
        self.etcd = Etcd(os.path.join(self.tmp, "etcd"))

    def tearDown(self):
        for r in self.replicas + ([self.single] if self.single else []):
            r.stop(signal.SIGKILL)
        self.etcd.stop()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.kill()
            self.proxy.wait()
        if not getattr(self, "_ok", False):
            for r in self.replicas:
                print("---- %s\n%s" % (r.name, r.output()[-3000:]), file=sys.stderr)
            if os.path.exists(os.path.join(self.tmp, "haproxy.log")):
                with open(os.path.join(self.tmp, "haproxy.log")) as f:
                    print("---- haproxy\n" + f.read()[-3000:], file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_proxy(self, cfg_text, tls_dir=None):
        port = free_port()
        cfg = loopback_cfg(cfg_text, port, [(r.port, r.metrics_port) for r in self.replicas])
        if tls_dir is not None:  # where the router's Deployment mounts the Secret
            cfg = cfg.replace("/usr/local/etc/haproxy-tls", tls_dir)
        path = os.path.join(self.tmp, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        subprocess.run(["haproxy", "-c", "-q", "-f", path], check=True, timeout=30)
        with open(os.path.join(self.tmp, "haproxy.log"), "w") as log:
            self.proxy = subprocess.Popen(["haproxy", "-db", "-f", path], stdout=log,
                                          stderr=subprocess.STDOUT)
        self.assertTrue(wait_port(port, self.proxy, 20), "haproxy did not start")
        return port

    def reference_scores(self, pieces, probe):
        """The same streams on the single server: the score after each piece."""
        client = Client(self.single.port, pieces, probe)
        want = {}
        for sid in SESSIONS:
            client.create(sid)
            want[sid] = [None]  # nothing to score before the first piece
            for n in range(1, PIECES + 1):
                client.ingest(sid, n)
                want[sid].append(bits(client.score(sid)))
        self.assertEqual(client.errors, [])
        client.channel.close()
        return want

    def owner_of(self, sid):
        return self.etcd.get("/ttt/v1/sessions/default/%s/owner" % sid)

    def test_failover_and_rolling_restart_through_haproxy(self):
        started = time.time()
        cfg_text, flags = render_chart(self.tmp)
        self.assertIn("--durability=sync", flags)
        self.assertIn("balance hdr(x-session-id)", cfg_text)
        self.assertIn("hash-type consistent", cfg_text)
        self.assertIn("http-check send meth GET uri /readyz", cfg_text)

        # The reference: one server, no store sharing.
        self.single = Replica("single", os.path.join(self.tmp, "single"), [], self.tmp)
        self.single.start()
        ch = grpc.insecure_channel("127.0.0.1:%d" % self.single.port)
        info = pb_grpc.TttServiceStub(ch).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        ch.close()
        chunk, vocab = info.ttt_chunk, info.vocab_size
        pieces = {sid: [tokens(chunk // 2 + 3 + (k % 3), vocab, seed=100 * i + k)
                        for k in range(PIECES)] for i, sid in enumerate(SESSIONS)}
        probe = tokens(chunk + 1, vocab, seed=7)
        want = self.reference_scores(pieces, probe)
        self.single.stop()
        self.single = None

        self.store = os.path.join(self.tmp, "store")
        self.replicas = [Replica("r%d" % i, self.store, flags, self.tmp,
                                 etcd=self.etcd) for i in range(3)]
        for r in self.replicas:
            r.start()
        client = Client(self.start_proxy(cfg_text), pieces, probe)

        def check_score(sid):
            got = bits(client.score(sid))
            self.assertEqual(got, want[sid][client.acked[sid]],
                             "%s after %d pieces scores differently from one server"
                             % (sid, client.acked[sid]))

        # 1. Create (client-chosen ids) and ingest two pieces each, spread over the replicas.
        for sid in SESSIONS:
            client.create(sid)
        for sid in SESSIONS:
            client.ingest(sid, 2)
        owners = {sid: self.owner_of(sid) for sid in SESSIONS}
        self.assertGreater(len(set(owners.values())), 1, "the proxy spread no sessions: %s" % owners)

        # 2. SIGKILL the replica holding the first session, in the middle of its Ingest stream
        # (after its third piece is acknowledged).
        victim_sid = SESSIONS[0]
        victim = next(r for r in self.replicas if r.name == owners[victim_sid])
        killed_at = []

        def kill_mid_stream(sid, acked):
            if not killed_at and acked == 3:
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                killed_at.append(time.time())
        client.ingest(victim_sid, PHASE_A, after_ack=kill_mid_stream)
        self.assertTrue(killed_at)
        failover_s = time.time() - killed_at[0]
        new_owner = self.owner_of(victim_sid)
        self.assertNotEqual(new_owner, victim.name)
        for sid in SESSIONS[1:]:
            client.ingest(sid, PHASE_A)
        for sid in SESSIONS:
            check_score(sid)
        moved = [sid for sid in SESSIONS if owners[sid] == victim.name]
        unavailable_after_kill, resets_after_kill = client.unavailable, client.resets
        victim.start()  # back on the same port and name: the ring is whole again

        # 3. Rolling restart, one replica at a time, while the client keeps going: first during
        # the replica's shutdown delay (it reports not ready, HAProxy's /readyz check takes it out
        # of the ring, it still answers what reaches it), then while it is down.
        pending = {sid: PHASE_A for sid in SESSIONS}
        restart_log = []
        unavailable_before_restart = client.unavailable
        for r in self.replicas:
            r.proc.send_signal(signal.SIGTERM)
            client.phase = "%s in its shutdown delay" % r.name
            for sid in SESSIONS[:3]:
                if pending[sid] < PIECES:
                    pending[sid] += 1
                    client.ingest(sid, pending[sid])
                check_score(sid)
            self.assertEqual(r.proc.wait(timeout=120), 0, r.output()[-2000:])
            self.assertIn("not serving; taking calls", r.output())
            # Calls while it is down: its sessions move to the others.
            client.phase = "%s down" % r.name
            for sid in SESSIONS[:3]:
                check_score(sid)
            r.start()
            client.phase = "%s back" % r.name
            restart_log.append(r.name)
            for sid in SESSIONS[3:]:
                if pending[sid] < PIECES:
                    pending[sid] += 1
                    client.ingest(sid, pending[sid])
                check_score(sid)
        # 4. Everything to the end, then every session scores as on one server.
        for sid in SESSIONS:
            client.ingest(sid, PIECES)
            self.assertEqual(client.position(sid), sum(map(len, pieces[sid])))
            check_score(sid)
        # The replicas that came back got their sessions back on request (handover via etcd).
        handovers = sum(r.output().count("over on request") for r in self.replicas)
        self.assertGreater(handovers, 0)
        self.assertEqual(client.errors, [])
        # SIGTERM drains: the rolling restart cut no stream, and no call needed a retry: a replica
        # that gets a call for a session the draining (or, once it is back, the temporary) owner
        # holds waits for the handover it asked for instead of answering UNAVAILABLE.
        self.assertEqual(client.resets, resets_after_kill)
        rolling = ["(%s) %s %s: %s" % entry
                   for entry in client.unavailable_log[unavailable_before_restart:]]
        self.assertEqual(rolling, [], "calls retried during the rolling restart")
        waits = [int(ms) for r in self.replicas
                 for ms in re.findall(r"waited (\d+) ms for session \S+ of tenant \S+ to be "
                                      r"handed over: taken over", r.output())]
        client.channel.close()
        print("scaleout: %d sessions, %d replicas; SIGKILL of %s (held %s) -> %s took %s over, "
              "its stream resumed and done %.2f s after the kill (lease %s); %d UNAVAILABLE and %d "
              "stream resets retried by then, %d UNAVAILABLE in all, %d of them in the rolling "
              "restart of %s (%s; %d sessions handed back on request; calls waited %s ms for handovers); "
              "whole test %.1f s"
              % (len(SESSIONS), len(self.replicas), victim.name, moved, new_owner, victim_sid,
                 failover_s, [f for f in flags if f.startswith("--lease_s")][0],
                 unavailable_after_kill, resets_after_kill, client.unavailable,
                 client.unavailable - unavailable_before_restart, restart_log,
                 [f for f in flags if f.startswith("--shutdown_delay_s")][0],
                 handovers, sorted(waits), time.time() - started), file=sys.stderr)
        self._ok = True


    def test_tls_through_haproxy(self):
        cfg_text, flags = render_chart(self.tmp, "haproxy-tls.yaml")
        self.assertIn("ssl crt /usr/local/etc/haproxy-tls/tls.crt alpn h2", cfg_text)
        self.assertIn("ssl alpn h2 verify required ca-file", cfg_text)
        # The Secret as the router mounts it: tls.crt, its key as tls.crt.key, ca.crt.
        tls = os.path.join(self.tmp, "tls")
        os.makedirs(tls)

        def openssl(*args):
            subprocess.run(["openssl"] + list(args), cwd=tls, check=True, capture_output=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
                "-subj", "/CN=test-ca")
        openssl("req", *ec, "-keyout", "tls.crt.key", "-out", "tls.csr", "-subj", "/CN=ttt-serve")
        with open(os.path.join(tls, "san.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", "tls.crt", "-extfile", "san.ext")
        with open(os.path.join(tls, "ca.crt"), "rb") as f:
            ca = f.read()

        self.store = os.path.join(self.tmp, "store")
        tls_flags = ["--tls_cert_file=" + os.path.join(tls, "tls.crt"),
                     "--tls_key_file=" + os.path.join(tls, "tls.crt.key")]
        self.replicas = [Replica("r%d" % i, self.store, flags, self.tmp, tls_flags,
                                 etcd=self.etcd) for i in range(2)]
        for r in self.replicas:
            r.start()
        port = self.start_proxy(cfg_text, tls)

        sids = ["tls-%d" % i for i in range(8)]
        client = Client(port, {sid: [] for sid in sids}, [], ca=ca)
        for sid in sids:
            client.create(sid)
            self.assertEqual(client.position(sid), 0)
        self.assertEqual(client.errors, [])
        owners = {self.owner_of(sid) for sid in sids}
        self.assertEqual(owners, {"r0", "r1"}, "the TLS router spread no sessions")
        client.channel.close()
        # Plaintext to the router is refused (it speaks only TLS).
        with grpc.insecure_channel("127.0.0.1:%d" % port) as plain:
            with self.assertRaises(grpc.RpcError) as refused:
                pb_grpc.TttServiceStub(plain).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self._ok = True


def main():
    global ARGS, pb, pb_grpc, grpc
    ARGS, pb, pb_grpc, argv = parse_unittest_args("source")
    if shutil.which("haproxy") is None:
        print("haproxy missing: run deploy/install-deps.sh test", file=sys.stderr)
        sys.exit(1)
    import grpc  # binds the module's global (declared above), as pb and pb_grpc
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
