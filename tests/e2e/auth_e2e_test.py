#!/usr/bin/python3
"""End-to-end test of ttt-serve's authentication (issue 10): the real binary with TLS, mutual TLS
and a tokens file, certificates made at test time by Debian's openssl, driven by the Python
grpcio client.

Covers: TLS works and plaintext to the TLS port fails; mutual TLS refuses a client without a
certificate and one signed by another CA, and takes the tenant from the certificate's CN; each
token reaches only its tenant; a read-scoped token cannot ingest; x-tenant-id cannot override the
credential; a rotated tokens file and a rotated certificate take effect without a restart while a
stream stays open; health answers without credentials on the plaintext health listener (which
serves nothing else) and on the main port; the metrics port wants its token; a server without
authentication still runs and says so. Quotas (--quotas_file) on the real binary: each quota
refused at its limit with the documented message, other tenants unaffected, the ingest rate's
retry trailers, usage in GetServerInfo (own tenant; every listed tenant and "*" for admin) and in
/metrics served over HTTPS (--metrics_tls_cert_file) with a bearer token, the file reloaded.

Usage: auth_e2e_test.py --server PATH/ttt-serve --model MODEL_DIR --proto PROTO_DIR
"""
import hashlib
import itertools
import os
import shutil
import ssl
import subprocess
import tempfile
import unittest
import urllib.error
import urllib.request
from e2e_support import ServeProcess, free_port, parse_unittest_args, wait_until

ARGS = None
pb = None
pb_grpc = None
grpc = None

CHANNEL_IDS = itertools.count(1)  # a distinct argument keeps each channel on its own connection
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def sha256_hex(token):
    return hashlib.sha256(token.encode()).hexdigest()


def openssl(cwd, *args):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-keyout", name + ".key", "-out", name + ".pem",
            "-subj", "/CN=" + name)


def make_leaf(d, ca, name, subject, san=""):
    openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=%s\n" % san if san else "")
    openssl(d, "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-out", name + ".pem", "-extfile", name + ".ext")


def read(d, name):
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


class Pki:
    """CAs, the server's certificate (behind a directory symlink, like a Secret volume) and
    client certificates, in a temp dir."""

    def __init__(self, d):
        self.d = d
        make_ca(d, "ca1")
        make_ca(d, "ca2")
        for name, ca in (("server1", "ca1"), ("server2", "ca2")):
            make_leaf(d, ca, name, "/CN=server", "DNS:localhost,IP:127.0.0.1")
        make_leaf(d, "ca1", "carol", "/CN=carol")
        make_leaf(d, "ca1", "dave", "/O=admin/CN=dave")
        make_leaf(d, "ca2", "eve", "/CN=eve")
        # An escaped comma in another field: the old string split read it as O=admin.
        make_leaf(d, "ca1", "mallory", "/CN=mallory/OU=x,O=admin")
        for v, server in (("v1", "server1"), ("v2", "server2")):
            os.mkdir(os.path.join(d, v))
            shutil.copy(os.path.join(d, server + ".pem"), os.path.join(d, v, "tls.crt"))
            shutil.copy(os.path.join(d, server + ".key"), os.path.join(d, v, "tls.key"))
        os.symlink("v1", os.path.join(d, "current"))

    def serve(self, version):
        """Points `current` at v1 or v2 atomically (a Kubernetes Secret update)."""
        os.symlink(version, os.path.join(self.d, "next"))
        os.rename(os.path.join(self.d, "next"), os.path.join(self.d, "current"))

    def credentials(self, ca, client=None):
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=read(self.d, ca + ".pem"))
        return grpc.ssl_channel_credentials(root_certificates=read(self.d, ca + ".pem"),
                                            private_key=read(self.d, client + ".key"),
                                            certificate_chain=read(self.d, client + ".pem"))


