#!/usr/bin/python3
"""Graceful rollouts with the real ttt-serve binary: on SIGTERM the server reports NOT_SERVING
(grpc.health.v1 on the gRPC port and --health_listen, /readyz 503 on the metrics port) but keeps
accepting calls for --shutdown_delay_s, so the calls a load balancer sends before it has noticed
still succeed; then it drains and exits 0.

The delay is long here (60 s) and ended by a second SIGTERM once every check has passed, so no
check races the clock; the second signal cutting the delay short is checked with it. Then: a bad
--shutdown_delay_s is refused with a message naming it.

Usage: shutdown_e2e_test.py --server PATH/ttt-serve --model MODEL_DIR --proto PROTO_DIR
"""
import os
import shutil
import signal
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from e2e_support import (ServeProcess, free_port, log_tail, parse_unittest_args, stop_process,
                         wait_http)

ARGS = None
pb = None
pb_grpc = None
grpc = None

SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"  # HealthCheckResponse{status}
kDelayS = 60  # ended early by the second SIGTERM; never waited out


def readyz(port):
    """(HTTP status, body) of GET /readyz."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def health(port, service=b""):
    """grpc.health.v1 Check on a new channel: the raw HealthCheckResponse bytes (Debian ships no
    grpc_health Python package)."""
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        request = (b"\x0a" + bytes([len(service)]) + service) if service else b""
        return check(request, timeout=30)


class ShutdownTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ttt-shutdown-")
        self.log_path = os.path.join(self.tmp, "server.log")
        self.health_port = free_port()

    def tearDown(self):
        if getattr(self, "proc", None) is not None:
            stop_process(self.proc, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, *flags):
        """Starts the server with `flags` and returns at once (the test watches the start)."""
        server = ServeProcess(ARGS.server, ARGS.model, self.tmp,
                              ["--health_listen=127.0.0.1:%d" % self.health_port, "--threads=1",
                               "--drain_timeout_s=5"] + list(flags),
                              checkpoint_dir=os.path.join(self.tmp, "ckpt"),
                              log_path=self.log_path).start(ready_timeout=None)
        self.proc, self.port, self.metrics_port = server.proc, server.port, server.metrics_port

    def new_stub(self):
        channel = grpc.insecure_channel("127.0.0.1:%d" % self.port)
        grpc.channel_ready_future(channel).result(timeout=120)
        return channel, pb_grpc.TttServiceStub(channel)

    def wait_log(self, text, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.log_path, errors="replace") as f:
                if text in f.read():
                    return
            self.assertIsNone(self.proc.poll(), "exited:\n" + log_tail(self.log_path))
            time.sleep(0.1)
        self.fail("no %r in the log:\n%s" % (text, log_tail(self.log_path)))

    def test_sigterm_reports_not_serving_but_takes_calls_until_the_delay_ends(self):
        self.start("--shutdown_delay_s=%d" % kDelayS)
        channel, stub = self.new_stub()
        wait_http("http://127.0.0.1:%d/metrics" % self.metrics_port, 60)
        self.assertEqual(readyz(self.metrics_port), (200, "ready\n"))
        self.assertEqual(health(self.port, b"tttserve.v1.TttService"), SERVING)
        self.assertEqual(health(self.health_port), SERVING)
        session = stub.CreateSession(pb.CreateSessionRequest()).session_id

        self.proc.send_signal(signal.SIGTERM)
        self.wait_log("not serving; taking calls for %ds more" % kDelayS)
        # Not ready on every surface a load balancer or the kubelet looks at...
        self.assertEqual(readyz(self.metrics_port), (503, "not ready\n"))
        for port, service in ((self.port, b""), (self.port, b"tttserve.v1.TttService"),
                              (self.health_port, b"")):
            self.assertEqual(health(port, service), NOT_SERVING, (port, service))
        # ...while calls still succeed: on a channel opened before SIGTERM, and on a new one (a
        # new connection to the listener, as a client whose balancer has not noticed yet).
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60)
        self.assertGreater(info.vocab_size, 0)
        new_channel, new_stub = self.new_stub()
        created = new_stub.CreateSession(pb.CreateSessionRequest(), timeout=60)
        self.assertTrue(created.session_id.startswith("s-"), created.session_id)
        got = new_stub.GetSession(pb.GetSessionRequest(session_id=session), timeout=60)
        self.assertEqual(got.session_id, session)
        self.assertIsNone(self.proc.poll(), "exited during the delay")
        new_channel.close()
        channel.close()

        # The second signal ends the delay; the server drains and exits 0.
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=120), 0, log_tail(self.log_path))
        self.proc = None
        self.assertIn("second signal: ending the shutdown delay", log_tail(self.log_path))
        self.assertIn("ttt-serve: stopped", log_tail(self.log_path))

    def test_zero_delay_drains_at_once_and_exits_zero(self):
        self.start("--shutdown_delay_s=0")
        channel, stub = self.new_stub()
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60)
        channel.close()
        self.assertEqual(stop_process(self.proc, timeout=120), 0, log_tail(self.log_path))
        self.proc = None
        self.assertNotIn("not serving; taking calls", log_tail(self.log_path))

    def test_negative_delay_is_refused(self):
        self.start("--shutdown_delay_s=-1")
        self.assertEqual(self.proc.wait(timeout=60), 2)
        self.proc = None
        self.assertIn("--shutdown_delay_s must be >= 0", log_tail(self.log_path))


if __name__ == "__main__":
    ARGS, pb, pb_grpc, argv = parse_unittest_args()
    import grpc as _grpc
    grpc = _grpc
    unittest.main(argv=argv, verbosity=2)
