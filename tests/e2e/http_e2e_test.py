#!/usr/bin/python3
"""End-to-end test of ttt-serve's HTTP front door (--http_listen, issue 25 items 2 and 3) on the
real binary and the shipped model, driven by curl and urllib, and by the official OpenAI Node
client (npm `openai`) when the build installed it.

Covers: /healthz and /readyz; /v1/models against GetServerInfo; non-streaming and streaming
(server-sent events, [DONE] last) completions whose text equals a greedy gRPC Generate of the same
prompt on an equal session, for a text and a token-id prompt, with usage and logprobs; the
temporary session of a completion without a session is deleted; x-session-id (and the body's
session_id) on a session that has ingested a document: the completion sees it, as gRPC does;
commit_prompt ingests the prompt, its absence leaves the session unchanged; errors as OpenAI's
error JSON with the HTTP status of the gRPC code (bad JSON 400, a rule of the service 400 with its
own message, unknown session 404, oversized body 413, wrong route 404 and method 405); with
bearer tokens: none or a wrong one 401, another tenant's session 404, a read-only token that
commits 403, probes without a token.

The HTTP/JSON routes of every RPC (issue 25 item 1): each route's happy path against the gRPC
call it maps to (same counters, scores, greedy tokens, export bytes, token ids), and the
refusals as google.rpc.Status JSON with ErrorInfo: bad JSON 400 naming the type, unknown
session 404, a rule of the service 400, the path's id against the body's 400, wrong method 405,
an ingest failing mid-stream ({"error": ...} as its last line), oversized body 413, no token 401,
another tenant's session 404, a read-only token that writes 403.

Usage: http_e2e_test.py --server PATH/ttt-serve --model MODEL_DIR --proto PROTO_DIR
                        --openai_node_modules DIR (empty: npm missing, that test is skipped)
"""
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from e2e_support import (ServeProcess, bits, free_port, parse_unittest_args, log_tail,
                         wait_until)

ARGS = None
pb = None
pb_grpc = None
grpc = None

PROMPT = "The old man walked to the"
DOCUMENT = ("The lighthouse keeper counted ships every night. The lighthouse keeper wrote the "
            "names of the ships in a book. ") * 4
MAX_BODY = 65536
HERE = os.path.dirname(os.path.abspath(__file__))


class Server(ServeProcess):
    """ttt-serve (e2e_support.ServeProcess) with --http_listen; ready once /readyz answers 200.
    With `ca` (the PEM file that signed the server's certificate) gRPC and HTTP are reached over
    TLS."""

    def __init__(self, tmp, flags=(), ca=None):
        self.ca = ca
        self.ssl = ssl.create_default_context(cafile=ca) if ca else None
        self.http_port = free_port()
        super().__init__(ARGS.server, ARGS.model, tmp,
                         ["--http_listen=127.0.0.1:%d" % self.http_port,
                          "--http_max_body_bytes=%d" % MAX_BODY,
                          "--checkpoint_on_shutdown=false"] + list(flags))
        self.start()
        if not wait_until(self.ready, 90):
            self.stop()
            raise RuntimeError("server did not become ready:\n" + log_tail(self.log_path))
        if ca:
            with open(ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel("localhost:%d" % self.port, credentials)
        else:
            self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.port)
        self.stub = pb_grpc.TttServiceStub(self.channel)

    def ready(self):
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=2, context=self.ssl) as r:
                return r.status == 200
        except OSError:
            return False

    def metric(self, line_prefix):
        """The value of the /metrics sample whose line starts with line_prefix (0 if none)."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                    timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(line_prefix):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def url(self, path):
        if self.ca:
            return "https://localhost:%d%s" % (self.http_port, path)
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def curl(self, path, *args):
        """(status, body) of curl on path, trusting the server's CA."""
        return curl(self.url(path), *((["--cacert", self.ca] if self.ca else []) + list(args)))

    def stop(self):
        if hasattr(self, "channel"):
            self.channel.close()
        super().stop()


def http(server, method, path, body=None, headers=None, raw=None):
    """(status, headers, parsed JSON body) of one request through urllib."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url(path), data=data, method=method,
                                 headers=dict({"Content-Type": "application/json"},
                                              **(headers or {})))
    try:
        with urllib.request.urlopen(req, timeout=120, context=server.ssl) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def rest(server, method, path, body=None, headers=None, raw=None,
         content_type="application/json"):
    """(status, headers, body bytes) of one request to an HTTP/JSON route."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url(path), data=data, method=method,
                                 headers=dict({"Content-Type": content_type}, **(headers or {})))
    try:
        with urllib.request.urlopen(req, timeout=120, context=server.ssl) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def rest_json(server, method, path, body=None, **kwargs):
    status, headers, raw = rest(server, method, path, body, **kwargs)
    return status, headers, json.loads(raw)


def b64(text):
    """A `bytes` field's JSON: base64 (protobuf's JSON mapping)."""
    return base64.b64encode(text.encode()).decode()


