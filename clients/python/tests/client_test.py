"""tttserve-client against the real ttt-serve binary: the package is pip-installed (stubs
generated at build time from proto/) into a temporary folder, then used as a program would.

Usage: client_test.py --server PATH/ttt-serve --model MODEL_DIR (with a tokenizer) --package
clients/python --support tests/e2e
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import unittest

ARGS = None


def install_package(package_dir):
    """pip install --target a fresh folder, offline (Debian's grpcio, protobuf, grpc_tools)."""
    target = tempfile.mkdtemp(prefix="ttt-pyclient-")
    build = tempfile.mkdtemp(prefix="ttt-pyclient-src-")
    # Build from a copy beside the proto/ folder it reads, so the source tree stays clean.
    subprocess.run(["cp", "-r", package_dir, os.path.join(build, "python")], check=True)
    os.makedirs(os.path.join(build, "proto"))
    proto = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(package_dir))), "proto")
    subprocess.run(["cp", "-r", proto + "/.", os.path.join(build, "proto")], check=True)
    # setup.py finds proto/ two levels up: build/python/../../proto -> put python one deeper.
    os.makedirs(os.path.join(build, "clients"))
    os.rename(os.path.join(build, "python"), os.path.join(build, "clients", "python"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation",
                    "--no-deps", "--no-index", "--target", target,
                    os.path.join(build, "clients", "python")], check=True)
    sys.path.insert(0, target)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import e2e_support
        cls.dir = tempfile.mkdtemp(prefix="ttt-pyclient-ck-")
        # tests/e2e's launcher; one port across restarts, so that a restart comes back where the
        # client looks. No drain: a SIGTERM cuts the ingest in flight whatever the machine's speed
        # (with a 1 s drain a fast engine finished the 12k tokens inside it, and nothing resumed).
        cls.server = e2e_support.ServeProcess(
            ARGS.server, ARGS.model, cls.dir, ["--drain_timeout_s=0"], metrics=False,
            checkpoint_dir=cls.dir, log_path=os.path.join(cls.dir, "server.log"))
        cls.server.start()
        from tttserve_client import Client
        cls.client = Client("127.0.0.1:%d" % cls.server.port, tenant="py", backoff_s=0.2,
                            max_backoff_s=0.5, max_retries=60,
                            channel_options=[("grpc.initial_reconnect_backoff_ms", 100),
                                             ("grpc.max_reconnect_backoff_ms", 500)])

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def test_text_tokens_generation_and_errors(self):
        from tttserve_client import TttError
        import grpc
        text = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)
        ids = self.client.tokenize(text)
        self.assertEqual(self.client.detokenize(ids), text)
        session = self.client.create_session("py-text")
        acks = []
        counters = session.ingest(text, progress=acks.append)
        self.assertEqual(counters.tokens_received, len(ids))
        self.assertEqual(acks[-1].counters.tokens_received, len(ids))
        out = session.generate_text(" The", max_tokens=8, temperature=0.0, ignore_eos=True)
        self.assertIsInstance(out, str)
        self.assertGreater(len(out), 0)
        with self.assertRaises(TttError) as e:
            self.client.create_session("py-text")
        self.assertEqual((e.exception.code, e.exception.reason),
                         (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"))
        vocab = self.client.server_info().vocab_size
        with self.assertRaises(TttError) as e:
            session.ingest([vocab + 1])
        self.assertEqual(e.exception.reason, "TOKEN_OUT_OF_VOCAB")
        self.assertEqual(e.exception.metadata["token_id"], str(vocab + 1))
        self.assertIsNone(e.exception.retry_delay)
        session.delete()

    def test_ingest_resumes_after_the_server_restarts_mid_stream(self):
        """The retry path: the server stops (SIGTERM, sessions persisted) while a long ingest
        streams, and comes back on the same port; the client retries UNAVAILABLE with backoff
        and resumes from the session's tokens_received, applying every token exactly once."""
        vocab = self.client.server_info().vocab_size
        ids = [3 + (i * 7) % (vocab - 3) for i in range(12288)]
        session = self.client.create_session("py-restart")
        streams, restarted = [], threading.Event()

        def restart():
            self.server.stop()
            self.server.start()

        def progress(response):
            if response.message_index == 0:
                streams.append(response.counters.tokens_received)
            if not restarted.is_set() and response.counters.tokens_received >= 256:
                restarted.set()
                threading.Thread(target=restart).start()

        counters = session.ingest(ids, piece_tokens=128, progress=progress)
        self.assertEqual(counters.tokens_received, len(ids))
        self.assertEqual(session.info().counters.position, len(ids))
        self.assertGreaterEqual(len(streams), 2, "the ingest never had to resume: %r" % streams)
        session.delete()


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    for flag in ("server", "model", "package", "support"):
        parser.add_argument("--" + flag, required=True)
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.support)
    install_package(ARGS.package)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
