"""Client, Session and TttError: see the package docstring."""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from tttserve.v1 import ttt_service_pb2 as pb
from tttserve.v1 import ttt_service_pb2_grpc as pb_grpc
from tttserve_client._rpc.google.rpc import error_details_pb2, status_pb2

T = TypeVar("T")
Text = Union[str, bytes]
Tokens = Sequence[int]

# Codes worth retrying: the server or its proxy is going away or restarting (UNAVAILABLE), a
# proxy reset the stream (CANCELLED: the client itself never cancels), another writer holds the
# session (ABORTED, reason SESSION_BUSY).
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED)


class TttError(Exception):
    """A refused call: its gRPC code, the server's message, and its google.rpc details (reason,
    domain and metadata from ErrorInfo; retry_delay in seconds from RetryInfo, or None)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: Optional[str] = None,
                 metadata: Optional[Dict[str, str]] = None, retry_delay: Optional[float] = None):
        super().__init__("%s%s: %s" % (code.name, " [%s]" % reason if reason else "", message))
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.retry_delay = retry_delay

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "TttError":
        reason, metadata, delay = None, {}, None
        trailers = dict(error.trailing_metadata() or ())
        raw = trailers.get("grpc-status-details-bin")
        if raw:
            status = status_pb2.Status.FromString(raw)
            for detail in status.details:
                info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
                elif detail.Unpack(retry):
                    delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        return cls(error.code(), error.details() or "", reason, metadata, delay)

    @property
    def retryable(self) -> bool:
        return self.code in _RETRYABLE


class Client:
    """A connection to one ttt-serve (or its proxy). Thread-safe, as gRPC channels are.

    tls: use TLS (root_certificates: PEM of the CA, None for the system's); token: bearer token
    (sent as `authorization`); tenant: x-tenant-id; max_retries / backoff_s / max_backoff_s:
    retries of retryable failures, waiting max(RetryInfo's delay, min(max_backoff_s,
    backoff_s * 2**attempt)) before each; channel_options: gRPC channel arguments (e.g.
    ("grpc.max_reconnect_backoff_ms", 1000) to reconnect sooner after a restart).
    """

    def __init__(self, address: str, *, tls: bool = False,
                 root_certificates: Optional[bytes] = None, token: Optional[str] = None,
                 tenant: Optional[str] = None, timeout_s: float = 60.0, max_retries: int = 8,
                 backoff_s: float = 0.2, max_backoff_s: float = 10.0,
                 channel_options: Sequence[Tuple[str, int]] = ()):
        if tls:
            self._channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=root_certificates),
                options=list(channel_options))
        else:
            self._channel = grpc.insecure_channel(address, options=list(channel_options))
        self._stub = pb_grpc.TttServiceStub(self._channel)
        self._metadata: List[Tuple[str, str]] = []
        if token:
            self._metadata.append(("authorization", "Bearer " + token))
        if tenant:
            self._metadata.append(("x-tenant-id", tenant))
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def metadata(self, session_id: str = "") -> List[Tuple[str, str]]:
        return self._metadata + ([("x-session-id", session_id)] if session_id else [])

    def call(self, attempt: Callable[[], T]) -> T:
        """Runs attempt(), retrying retryable failures with backoff; raises TttError."""
        for n in range(self.max_retries + 1):
            try:
                return attempt()
            except grpc.RpcError as e:
                error = TttError.from_rpc_error(e)
                if not error.retryable or n == self.max_retries:
                    raise error from None
                backoff = min(self.max_backoff_s, self.backoff_s * (2 ** n))
                time.sleep(max(error.retry_delay or 0.0, backoff))
        raise AssertionError("unreachable")

    def server_info(self) -> pb.ServerInfo:
        return self.call(lambda: self._stub.GetServerInfo(
            pb.GetServerInfoRequest(), metadata=self.metadata(), timeout=self.timeout_s))

    def create_session(self, session_id: str = "", *, reset_at_document_end: bool = False,
                       fade_at_document_end: float = 0.0,
                       labels: Optional[Dict[str, str]] = None,
                       idle_ttl_seconds: int = 0) -> "Session":
        options = pb.SessionOptions(reset_at_document_end=reset_at_document_end,
                                    fade_at_document_end=fade_at_document_end,
                                    labels=labels or {}, idle_ttl_seconds=idle_ttl_seconds)
        s = self.call(lambda: self._stub.CreateSession(
            pb.CreateSessionRequest(session_id=session_id, options=options),
            metadata=self.metadata(session_id), timeout=self.timeout_s))
        return Session(self, s.session_id)

    def session(self, session_id: str) -> "Session":
        """A handle on an existing session (nothing is sent)."""
        return Session(self, session_id)

    def tokenize(self, text: Text, *, parse_special_tokens: bool = False,
                 add_bos: Optional[bool] = None) -> List[int]:
        options = pb.TextOptions(parse_special_tokens=parse_special_tokens)
        if add_bos is not None:
            options.add_bos = add_bos
        r = self.call(lambda: self._stub.Tokenize(
            pb.TokenizeRequest(text=_utf8(text), text_options=options),
            metadata=self.metadata(), timeout=self.timeout_s))
        return list(r.token_ids)

    def detokenize(self, token_ids: Tokens) -> str:
        r = self.call(lambda: self._stub.Detokenize(
            pb.DetokenizeRequest(token_ids=list(token_ids)), metadata=self.metadata(),
            timeout=self.timeout_s))
        return r.text.decode("utf-8")

    @property
    def stub(self) -> pb_grpc.TttServiceStub:
        """The generated stub, for what this class does not wrap."""
        return self._stub


class Session:
    """One session on the server. Calls send its id as x-session-id."""

    def __init__(self, client: Client, session_id: str):
        self.client = client
        self.id = session_id

    def info(self) -> pb.Session:
        return self.client.call(lambda: self.client.stub.GetSession(
            pb.GetSessionRequest(session_id=self.id), metadata=self.client.metadata(self.id),
            timeout=self.client.timeout_s))

    def delete(self) -> None:
        self.client.call(lambda: self.client.stub.DeleteSession(
            pb.DeleteSessionRequest(session_id=self.id), metadata=self.client.metadata(self.id),
            timeout=self.client.timeout_s))

    def ingest(self, data: Union[Text, Tokens], *, piece_tokens: int = 512,
               end_of_document: bool = False, parse_special_tokens: bool = False,
               progress: Optional[Callable[[pb.IngestResponse], None]] = None
               ) -> pb.SessionCounters:
        """Streams text (tokenized by the server's Tokenize first, so that the stream can resume
        at an exact token) or token ids into the session in messages of piece_tokens ids;
        progress(response) runs for each acknowledged message. After a retryable failure the
        stream resumes from the session's tokens_received (expected_tokens_received makes the
        resend exact: nothing is applied twice or skipped). Returns the final counters."""
        start = self.info().counters
        if isinstance(data, (str, bytes)):
            # bos only where the text starts the session's context, as Ingest would put it.
            ids = self.client.tokenize(data, parse_special_tokens=parse_special_tokens,
                                       add_bos=None if start.position == 0 else False)
        else:
            ids = list(data)
        base = start.tokens_received
        attempts = [0]

        def attempt() -> pb.SessionCounters:
            # Where the session stands now: everything acknowledged (or applied unacknowledged
            # before a failure) is not sent again.
            now = self.info().counters if attempts[0] else start
            attempts[0] += 1
            have = now.tokens_received
            done = have - base
            if done < 0 or done > len(ids):
                raise TttError(grpc.StatusCode.FAILED_PRECONDITION,
                               "session %s changed under this ingest (tokens_received %d, "
                               "expected %d..%d)" % (self.id, have, base, base + len(ids)))
            if ids and done == len(ids):
                return now  # all applied (end_of_document rode on the last message)

            def requests() -> Iterator[pb.IngestRequest]:
                pieces = [ids[i:i + piece_tokens] for i in range(done, len(ids), piece_tokens)]
                pieces = pieces or [[]]
                for k, piece in enumerate(pieces):
                    req = pb.IngestRequest(token_ids=piece)
                    if k == 0:
                        req.session_id = self.id
                        req.expected_tokens_received = have
                    if k == len(pieces) - 1:
                        req.end_of_document = end_of_document
                        req.flush = True
                    yield req

            counters = None
            for r in self.client.stub.Ingest(requests(), metadata=self.client.metadata(self.id),
                                             timeout=self.client.timeout_s):
                counters = r.counters
                if progress:
                    progress(r)
            return counters if counters is not None else self.info().counters

        return self.client.call(attempt)

    def generate(self, prompt: Union[Text, Tokens, None] = None, *, max_tokens: int = 64,
                 temperature: Optional[float] = None, top_p: Optional[float] = None,
                 top_k: int = 0, seed: int = 0, stop: Sequence[str] = (), commit: bool = False,
                 ignore_eos: bool = False, parse_special_tokens: bool = False
                 ) -> Iterator[pb.GenerateResponse]:
        """Streams Generate's responses (one per token, then the final one). Not retried once a
        token has arrived (the caller decides); retried before that."""
        req = pb.GenerateRequest(session_id=self.id, max_tokens=max_tokens, top_k=top_k,
                                 seed=seed, stop=list(stop), commit=commit,
                                 ignore_eos=ignore_eos,
                                 text_options=pb.TextOptions(
                                     parse_special_tokens=parse_special_tokens))
        if isinstance(prompt, (str, bytes)):
            req.prompt_text = _utf8(prompt)
        elif prompt is not None:
            req.prompt_token_ids.extend(prompt)
        if temperature is not None:
            req.temperature = temperature
        if top_p is not None:
            req.top_p = top_p
        stream = self.client.call(lambda: _first_and_rest(self.client.stub.Generate(
            req, metadata=self.client.metadata(self.id), timeout=self.client.timeout_s)))
        try:
            yield from stream
        except grpc.RpcError as e:
            raise TttError.from_rpc_error(e) from None

    def generate_text(self, prompt: Union[Text, Tokens, None] = None, **kwargs) -> str:
        return b"".join(r.text for r in self.generate(prompt, **kwargs)).decode("utf-8")

    def score(self, continuation: Union[Text, Tokens]) -> pb.ScoreResponse:
        req = pb.ScoreRequest(session_id=self.id)
        if isinstance(continuation, (str, bytes)):
            req.text = _utf8(continuation)
        else:
            req.token_ids.extend(continuation)
        return self.client.call(lambda: self.client.stub.Score(
            req, metadata=self.client.metadata(self.id), timeout=self.client.timeout_s))


def _utf8(text: Text) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


def _first_and_rest(responses: Iterator[T]) -> Iterator[T]:
    """Reads the first response now (so that a refusal raises inside Client.call's retries) and
    returns an iterator over all of them."""
    first = next(responses, None)

    def rest() -> Iterator[T]:
        if first is not None:
            yield first
        yield from responses

    return rest()