def error_info(status_json):
    """The ErrorInfo of a google.rpc.Status JSON."""
    infos = [d for d in status_json["details"]
             if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert len(infos) == 1, status_json
    return infos[0]


def curl(*args):
    """curl's stdout; the last line of -w '\\n%{http_code}' is the status."""
    out = subprocess.run(["curl", "-sS", "-N", "-w", "\n%{http_code}"] + list(args),
                         check=True, capture_output=True, timeout=120).stdout.decode()
    body, _, status = out.rpartition("\n")
    return int(status), body


def parse_sse(text):
    """The data payloads of a server-sent-event body, in order; every event is 'data: ...'."""
    events = [e for e in text.split("\n\n") if e]
    datas = []
    for e in events:
        assert e.startswith("data: "), "not an SSE data event: %r" % e
        datas.append(e[len("data: "):])
    return datas


def grpc_generate(stub, session_id, prompt_text=None, prompt_ids=None, max_tokens=12,
                  metadata=()):
    """Greedy Generate over gRPC: (text, [logprob per token])."""
    req = pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens, temperature=0.0)
    if prompt_text is not None:
        req.prompt_text = prompt_text.encode()
    if prompt_ids is not None:
        req.prompt_token_ids.extend(prompt_ids)
    text, logprobs = b"", []
    for r in stub.Generate(req, metadata=metadata, timeout=120):
        text += r.text
        if r.HasField("token_id"):
            logprobs.append(r.logprob)
    return text.decode(), logprobs


def grpc_generate_fresh(stub, **kwargs):
    """Greedy Generate on a fresh session, as a completion without a session runs."""
    sid = stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
    try:
        return grpc_generate(stub, sid, **kwargs)
    finally:
        stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), timeout=30)


def ingest(stub, session_id, text, metadata=()):
    req = pb.IngestRequest(session_id=session_id, text=text.encode(), flush=True)
    return list(stub.Ingest(iter([req]), metadata=metadata, timeout=120))[-1]


