"""Python client for ttt-serve (issue 25 item 4).

    from tttserve_client import Client
    client = Client("127.0.0.1:50051", token=None, tenant="acme")
    session = client.create_session("user-7.conv-1")
    session.ingest("a document ...", progress=print)     # str or token ids; resumes after failures
    print(session.generate_text("Q: ...", max_tokens=32))

Every call that names a session sends it as x-session-id (a proxy's routing key). Refusals
raise TttError with the server's google.rpc.ErrorInfo reason; UNAVAILABLE, a busy session
(ABORTED) and CANCELLED (a proxy's RST_STREAM) are retried with backoff, waiting at least the
server's RetryInfo delay.
"""
from tttserve_client.client import Client, Session, TttError

__all__ = ["Client", "Session", "TttError"]