class Server(ServeProcess):
    """ttt-serve (e2e_support.ServeProcess) with a plaintext health listener, started and
    waited on until the health service says SERVING."""

    def __init__(self, tmp, flags):
        self.health_port = free_port()
        super().__init__(ARGS.server, ARGS.model, tmp,
                         ["--health_listen=127.0.0.1:%d" % self.health_port,
                          "--checkpoint_on_shutdown=false"] + list(flags))
        self.start()
        self.health = grpc.insecure_channel("127.0.0.1:%d" % self.health_port)
        # The health listener comes up with the main port; wait for SERVING.
        check = self.health.unary_unary(HEALTH_CHECK)
        if not wait_until(lambda: self._serving(check), 30):
            raise RuntimeError("server never SERVING:\n" + self.output())

    @staticmethod
    def _serving(check):
        try:
            return check(b"", timeout=5) == SERVING
        except grpc.RpcError:
            return False

    def stop(self):
        self.health.close()
        super().stop()


def bearer(token):
    return (("authorization", "Bearer " + token),)


class AuthE2ETest(unittest.TestCase):
    """TLS and bearer tokens; one server for the class (restarting LibTorch is slow)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ttt-auth-e2e-")
        cls.pki = Pki(cls.tmp)
        cls.tokens = os.path.join(cls.tmp, "tokens")
        write_atomically(cls.tokens, "\n".join([
            "# tenant sha256(token) scope",
            "alice %s write" % sha256_hex("alice-token"),
            "alice %s read" % sha256_hex("alice-read-token"),
            "bob %s" % sha256_hex("bob-token"),
            "prometheus %s metrics" % sha256_hex("scrape-token"), ""]))
        cls.server = Server(cls.tmp, [
            "--tls_cert_file=" + os.path.join(cls.tmp, "current/tls.crt"),
            "--tls_key_file=" + os.path.join(cls.tmp, "current/tls.key"),
            "--tls_refresh_s=1", "--auth_tokens_file=" + cls.tokens, "--metrics_auth=true",
            "--reflection=on"])
        cls.channel = cls.secure_channel("ca1")
        cls.stub = pb_grpc.TttServiceStub(cls.channel)
        cls.info = cls.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bearer("bob-token"),
                                          timeout=30)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def secure_channel(cls, ca, client=None):
        # A distinct channel argument keeps each channel on its own connection.
        return grpc.secure_channel("localhost:%d" % cls.server.port,
                                   cls.pki.credentials(ca, client),
                                   options=[("ttt.test.channel", next(CHANNEL_IDS))])

    def assertCode(self, call, code, fragment):
        with self.assertRaises(grpc.RpcError) as cm:
            call()
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn(fragment, cm.exception.details() or "")

    def ids(self, n=40):
        return [3 + (i * 7919) % (self.info.vocab_size - 3) for i in range(n)]

    def test_tls_works_and_plaintext_to_the_tls_port_fails(self):
        self.assertTrue(self.info.security.tls)
        self.assertTrue(self.info.security.bearer_tokens)
        self.assertTrue(self.info.security.authenticated)
        plain = grpc.insecure_channel("127.0.0.1:%d" % self.server.port)
        stub = pb_grpc.TttServiceStub(plain)
        self.assertCode(lambda: stub.GetServerInfo(pb.GetServerInfoRequest(),
                                                   metadata=bearer("bob-token"), timeout=10),
                        grpc.StatusCode.UNAVAILABLE, "")
        plain.close()

    def test_each_token_reaches_only_its_tenant(self):
        s = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=bearer("alice-token"))
        self.assertEqual(s.tenant, "alice")
        mine = self.stub.ListSessions(pb.ListSessionsRequest(), metadata=bearer("alice-token"))
        self.assertIn(s.session_id, [x.session_id for x in mine.sessions])
        theirs = self.stub.ListSessions(pb.ListSessionsRequest(), metadata=bearer("bob-token"))
        self.assertNotIn(s.session_id, [x.session_id for x in theirs.sessions])
        self.assertCode(lambda: self.stub.GetSession(pb.GetSessionRequest(session_id=s.session_id),
                                                     metadata=bearer("bob-token")),
                        grpc.StatusCode.NOT_FOUND, s.session_id)
        self.assertCode(lambda: self.stub.ListSessions(pb.ListSessionsRequest()),
                        grpc.StatusCode.UNAUTHENTICATED, "missing credentials")
        self.assertCode(lambda: self.stub.ListSessions(pb.ListSessionsRequest(),
                                                       metadata=bearer("alice-tokem")),
                        grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")

    def test_read_scoped_token_cannot_ingest(self):
        s = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=bearer("alice-token"))
        got = self.stub.GetSession(pb.GetSessionRequest(session_id=s.session_id),
                                   metadata=bearer("alice-read-token"))
        self.assertEqual(got.session_id, s.session_id)
        requests = iter([pb.IngestRequest(session_id=s.session_id, token_ids=self.ids())])
        self.assertCode(lambda: list(self.stub.Ingest(requests,
                                                      metadata=bearer("alice-read-token"))),
                        grpc.StatusCode.PERMISSION_DENIED,
                        "may not call Ingest: it needs scope 'write'")
        self.assertCode(lambda: list(self.stub.Generate(
                            pb.GenerateRequest(session_id=s.session_id, max_tokens=2, commit=True),
                            metadata=bearer("alice-read-token"))),
                        grpc.StatusCode.PERMISSION_DENIED, "needs scope 'write'")

    def test_tenant_header_cannot_override_the_credential(self):
        md = bearer("alice-token") + (("x-tenant-id", "bob"),)
        self.assertCode(lambda: self.stub.ListSessions(pb.ListSessionsRequest(), metadata=md),
                        grpc.StatusCode.PERMISSION_DENIED,
                        "x-tenant-id 'bob' does not match the credential's tenant 'alice'")
        same = bearer("alice-token") + (("x-tenant-id", "alice"),)
        self.stub.ListSessions(pb.ListSessionsRequest(), metadata=same)

    def test_health_without_credentials_on_both_listeners(self):
        main_check = self.channel.unary_unary(HEALTH_CHECK)
        self.assertEqual(main_check(b"", timeout=10), SERVING)
        health_check = self.server.health.unary_unary(HEALTH_CHECK)
        self.assertEqual(health_check(b"", timeout=10), SERVING)
        # The health listener serves nothing else, not even with a token.
        stub = pb_grpc.TttServiceStub(self.server.health)
        self.assertCode(lambda: stub.ListSessions(pb.ListSessionsRequest(),
                                                  metadata=bearer("alice-token"), timeout=10),
                        grpc.StatusCode.UNIMPLEMENTED, "")

    def test_reflection_is_behind_authentication(self):
        reflect = self.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        list_services = b"\x3a\x00"  # ServerReflectionRequest{list_services: ""}
        self.assertCode(lambda: list(reflect(iter([list_services]), timeout=10)),
                        grpc.StatusCode.UNAUTHENTICATED, "missing credentials")
        answers = list(reflect(iter([list_services]), metadata=bearer("bob-token"), timeout=10))
        self.assertIn(b"tttserve.v1.TttService", answers[0])

    def test_metrics_want_their_token(self):
        url = "http://127.0.0.1:%d/metrics" % self.server.metrics_port

        def get(token=None):
            req = urllib.request.Request(url)
            if token:
                req.add_header("Authorization", "Bearer " + token)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""
        self.assertEqual(get()[0], 401)
        self.assertEqual(get("nope")[0], 401)
        self.assertEqual(get("alice-token")[0], 403)  # a tenant's token does not see all tenants
        status, text = get("scrape-token")
        self.assertEqual(status, 200)
        self.assertIn('tttserve_auth_failures_total{reason="unknown_token"}', text)
        self.assertIn("tttserve_auth_enabled 1", text)

    def _open_ingest(self, token):
        """A session of `token`'s tenant and an Ingest stream into it, fed one message at a
        time through the returned queue (None ends it)."""
        import queue
        s = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=bearer(token))
        q = queue.Queue()

        def requests():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item
        stream = self.stub.Ingest(requests(), metadata=bearer(token))
        q.put(pb.IngestRequest(session_id=s.session_id, token_ids=self.ids(8)))
        self.assertEqual(next(stream).stream_tokens, 8)
        return q, stream

    def test_rotations_take_effect_while_a_stream_stays_open(self):
        # Ingest streams opened before both rotations: bob's (his token is then revoked) and
        # alice's (her token stays).
        bob_q, bob_stream = self._open_ingest("bob-token")
        alice_q, alice_stream = self._open_ingest("alice-token")

        # Token rotation: bob's old token revoked, a new one added, no restart.
        with open(self.tokens) as f:
            old = f.read()
        write_atomically(self.tokens, old.replace(sha256_hex("bob-token"),
                                                  sha256_hex("bob-token-2")))
        self.assertTrue(wait_until(lambda: self._lists("bob-token-2"), 30), self.server.output())
        self.assertCode(lambda: self.stub.ListSessions(pb.ListSessionsRequest(),
                                                       metadata=bearer("bob-token")),
                        grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        # The revoked token's open stream ends (within a second even when idle), having
        # acknowledged everything it applied.
        with self.assertRaises(grpc.RpcError) as cm:
            next(bob_stream)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("was revoked or changed", cm.exception.details())
        bob_q.put(None)

        # Certificate rotation to one from ca2: new connections need ca2, no restart.
        self.pki.serve("v2")
        self.assertTrue(wait_until(lambda: self._lists("bob-token-2", ca="ca2"), 30),
                        self.server.output())

        # A stream whose credential stays valid goes on across both rotations.
        alice_q.put(pb.IngestRequest(token_ids=self.ids(8)))
        self.assertEqual(next(alice_stream).stream_tokens, 16)
        alice_q.put(None)
        self.assertEqual(list(alice_stream), [])
        self.pki.serve("v1")
        write_atomically(self.tokens, old)
        self.assertTrue(wait_until(lambda: self._lists("bob-token", ca="ca1"), 30))

    def _lists(self, token, ca="ca1"):
        channel = self.secure_channel(ca)
        try:
            pb_grpc.TttServiceStub(channel).ListSessions(pb.ListSessionsRequest(),
                                                         metadata=bearer(token), timeout=5)
            return True
        except grpc.RpcError:
            return False
        finally:
            channel.close()


class MutualTlsE2ETest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ttt-mtls-e2e-")
        cls.pki = Pki(cls.tmp)
        # Certificates authenticate through their lines only (no certificate field grants).
        credentials = os.path.join(cls.tmp, "credentials")
        write_atomically(credentials, "carol cn:carol\ndave cn:dave read\n")
        cls.server = Server(cls.tmp, [
            "--tls_cert_file=" + os.path.join(cls.tmp, "server1.pem"),
            "--tls_key_file=" + os.path.join(cls.tmp, "server1.key"),
            "--tls_client_ca_file=" + os.path.join(cls.tmp, "ca1.pem"),
            "--auth_tokens_file=" + credentials])

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def stub(self, client):
        channel = grpc.secure_channel("localhost:%d" % self.server.port,
                                      self.pki.credentials("ca1", client),
                                      options=[("ttt.test.channel", next(CHANNEL_IDS))])
        self.addCleanup(channel.close)
        return pb_grpc.TttServiceStub(channel)

    def test_tenant_from_the_certificate_identity_line(self):
        s = self.stub("carol").CreateSession(pb.CreateSessionRequest(), timeout=10)
        self.assertEqual(s.tenant, "carol")
        info = self.stub("carol").GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        self.assertTrue(info.security.client_certificates)
        with self.assertRaises(grpc.RpcError) as cm:  # its line says read; O=admin grants nothing
            self.stub("dave").CreateSession(pb.CreateSessionRequest(), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)

    def test_escaped_comma_in_the_subject_is_no_admin(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub("mallory").ListSessions(pb.ListSessionsRequest(), timeout=10,
                                              metadata=(("x-tenant-id", "carol"),))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("'cn:mallory' is not in the server's credentials file",
                      cm.exception.details())

    def test_refuses_no_certificate_and_another_ca(self):
        for client in (None, "eve"):
            with self.assertRaises(grpc.RpcError) as cm:
                self.stub(client).ListSessions(pb.ListSessionsRequest(), timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, client)


QUOTAS = """# tenant quotas
alice live_sessions=1 streams=1 ingest_tokens_per_s=5 ingest_burst=20
carol live_sessions=%d
* live_sessions=3
"""


class QuotasE2ETest(unittest.TestCase):
    """--quotas_file with bearer tokens over TLS, and /metrics over HTTPS."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ttt-quotas-e2e-")
        cls.pki = Pki(cls.tmp)
        cls.tokens = os.path.join(cls.tmp, "tokens")
        write_atomically(cls.tokens, "\n".join(
            ["%s %s write" % (t, sha256_hex(t + "-token")) for t in ("alice", "bob", "carol")] +
            ["root %s admin" % sha256_hex("root-token"),
             "prometheus %s metrics" % sha256_hex("scrape-token"), ""]))
        cls.quotas = os.path.join(cls.tmp, "quotas")
        write_atomically(cls.quotas, QUOTAS % 0)
        cls.server = Server(cls.tmp, [
            "--tls_cert_file=" + os.path.join(cls.tmp, "server1.pem"),
            "--tls_key_file=" + os.path.join(cls.tmp, "server1.key"),
            "--auth_tokens_file=" + cls.tokens, "--quotas_file=" + cls.quotas,
            "--metrics_auth=true",
            "--metrics_tls_cert_file=" + os.path.join(cls.tmp, "server1.pem"),
            "--metrics_tls_key_file=" + os.path.join(cls.tmp, "server1.key")])
        cls.channel = grpc.secure_channel("localhost:%d" % cls.server.port,
                                          cls.pki.credentials("ca1"))
        cls.stub = pb_grpc.TttServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def create(self, tenant):
        return self.stub.CreateSession(pb.CreateSessionRequest(),
                                       metadata=bearer(tenant + "-token"), timeout=30)

    def assertExhausted(self, call, fragment):
        with self.assertRaises(grpc.RpcError) as cm:
            call()
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED,
                         cm.exception.details())
        self.assertIn(fragment, cm.exception.details())
        return cm.exception

    def scrape(self):
        context = ssl.create_default_context(cafile=os.path.join(self.tmp, "ca1.pem"))
        request = urllib.request.Request(
            "https://localhost:%d/metrics" % self.server.metrics_port,
            headers={"Authorization": "Bearer scrape-token"})
        with urllib.request.urlopen(request, timeout=10, context=context) as r:
            return r.read().decode()

    def test_live_sessions_refused_at_the_limit_others_unaffected(self):
        self.alice_session()
        self.assertExhausted(lambda: self.create("alice"),
                             "tenant 'alice' has 1 live sessions, at its quota of 1 "
                             "(live_sessions)")
        for _ in range(3):  # "*": three each
            self.create("bob")
        self.assertExhausted(lambda: self.create("bob"), "at its quota of 3 (live_sessions)")

    def test_ingest_rate_says_when_to_retry(self):
        session = self.alice_session()

        def ingest():
            reqs = [pb.IngestRequest(session_id=session, token_ids=list(range(3, 23)))] * 2
            call = self.stub.Ingest(iter(reqs), metadata=bearer("alice-token"), timeout=30)
            return call, list(call)
        with self.assertRaises(grpc.RpcError) as cm:
            ingest()
        err = cm.exception
        self.assertEqual(err.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, err.details())
        self.assertIn("over its ingest quota of 5 tokens/s (ingest_tokens_per_s", err.details())
        self.assertIn("retry in", err.details())
        trailers = dict(err.trailing_metadata())
        self.assertGreater(int(trailers["retry-after-ms"]), 0)
        # gRPC's own key may be taken by the client's retry machinery before the application.
        if "grpc-retry-pushback-ms" in trailers:
            self.assertEqual(trailers["retry-after-ms"], trailers["grpc-retry-pushback-ms"])
        listed = self.stub.ListSessions(pb.ListSessionsRequest(),
                                        metadata=bearer("alice-token"), timeout=30)
        self.assertEqual(listed.sessions[0].counters.tokens_received, 20)  # the first stays

    def alice_session(self):
        """Alice's one session (made on first use)."""
        listed = self.stub.ListSessions(pb.ListSessionsRequest(),
                                        metadata=bearer("alice-token"), timeout=30)
        if listed.sessions:
            return listed.sessions[0].session_id
        return self.create("alice").session_id

    def test_usage_in_server_info_own_tenant_or_all_for_admin(self):
        own = self.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bearer("carol-token"),
                                      timeout=30).tenant_usage
        self.assertEqual([u.tenant for u in own], ["carol"])
        admin = self.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bearer("root-token"),
                                        timeout=30).tenant_usage
        tenants = [u.tenant for u in admin]
        self.assertEqual(tenants[0], "root")
        self.assertIn("alice", tenants)
        self.assertIn("*", tenants)
        alice = admin[tenants.index("alice")]
        self.assertEqual(alice.limits["live_sessions"], 1)
        self.assertEqual(alice.limits["streams"], 1)

    def test_metrics_over_https_with_per_tenant_usage(self):
        self.alice_session()
        text = self.scrape()
        self.assertIn('tttserve_tenant_sessions{tenant="alice"} 1', text)
        self.assertIn('tttserve_tenant_sessions{tenant="*"}', text)
        self.assertIn('tttserve_tenant_quota_limit{tenant="alice",quota="live_sessions"} 1', text)
        self.assertIn('tttserve_quota_rejections_total{tenant="alice",quota="live_sessions"}',
                      text)
        self.assertNotIn('tenant="bob"', text)  # unlisted tenants are summed under "*"
        with self.assertRaises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.server.metrics_port,
                                   timeout=10).read()

    def test_quotas_file_reloads_without_a_restart(self):
        self.assertExhausted(lambda: self.create("carol"), "at its quota of 0 (live_sessions)")
        write_atomically(self.quotas, QUOTAS % 1)
        self.assertTrue(wait_until(lambda: self._creates("carol"), 30), self.server.output())
        self.assertIn("quotas: reloaded", self.server.output())

    def _creates(self, tenant):
        try:
            self.create(tenant)
            return True
        except grpc.RpcError:
            return False


class NoAuthE2ETest(unittest.TestCase):
    def test_runs_unauthenticated_and_says_so(self):
        tmp = tempfile.mkdtemp(prefix="ttt-noauth-e2e-")
        self.addCleanup(shutil.rmtree, tmp, True)
        server = Server(tmp, [])
        self.addCleanup(server.stop)
        channel = grpc.insecure_channel("127.0.0.1:%d" % server.port)
        self.addCleanup(channel.close)
        info = pb_grpc.TttServiceStub(channel).GetServerInfo(pb.GetServerInfoRequest(),
                                                             timeout=30)
        self.assertFalse(info.security.authenticated)
        self.assertFalse(info.security.tls)
        self.assertIn("WARNING: no authentication", server.output())
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % server.metrics_port,
                                    timeout=10) as r:
            self.assertIn("tttserve_auth_enabled 0", r.read().decode())


def main():
    global ARGS, pb, pb_grpc, grpc
    ARGS, pb, pb_grpc, argv = parse_unittest_args()
    import grpc  # binds the module's global (declared above), as pb and pb_grpc
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
