"""A notebook-style tour of the Python client (clients/python), cell by cell.

Install with Debian's Python (its python3-grpcio, python3-protobuf and python3-grpc-tools
provide what the package needs; the build generates the stubs from proto/):
    /usr/bin/python3 -m pip install --no-build-isolation --no-deps ./clients/python
Run against a server with a tokenizer, e.g. the shipped model:
    build/server/ttt-serve --model=models/ttt-brown --listen=127.0.0.1:50051 &
    /usr/bin/python3 docs/python_client_example.py 127.0.0.1:50051
"""
import sys

from tttserve_client import Client, TttError

# %% Connect. token= and tls=True/root_certificates= for a secured server; tenant= picks the
# tenant when the server has no authentication.
client = Client(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051", tenant="demo")
info = client.server_info()
print("model", info.model_type, "vocab", info.vocab_size,
      "unicode", info.tokenizer_info.unicode_version)

# %% A session with an id of our choosing (a proxy routes every call of it by x-session-id).
try:
    client.session("demo-notes").delete()
except TttError as e:
    assert e.reason == "NOT_FOUND", e
notes = client.create_session("demo-notes")

# %% Read a document into it: its fast weights adapt as the chunks complete. Text is tokenized
# by the server; a failure mid-stream resumes from the session's position.
document = " ".join(["The committee met on Tuesday and approved the new budget."] * 20)
counters = notes.ingest(document, progress=lambda r: print("acknowledged", r.stream_tokens))
print("tokens received", counters.tokens_received, "chunks applied", counters.chunks_applied)

# %% Ask it something: generation runs on a copy, the session is unchanged.
print(notes.generate_text(" The committee", max_tokens=16, temperature=0.0))

# %% How likely is a continuation now?
print("mean NLL", notes.score(" The committee met on Tuesday.").mean_nll)

# %% Errors carry a reason a program can branch on, and when to retry.
try:
    notes.ingest([info.vocab_size + 1])
except TttError as e:
    print(e.code.name, e.reason, e.metadata, e.retry_delay)

notes.delete()
client.close()