class HttpE2ETest(unittest.TestCase):
    """Authentication off; one server for the class (starting LibTorch is slow)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ttt-http-e2e-")
        cls.server = Server(cls.tmp)
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def session_count(self):
        return len(self.stub.ListSessions(pb.ListSessionsRequest(), timeout=30).sessions)

    def assertError(self, status, body, http_status, code, fragment):
        self.assertEqual(status, http_status, body)
        self.assertEqual(body["error"]["code"], code, body)
        self.assertIn(fragment, body["error"]["message"])
        self.assertTrue(body["error"]["type"])

    def test_probes(self):
        self.assertEqual(self.server.curl("/healthz"), (200, '{"status":"alive"}\n'))
        self.assertEqual(self.server.curl("/readyz"), (200, '{"status":"serving"}\n'))

    def test_models_lists_the_served_model(self):
        status, _, body = http(self.server, "GET", "/v1/models")
        self.assertEqual(status, 200)
        info = self.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        self.assertEqual(body["object"], "list")
        self.assertEqual([m["id"] for m in body["data"]], [os.path.basename(ARGS.model)])
        self.assertEqual(body["data"][0]["model_fingerprint"], info.model_fingerprint)

    def test_completion_equals_grpc_generate_and_leaves_no_session(self):
        expected, logprobs = grpc_generate_fresh(self.stub, prompt_text=PROMPT)
        self.assertTrue(expected)  # a comparison of two empty texts would prove nothing
        before = self.session_count()
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"model": os.path.basename(ARGS.model), "prompt": PROMPT,
                                "max_tokens": 12, "temperature": 0, "logprobs": 1})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["object"], "text_completion")
        self.assertTrue(body["id"].startswith("cmpl-"))
        choice = body["choices"][0]
        self.assertEqual(choice["text"], expected)
        self.assertIn(choice["finish_reason"], ("length", "stop"))
        self.assertEqual(len(choice["logprobs"]["token_logprobs"]), len(logprobs))
        for got, want in zip(choice["logprobs"]["token_logprobs"], logprobs):
            self.assertAlmostEqual(got, want, places=5)
        usage = body["usage"]
        self.assertEqual(usage["completion_tokens"], len(logprobs))
        self.assertGreater(usage["prompt_tokens"], 0)
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + len(logprobs))
        self.assertEqual(self.session_count(), before)  # the temporary session is gone

    def test_streaming_completion_is_server_sent_events(self):
        expected, logprobs = grpc_generate_fresh(self.stub, prompt_text=PROMPT)
        status, text = self.server.curl("/v1/completions", "-H",
                            "Content-Type: application/json", "-d",
                            json.dumps({"prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                        "stream": True,
                                        "stream_options": {"include_usage": True}}))
        self.assertEqual(status, 200, text)
        datas = parse_sse(text)
        self.assertEqual(datas[-1], "[DONE]")
        chunks = [json.loads(d) for d in datas[:-1]]
        usage = chunks[-1]
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], len(logprobs))
        pieces = chunks[:-1]
        self.assertGreater(len(pieces), 1)  # streamed, not one lump
        self.assertEqual("".join(c["choices"][0]["text"] for c in pieces), expected)
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in pieces[:-1]))
        self.assertIn(pieces[-1]["choices"][0]["finish_reason"], ("length", "stop"))

    def test_token_id_prompt_equals_grpc(self):
        ids = [5, 17, 250, 31, 99]
        expected, _ = grpc_generate_fresh(self.stub, prompt_ids=ids, max_tokens=8)
        self.assertTrue(expected)
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": ids, "max_tokens": 8, "temperature": 0})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["text"], expected)
        self.assertEqual(body["usage"]["prompt_tokens"], len(ids))

    def test_session_header_sees_the_ingested_document(self):
        sid = self.stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
        ingest(self.stub, sid, DOCUMENT)
        prompt = " The lighthouse keeper"
        expected, logprobs = grpc_generate(self.stub, sid, prompt_text=prompt)
        self.assertTrue(expected)
        _, fresh_logprobs = grpc_generate_fresh(self.stub, prompt_text=prompt)
        self.assertNotAlmostEqual(logprobs[0], fresh_logprobs[0], places=3)
        request = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0}
        for headers, body in (({"x-session-id": sid}, request),
                              ({}, dict(request, session_id=sid))):
            status, _, got = http(self.server, "POST", "/v1/completions", body, headers)
            self.assertEqual(status, 200, got)
            self.assertEqual(got["choices"][0]["text"], expected)
            self.assertAlmostEqual(got["choices"][0]["logprobs"]["token_logprobs"][0],
                                   logprobs[0], places=5)
        status, _, got = http(self.server, "POST", "/v1/completions",
                              dict(request, session_id="other"), {"x-session-id": sid})
        self.assertError(status, got, 400, "INVALID_ARGUMENT", "differ")

    def test_commit_prompt_ingests_the_prompt_and_only_then(self):
        sid = self.stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
        counters = lambda: self.stub.GetSession(pb.GetSessionRequest(session_id=sid),
                                                timeout=30).counters
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": PROMPT, "max_tokens": 4}, {"x-session-id": sid})
        self.assertEqual(status, 200, body)
        self.assertEqual(counters().tokens_received, 0)  # default: the session is unchanged
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": PROMPT, "max_tokens": 4, "commit_prompt": True},
                               {"x-session-id": sid})
        self.assertEqual(status, 200, body)
        self.assertGreater(body["usage"]["prompt_tokens"], 0)
        self.assertEqual(counters().tokens_received, body["usage"]["prompt_tokens"])

    def test_errors_are_openai_json_with_mapped_status(self):
        status, _, body = http(self.server, "POST", "/v1/completions", raw=b"{not json")
        self.assertError(status, body, 400, "INVALID_ARGUMENT", "not valid JSON")
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": "x"}, {"x-session-id": "no-such-session"})
        self.assertError(status, body, 404, "NOT_FOUND", "no-such-session")
        # A rule of the gRPC service, answered with its own message.
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": "x", "temperature": 1000})
        self.assertError(status, body, 400, "INVALID_ARGUMENT", "temperature")
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": "x", "model": "gpt-4"})
        self.assertError(status, body, 404, "NOT_FOUND", "not served here")
        status, _, body = http(self.server, "POST", "/v1/completions", {"prompt": "x", "n": 2})
        self.assertError(status, body, 400, "INVALID_ARGUMENT", "`n` must be 1")
        status, _, body = http(self.server, "POST", "/v1/completions",
                               {"prompt": "x", "stream": "yes"})
        self.assertError(status, body, 400, "INVALID_ARGUMENT", "`stream` must be true or false")
        status, _, body = http(self.server, "GET", "/v1/completions")
        self.assertError(status, body, 405, "METHOD_NOT_ALLOWED", "takes POST")
        status, _, body = http(self.server, "GET", "/v1/chat")
        self.assertError(status, body, 404, "NOT_FOUND", "no route")

    def test_oversized_body_is_413(self):
        path = os.path.join(self.tmp, "big.json")
        with open(path, "w") as f:
            json.dump({"prompt": "x" * (MAX_BODY + 1)}, f)
        status, text = self.server.curl("/v1/completions", "-H",
                            "Content-Type: application/json", "--data-binary", "@" + path)
        body = json.loads(text)
        self.assertError(status, body, 413, "REQUEST_TOO_LARGE", "at most %d" % MAX_BODY)
        self.assertEqual(self.server.curl("/healthz")[0], 200)  # still serving

    # ---- HTTP/JSON routes of every RPC (issue 25 item 1) ----

    def assertStatus(self, status, body, http_status, code, reason, fragment):
        """A google.rpc.Status JSON refusal with its ErrorInfo."""
        self.assertEqual(status, http_status, body)
        self.assertEqual(body["code"], code, body)
        self.assertIn(fragment, body["message"])
        self.assertEqual(error_info(body)["reason"], reason)
        self.assertEqual(error_info(body)["domain"], "ttt-serve")

    def test_rest_session_routes_are_the_grpc_calls(self):
        s = self.server
        status, _, created = rest_json(s, "POST", "/v1/sessions", {
            "session_id": "rest-a", "options": {"labels": {"suite": "rest"}}})
        self.assertEqual(status, 200, created)
        self.assertEqual(created["session_id"], "rest-a")
        # Ingest: one JSON message per line in, one acknowledgement per line out.
        lines = "%s\n%s\n" % (json.dumps({"token_ids": [5, 6, 7]}),
                              json.dumps({"text": b64(DOCUMENT), "flush": True}))
        status, headers, raw = rest(s, "POST", "/v1/sessions/rest-a:ingest", raw=lines.encode())
        self.assertEqual(status, 200, raw)
        self.assertEqual(headers["Content-Type"], "application/x-ndjson")
        acks = [json.loads(line) for line in raw.decode().splitlines()]
        self.assertEqual([a["message_index"] for a in acks], ["0", "1"])
        counters = self.stub.GetSession(pb.GetSessionRequest(session_id="rest-a"),
                                        timeout=30).counters
        self.assertEqual(int(acks[-1]["counters"]["tokens_received"]), counters.tokens_received)
        # A text/plain body: the text, flushed.
        status, _, raw = rest(s, "POST", "/v1/sessions/rest-a:ingest", raw=b" More ships.",
                              content_type="text/plain")
        self.assertEqual(status, 200, raw)
        received = int(json.loads(raw)["counters"]["tokens_received"])
        self.assertGreater(received, counters.tokens_received)
        status, _, got = rest_json(s, "GET", "/v1/sessions/rest-a")
        self.assertEqual((status, int(got["counters"]["tokens_received"])), (200, received))
        status, _, listed = rest_json(s, "GET", "/v1/sessions?label_selector.suite=rest")
        self.assertEqual([x["session_id"] for x in listed["sessions"]], ["rest-a"])
        # Score and Generate: the gRPC answers, to the bit and to the token.
        status, _, score = rest_json(s, "POST", "/v1/sessions/rest-a:score", {"text": b64(PROMPT)})
        expected = self.stub.Score(pb.ScoreRequest(session_id="rest-a", text=PROMPT.encode()),
                                   timeout=60)
        self.assertEqual(status, 200, score)
        self.assertEqual(score["token_ids"], list(expected.token_ids))
        self.assertEqual(bits(score["logprobs"]), bits(expected.logprobs))
        status, headers, raw = rest(s, "POST", "/v1/sessions/rest-a:generate", {
            "prompt_text": b64(PROMPT), "max_tokens": 8, "temperature": 0})
        self.assertEqual(status, 200, raw)
        self.assertEqual(headers["Content-Type"], "text/event-stream")
        events = [json.loads(data) for data in parse_sse(raw.decode())]
        self.assertEqual(events[-1]["finish_reason"], "FINISH_REASON_LENGTH")
        text = b"".join(base64.b64decode(e["text"]) for e in events).decode()
        self.assertEqual(text, grpc_generate(self.stub, "rest-a", prompt_text=PROMPT,
                                             max_tokens=8)[0])
        # Checkpoint, fork, reset, restore over a session and into a new one.
        status, _, ckpt = rest_json(s, "POST", "/v1/sessions/rest-a:checkpoint",
                                    {"checkpoint_id": "rest-ck"})
        self.assertEqual((status, ckpt["checkpoint_id"]), (200, "rest-ck"), ckpt)
        status, _, fork = rest_json(s, "POST", "/v1/sessions/rest-a:fork",
                                    {"new_session_id": "rest-b"})
        self.assertEqual((status, fork["counters"]), (200, ckpt["counters"]), fork)
        status, _, reset = rest_json(s, "POST", "/v1/sessions/rest-b:reset")
        self.assertEqual((status, reset["counters"]["tokens_received"]), (200, "0"), reset)
        status, _, restored = rest_json(s, "POST", "/v1/sessions/rest-b:restore",
                                        {"checkpoint_id": "rest-ck"})
        self.assertEqual((status, restored["counters"]), (200, ckpt["counters"]), restored)
        status, _, restored = rest_json(s, "POST", "/v1/checkpoints/rest-ck:restore",
                                        {"new_session_id": "rest-c"})
        self.assertEqual((status, restored["session_id"]), (200, "rest-c"), restored)
        status, _, listed = rest_json(s, "GET", "/v1/checkpoints")
        self.assertIn("rest-ck", [c["checkpoint_id"] for c in listed["checkpoints"]])
        # Export as bytes (gRPC's, exactly), import them back under a chosen id and options:
        # the body streams into the call, so it may exceed --http_max_body_bytes (MAX_BODY).
        status, _, exported = rest(s, "GET", "/v1/checkpoints/rest-ck:export")
        self.assertEqual(status, 200)
        self.assertEqual(exported, b"".join(r.data for r in self.stub.ExportSession(
            pb.ExportSessionRequest(checkpoint_id="rest-ck"), timeout=60)))
        status, headers, live = rest(s, "GET", "/v1/sessions/rest-c:export")
        self.assertEqual((status, int(headers["Content-Length"])), (200, len(live)))
        self.assertGreater(len(exported), MAX_BODY)
        status, _, imported = rest_json(
            s, "POST", "/v1/sessions:import?session_id=rest-d&options.idle_ttl_seconds=120",
            raw=exported, content_type="application/octet-stream")
        self.assertEqual(status, 200, imported)
        self.assertEqual((imported["session_id"], imported["options"]["idle_ttl_seconds"]),
                         ("rest-d", "120"))
        self.assertEqual(imported["counters"], ckpt["counters"])
        # Deletes; then the session is gone.
        for sid in ("rest-a", "rest-b", "rest-c", "rest-d"):
            self.assertEqual(rest_json(s, "DELETE", "/v1/sessions/" + sid)[::2], (200, {}))
        self.assertEqual(rest_json(s, "DELETE", "/v1/checkpoints/rest-ck")[::2], (200, {}))
        status, _, body = rest_json(s, "GET", "/v1/sessions/rest-a")
        self.assertStatus(status, body, 404, 5, "NOT_FOUND", "rest-a")

    def test_ndjson_ingest_streams_a_body_several_times_the_limit(self):
        """An NDJSON :ingest feeds each line into the Ingest stream as it arrives: a body four
        times --http_max_body_bytes goes in one request (with a Content-Length, and chunked),
        every line answered; answers beyond the limit keep the latest; one line over the limit is
        one message too large (413)."""
        s = self.server
        self.assertEqual(rest_json(s, "POST", "/v1/sessions", {"session_id": "rest-big"})[0], 200)
        try:
            lines = 64
            pad = 4 * MAX_BODY // lines  # bytes per line: blanks inside each JSON object
            body = b"".join(b'{"token_ids": [%d]' % (5 + k % 50) + b" " * (pad - 24) + b"}\n"
                            for k in range(lines))
            self.assertGreaterEqual(len(body), 3 * MAX_BODY)
            path = os.path.join(self.tmp, "ingest.ndjson")
            with open(path, "wb") as f:
                f.write(body)
            for n, extra in enumerate(([], ["-H", "Transfer-Encoding: chunked"]), start=1):
                status, text = s.curl("/v1/sessions/rest-big:ingest", "-H",
                                      "Content-Type: application/x-ndjson", *extra,
                                      "--data-binary", "@" + path)
                self.assertEqual(status, 200, text[:2000])
                acks = [json.loads(line) for line in text.splitlines()]
                self.assertEqual([int(a["message_index"]) for a in acks], list(range(lines)))
                self.assertEqual(int(acks[-1]["stream_tokens"]), lines)
                got = self.stub.GetSession(pb.GetSessionRequest(session_id="rest-big"), timeout=30)
                self.assertEqual(got.counters.tokens_received, n * lines)
            # More answers than the limit holds: the first ones, then the latest, which
            # acknowledges every message (answers are cumulative).
            many = 400
            status, _, raw = rest(s, "POST", "/v1/sessions/rest-big:ingest",
                                  raw=b'{"token_ids": [7]}\n' * many)
            self.assertEqual(status, 200, raw[-2000:])
            self.assertLessEqual(len(raw), MAX_BODY + 1000)
            indexes = [int(json.loads(line)["message_index"]) for line in raw.splitlines()]
            self.assertLess(len(indexes), many)
            self.assertEqual(indexes[:-1], list(range(len(indexes) - 1)))
            self.assertEqual(indexes[-1], many - 1)
            self.assertEqual(int(json.loads(raw.splitlines()[-1])["stream_tokens"]), many)
            # One line over the limit: refused as a message too large, nothing applied.
            long_line = b'{"token_ids": [1]' + b" " * MAX_BODY + b"}\n"
            status, _, raw = rest(s, "POST", "/v1/sessions/rest-big:ingest", raw=long_line)
            self.assertStatus(status, json.loads(raw), 413, 8, "REQUEST_TOO_LARGE",
                              "line 1 of the body is longer than %d bytes" % MAX_BODY)
            got = self.stub.GetSession(pb.GetSessionRequest(session_id="rest-big"), timeout=30)
            self.assertEqual(got.counters.tokens_received, 2 * lines + many)
        finally:
            rest(s, "DELETE", "/v1/sessions/rest-big")

    def test_rest_server_routes_are_the_grpc_calls(self):
        status, _, info = rest_json(self.server, "GET", "/v1/serverInfo")
        expected = self.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        self.assertEqual(status, 200, info)
        self.assertEqual(info["model_fingerprint"], expected.model_fingerprint)
        self.assertEqual(int(info["vocab_size"]), expected.vocab_size)
        status, _, tokens = rest_json(self.server, "POST", "/v1/tokenize", {"text": b64(PROMPT)})
        self.assertEqual(tokens["token_ids"], list(self.stub.Tokenize(
            pb.TokenizeRequest(text=PROMPT.encode()), timeout=30).token_ids))
        status, _, text = rest_json(self.server, "POST", "/v1/detokenize", tokens)
        self.assertEqual(base64.b64decode(text["text"]), self.stub.Detokenize(
            pb.DetokenizeRequest(token_ids=tokens["token_ids"]), timeout=30).text)

    def test_rest_refusals_are_google_rpc_status_json(self):
        s = self.server
        status, _, body = rest_json(s, "POST", "/v1/sessions", raw=b"{not json")
        self.assertStatus(status, body, 400, 3, "INVALID_ARGUMENT",
                          "not a JSON tttserve.v1.CreateSessionRequest")
        status, _, body = rest_json(s, "POST", "/v1/sessions", {"sesion_id": "x"})
        self.assertStatus(status, body, 400, 3, "INVALID_ARGUMENT", "sesion_id")
        # rest_json_fuzzer's finding: a query value that decodes to bytes that are not UTF-8
        # threw out of the JSON printer and ended the server.
        status, _, body = rest_json(s, "GET", "/v1/sessions?label_selector.user=al%FFice")
        self.assertStatus(status, body, 400, 3, "INVALID_ARGUMENT", "not valid UTF-8")
        self.assertEqual(rest_json(s, "GET", "/v1/sessions")[0], 200)  # still serving
        status, _, body = rest_json(s, "POST", "/v1/sessions/no-such-session:score",
                                    {"token_ids": [1]})
        self.assertStatus(status, body, 404, 5, "NOT_FOUND", "no-such-session")
        self.assertEqual(rest_json(s, "POST", "/v1/sessions", {"session_id": "rest-e"})[0], 200)
        try:
            status, _, body = rest_json(s, "POST", "/v1/sessions/rest-e:generate",
                                        {"temperature": 1000})
            self.assertStatus(status, body, 400, 3, "INVALID_ARGUMENT", "temperature")
            status, _, body = rest_json(s, "POST", "/v1/sessions/rest-e:score",
                                        {"session_id": "rest-other"})
            self.assertStatus(status, body, 400, 3, "INVALID_ARGUMENT",
                              "leave it out of the body")
            status, _, body = rest_json(s, "PUT", "/v1/sessions/rest-e")
            self.assertStatus(status, body, 405, 12, "UNIMPLEMENTED", "takes GET or DELETE")
            # A failure after the first acknowledgement: 200, and the error as the last line.
            lines = b'{"token_ids": [1, 2]}\n{"token_ids": [99999]}\n'
            status, _, raw = rest(s, "POST", "/v1/sessions/rest-e:ingest", raw=lines)
            self.assertEqual(status, 200, raw)
            last = json.loads(raw.decode().splitlines()[-1])
            self.assertEqual(error_info(last["error"])["reason"], "TOKEN_OUT_OF_VOCAB")
            status, text = s.curl("/v1/sessions/rest-e:ingest", "-H", "Content-Type: text/plain",
                                  "--data-binary", "@" + self.big_body())
            self.assertStatus(status, json.loads(text), 413, 8, "REQUEST_TOO_LARGE",
                              "at most %d" % MAX_BODY)
        finally:
            rest(s, "DELETE", "/v1/sessions/rest-e")

    def big_body(self):
        path = os.path.join(self.tmp, "big.txt")
        with open(path, "w") as f:
            f.write("x" * (MAX_BODY + 1))
        return path


def sha256_hex(token):
    return hashlib.sha256(token.encode()).hexdigest()


class HttpAuthE2ETest(unittest.TestCase):
    """TLS and bearer tokens: the HTTP port serves HTTPS with the gRPC port's certificate, and
    the Authorization header reaches the gRPC service's own checks (tenants, scopes, quotas)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ttt-http-auth-e2e-")
        cls.ca = os.path.join(cls.tmp, "server.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-keyout",
                        os.path.join(cls.tmp, "server.key"), "-out", cls.ca, "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                       check=True, capture_output=True)
        tokens = os.path.join(cls.tmp, "tokens")
        with open(tokens, "w") as f:
            f.write("alice %s write\nalice %s read\nbob %s write\ncarol %s write\n" % (
                sha256_hex("alice-token"), sha256_hex("alice-read-token"),
                sha256_hex("bob-token"), sha256_hex("carol-token")))
        quotas = os.path.join(cls.tmp, "quotas")
        with open(quotas, "w") as f:
            f.write("bob ingest_tokens_per_s=1 ingest_burst=20\ncarol live_sessions=1\n")
        cls.server = Server(cls.tmp, ["--auth_tokens_file=" + tokens, "--quotas_file=" + quotas,
                                      "--tls_cert_file=" + cls.ca,
                                      "--tls_key_file=" + os.path.join(cls.tmp, "server.key")],
                            ca=cls.ca)
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def complete(self, token, body=None, headers=None):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + token
        return http(self.server, "POST", "/v1/completions",
                    body or {"prompt": PROMPT, "max_tokens": 4}, h)

    def test_missing_or_wrong_token_is_401(self):
        for token in (None, "wrong-token"):
            status, headers, body = self.complete(token)
            self.assertEqual(status, 401, body)
            self.assertEqual(body["error"]["code"], "UNAUTHENTICATED")
            self.assertEqual(body["error"]["type"], "authentication_error")
            self.assertIn("Bearer", headers["WWW-Authenticate"])
        status, _, body = http(self.server, "GET", "/v1/models")
        self.assertEqual(status, 401, body)

    def test_token_completes_and_probes_need_none(self):
        status, _, body = self.complete("alice-token")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["usage"]["completion_tokens"], 4)
        status, _, body = http(self.server, "GET", "/v1/models",
                               headers={"Authorization": "Bearer bob-token"})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.server.curl("/readyz")[0], 200)
        self.assertEqual(self.server.curl("/healthz")[0], 200)

    def test_tenants_and_scopes_are_the_grpc_rules(self):
        alice = (("authorization", "Bearer alice-token"),)
        sid = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=alice,
                                      timeout=30).session_id
        status, _, body = self.complete("bob-token", headers={"x-session-id": sid})
        self.assertEqual(status, 404, body)  # another tenant's session does not exist for bob
        self.assertEqual(body["error"]["code"], "NOT_FOUND")
        status, _, body = self.complete("alice-read-token", headers={"x-session-id": sid})
        self.assertEqual(status, 200, body)  # reading is allowed
        status, _, body = self.complete(
            "alice-read-token", {"prompt": PROMPT, "max_tokens": 4, "commit_prompt": True},
            {"x-session-id": sid})
        self.assertEqual(status, 403, body)  # committing writes: the token is read-only
        self.assertEqual(body["error"]["code"], "PERMISSION_DENIED")

    def test_rest_routes_take_the_same_tokens_and_tenants(self):
        status, headers, body = rest_json(self.server, "POST", "/v1/sessions", {})
        self.assertEqual((status, body["code"]), (401, 16), body)
        self.assertEqual(error_info(body)["reason"], "UNAUTHENTICATED")
        self.assertIn("Bearer", headers["WWW-Authenticate"])
        alice = {"Authorization": "Bearer alice-token"}
        status, _, body = rest_json(self.server, "POST", "/v1/sessions",
                                    {"session_id": "rest-alice"}, headers=alice)
        self.assertEqual((status, body["tenant"]), (200, "alice"), body)
        status, _, body = rest_json(self.server, "GET", "/v1/sessions/rest-alice",
                                    headers={"Authorization": "Bearer bob-token"})
        self.assertEqual((status, body["code"]), (404, 5), body)
        status, _, body = rest_json(self.server, "POST", "/v1/sessions/rest-alice:reset",
                                    headers={"Authorization": "Bearer alice-read-token"})
        self.assertEqual((status, body["code"]), (403, 7), body)
        self.assertEqual(rest(self.server, "DELETE", "/v1/sessions/rest-alice",
                              headers=alice)[0], 200)

    def test_plaintext_to_the_https_port_fails(self):
        with self.assertRaises(OSError):
            urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.server.http_port,
                                   timeout=10).read()

    def test_quotas_answer_429(self):
        carol = (("authorization", "Bearer carol-token"),)
        self.stub.CreateSession(pb.CreateSessionRequest(), metadata=carol, timeout=30)
        # A completion without a session needs a temporary one: over carol's live_sessions.
        status, _, body = self.complete("carol-token")
        self.assertEqual(status, 429, body)
        self.assertEqual(body["error"]["code"], "RESOURCE_EXHAUSTED")
        self.assertEqual(body["error"]["reason"], "QUOTA_EXCEEDED")  # the service's ErrorInfo
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertIn("live_sessions", body["error"]["message"])
        # bob's ingest rate: a burst of 20 tokens refilled at 1/s; two 15-token commits.
        bob = (("authorization", "Bearer bob-token"),)
        sid = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=bob,
                                      timeout=30).session_id
        commit = {"prompt": [5] * 15, "max_tokens": 1, "commit_prompt": True}
        status, _, body = self.complete("bob-token", commit, {"x-session-id": sid})
        self.assertEqual(status, 200, body)
        status, headers, body = self.complete("bob-token", commit, {"x-session-id": sid})
        self.assertEqual(status, 429, body)
        self.assertIn("ingest_tokens_per_s", body["error"]["message"])
        self.assertGreaterEqual(int(headers["Retry-After"]), 1)

    def test_client_that_leaves_a_stream_ends_its_calls(self):
        alice = (("authorization", "Bearer alice-token"),)
        sessions = lambda: len(self.stub.ListSessions(pb.ListSessionsRequest(), metadata=alice,
                                                      timeout=30).sessions)
        before = sessions()
        cancelled = 'tttserve_requests_total{code="CANCELLED",method="Generate"}'
        cancelled_before = self.server.metric(cancelled)
        request = json.dumps({"prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True,
                              "stream": True}).encode()
        with socket.create_connection(("localhost", self.server.http_port)) as raw:
            with self.server.ssl.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                            b"Authorization: Bearer alice-token\r\n"
                            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(request), request))
                head = b""
                while b"data: " not in head:
                    head += tls.recv(4096)
                self.assertIn(b" 200 ", head.split(b"\r\n")[0])
                self.assertEqual(sessions(), before + 1)  # the temporary session, mid-stream
        # Gone: the Generate is cancelled and the temporary session deleted.
        self.assertTrue(wait_until(lambda: sessions() == before, 60))
        # The server counts the call when its reactor ends, which may be a little after the
        # client's side of the call has finished: wait for it (bounded), then check it is one.
        self.assertTrue(wait_until(lambda: self.server.metric(cancelled) > cancelled_before, 30))
        self.assertEqual(self.server.metric(cancelled), cancelled_before + 1)

    def test_official_openai_node_client(self):
        if not ARGS.openai_node_modules:
            self.skipTest("npm was not found at configure time: the OpenAI Node client test "
                          "is skipped (install npm and reconfigure)")
        alice = (("authorization", "Bearer alice-token"),)
        sid = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=alice,
                                      timeout=30).session_id
        ingest(self.stub, sid, DOCUMENT, metadata=alice)
        expected_fresh = grpc_generate_fresh_as(self.stub, alice, PROMPT)
        expected_session, _ = grpc_generate(self.stub, sid, prompt_text=PROMPT, metadata=alice)
        out = subprocess.run(
            ["node", os.path.join(HERE, "openai_client_test.cjs"), ARGS.openai_node_modules,
             self.server.url("/v1"), "alice-token", os.path.basename(ARGS.model), PROMPT, sid],
            capture_output=True, timeout=180, env=dict(os.environ, NODE_EXTRA_CA_CERTS=self.ca))
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        got = json.loads(out.stdout)
        self.assertEqual(got["models"], [os.path.basename(ARGS.model)])
        self.assertEqual(got["completion"], expected_fresh)
        self.assertEqual(got["streamed"], expected_fresh)
        self.assertGreater(got["stream_chunks"], 1)
        self.assertEqual(got["with_session"], expected_session)
        self.assertEqual(got["error_status"], 404)
        self.assertEqual(got["unauthenticated_status"], 401)


class HttpShutdownE2ETest(unittest.TestCase):
    """SIGTERM while HTTP streams and requests are in flight: the server drains and exits 0 (gRPC
    1.51 crashed when the HTTP door started a call on the in-process channel of a server that
    was shutting down: http/internal/call_gate.h)."""

    def test_sigterm_mid_stream_drains_and_exits_cleanly(self):
        tmp = tempfile.mkdtemp(prefix="ttt-http-stop-e2e-")
        server = Server(tmp)
        try:
            stream = subprocess.Popen(
                ["curl", "-sS", "-N", server.url("/v1/completions"), "-d",
                 json.dumps({"prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True,
                             "stream": True})], stdout=subprocess.PIPE)
            self.assertTrue(stream.stdout.readline().startswith(b"data: {"))
            # Short completions, each a CreateSession, Generate and DeleteSession, keep coming.
            hammer = subprocess.Popen(
                ["bash", "-c", "for i in $(seq 200); do curl -s %s -d '%s' >/dev/null; done"
                 % (server.url("/v1/completions"), json.dumps({"prompt": "a", "max_tokens": 2}))])
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            self.assertEqual(server.proc.wait(timeout=60), 0, log_tail(server.log_path))
            rest = stream.communicate(timeout=60)[0].decode()
            self.assertTrue(rest.endswith("data: [DONE]\n\n"), rest[-300:])
            hammer.kill()
            hammer.wait()
            server.stop()
            self.assertIn("ttt-serve: stopped", log_tail(server.log_path, 5))
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)


def grpc_generate_fresh_as(stub, metadata, prompt):
    sid = stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata, timeout=30).session_id
    try:
        return grpc_generate(stub, sid, prompt_text=prompt, metadata=metadata)[0]
    finally:
        stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=metadata,
                           timeout=30)


if __name__ == "__main__":
    import grpc as _grpc
    grpc = _grpc
    ARGS, pb, pb_grpc, argv = parse_unittest_args("openai_node_modules")
    unittest.main(argv=argv, verbosity=2)
