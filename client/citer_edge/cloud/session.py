"""The edge's connection to the cloud LLM: one Decode stream per conversation, delta sync, resync, backoff.

The decode loop asks ``CloudSession.decode(context, n)`` and gets LLM tokens or
``None``. ``None`` means "the cloud is not available right now": the loop goes
on with the SLM, and this module reconnects later with exponential backoff.
Only a wrong model pairing (tokenizer mismatch) is raised to the caller.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from citer_edge.cloud.audit import UploadAudit
from citer_edge.cloud.budget import CloudBudget
from citer_edge.cloud.channel import CloudTls, open_channel
from citer_edge.errors import CloudAuthError, TokenizerMismatchError
from citer_edge.sequences import common_prefix_len
from citer_protocol import REASON_KEY, SERVER_LEN_KEY, SESSION_KEY, SamplingSettings, pb, pb_grpc

log = logging.getLogger(__name__)

_END = object()
#: Status codes that mean "this stream is gone", not "this request is wrong". A proxy that resets a stream
#: (Envoy closing an idle one, or losing the replica behind it) sends RST_STREAM, which gRPC reports as INTERNAL.
_STREAM_BROKEN = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    None,
}
#: Reconnect fast after a server restart; gRPC's default first backoff is a full second.
#: Not ``grpc.min_reconnect_backoff_ms``: gRPC takes it as the least time a connection attempt is given
#: (MIN_CONNECT_TIMEOUT, 20 s by default), and at 100 ms no route slower than about 300 ms RTT could ever
#: connect. Our calls' own deadlines bound how long anyone waits for a connection.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    # Keepalive notices a dead peer or a NAT that dropped the connection between a chat's turns.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
#: An interactive call's deadline: this many seconds, plus time to prefill what it appends at no less than
#: PREFILL_ALLOWANCE_TOKENS_PER_S (a resync or a long prompt is allowed longer). A silent cloud then costs
#: one short stall, after which generation goes on locally.
DEFAULT_TIMEOUT_S = 1.5
PREFILL_ALLOWANCE_TOKENS_PER_S = 100.0
#: Server statuses that say "this request can never succeed", as opposed to "not now".
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}


@dataclass(frozen=True)
class CloudReply:
    tokens: list[int]
    logprobs: list[float]
    finished: bool
    #: Where the reply's tokens go: the context was kept up to here (a verify call that rejected a draft keeps
    #: less than it sent) and ``tokens`` follow.
    kept: int = 0
    accepted: int = 0  # drafts the LLM agreed with (verify calls)


@dataclass(frozen=True)
class CloudInfo:
    model_name: str
    tokenizer_fingerprint: str
    max_context: int
    max_request_tokens: int
    backend: str
    server_version: str
    vocab_size: int = 0  # 0: the server did not say
    features: tuple[str, ...] = ()  # optional protocol features: "verify", "span"


class _DecodeStream:
    """A Decode call driven request by request, with a per-request timeout.

    gRPC's sync API gives one deadline per call, but a conversation's stream
    lives for minutes; a reader thread turns it into request/response pairs
    that can each time out.
    """

    def __init__(self, stub: pb_grpc.LlmServiceStub, metadata: Sequence[tuple[str, str]]) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        self._responses: queue.Queue[object] = queue.Queue()
        self._call = stub.Decode(iter(self._requests.get, _END), metadata=metadata)
        threading.Thread(target=self._read, daemon=True, name="citer-decode-reader").start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
            self._responses.put(grpc.RpcError("stream ended"))
        except grpc.RpcError as error:
            self._responses.put(error)

    def request(self, message: pb.DecodeRequest, timeout_s: float) -> pb.DecodeResponse:
        self._requests.put(message)
        try:
            reply = self._responses.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"no reply from the cloud within {timeout_s:.1f} s") from None
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        self._requests.put(_END)
        self._call.cancel()


class CloudSession:
    """One conversation's view of the server: what it holds, and how to keep it in sync.

    A circuit breaker guards the decode loop: a failed or late call opens it
    (no cloud attempts; the loop stays on the SLM) for a backoff that doubles
    with each further failure, with jitter so that many devices do not retry
    in step. When it expires, the next real ``Decode`` is the probe (half-open):
    only its success closes the circuit. A request the server can never serve
    (beyond its window or request limit) stops routing for this conversation.
    """

    def __init__(
        self,
        address: str,
        slm_fingerprint: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (5.0, 120.0),  # first probe 2.5-5 s after a failure, then doubling
        auth_token: str | None = None,
        session_id: str | None = None,
        tls: CloudTls | None = None,
        budget: CloudBudget | None = None,
        audit: UploadAudit | None = None,
    ) -> None:
        self.address = address
        self.budget = budget  # cost and privacy: caps cloud tokens and calls (cloud/budget.py)
        self.audit = audit  # cost and privacy: records every upload before it is sent (cloud/audit.py)
        self.session_id = session_id or uuid.uuid4().hex
        self._slm_fingerprint = slm_fingerprint
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_min_s, self._backoff_max_s = backoff_s
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._tls = tls
        if tls is not None:
            tls.credentials()  # unreadable certificate files are a configuration error, raised now
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.LlmServiceStub | None = None
        self._stream: _DecodeStream | None = None
        self._server_tokens: list[int] = []  # what we believe the server holds for this session
        self._retry_at = 0.0
        self._backoff_s = self._backoff_min_s
        self._down = False
        self.info: CloudInfo | None = None
        self.resyncs = 0
        self.failures = 0
        self.last_error: str | None = None  # why the cloud was last marked down, for diagnostics
        self.routing_stopped: str | None = None  # why this conversation no longer goes to the cloud, if it doesn't
        self._jitter = random.Random()
        self.calls = 0
        self.tokens_sent = 0  # what the server had to prefill for us, resyncs included
        self.tokens_received = 0  # LLM decode steps spent on us

    # -- availability -----------------------------------------------------

    @property
    def available(self) -> bool:
        """False while backing off after a failure; the loop then stays on the SLM."""
        return not self._down or time.monotonic() >= self._retry_at

    def connect(self, timeout_s: float | None = None) -> bool:
        """Open the channel and check the pairing; False (with one warning) when the cloud is unreachable.

        ``timeout_s`` bounds the check (default ``connect_timeout_s``). Raises TokenizerMismatchError when
        the server's LLM cannot be paired with this SLM, and CloudAuthError when it refuses the token: both
        are configuration errors, not outages.
        """
        if self._stub is not None and self.info is not None:
            return True
        timeout_s = self._connect_timeout_s if timeout_s is None else timeout_s
        try:
            self._channel = open_channel(self.address, self._tls, _CHANNEL_OPTIONS)
            self._stub = pb_grpc.LlmServiceStub(self._channel)
            reply = self._stub.GetInfo(pb.InfoRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            self._drop_channel()
            if _code(error) == grpc.StatusCode.UNAUTHENTICATED:
                details = error.details()
                raise CloudAuthError(f"the cloud at {self.address} refused our credentials: {details}") from None
            self._mark_down(f"cannot reach the cloud at {self.address} ({_describe(error)})")
            return False
        if reply.tokenizer_fingerprint != self._slm_fingerprint:
            self._drop_channel()
            raise TokenizerMismatchError(
                f"the cloud model {reply.model_name!r} at {self.address} uses a different tokenizer than the "
                f"SLM ({reply.tokenizer_fingerprint[:19]}… vs {self._slm_fingerprint[:19]}…); "
                "pair models that share a vocabulary"
            )
        self.info = CloudInfo(
            model_name=reply.model_name,
            tokenizer_fingerprint=reply.tokenizer_fingerprint,
            max_context=reply.max_context,
            max_request_tokens=reply.max_request_tokens,
            backend=reply.backend,
            server_version=reply.server_version,
            vocab_size=reply.vocab_size,
            features=tuple(reply.features),
        )
        return True

    def supports(self, feature: str) -> bool | None:
        """Whether the server implements an optional protocol feature; None while it has not been reached."""
        return None if self.info is None else feature in self.info.features

    # -- decoding ---------------------------------------------------------

    def decode(
        self,
        context: Sequence[int],
        max_tokens: int,
        sampling: SamplingSettings,
        verify_from: int = 0,
        span_below: float = 0.0,
    ) -> CloudReply | None:
        """LLM tokens that continue ``context``, or None when the cloud is unavailable.

        Sends only the tokens the server does not hold yet. If the server lost
        the session it says so, and the full context is sent once more.
        ``verify_from`` > 0 asks the server to judge ``context[verify_from:]``
        (the SLM's drafts) against its greedy choices; the reply's ``kept``
        says how much of ``context`` survived. ``span_below`` lets the server
        continue while it is unsure (see DecodeRequest). A server without the
        feature stops routing for this conversation, with one warning.
        """
        if self.budget is not None and self.routing_stopped is None:  # cost and privacy: a spent budget stops here
            max_tokens, spent = self.budget.allowance(max_tokens)
            if spent:
                return self._stop_routing(spent)
        if self.routing_stopped or not self.available:
            return None
        # The probe after a failure reconnects here, while the user waits for this token: it gets a call's
        # deadline, not the longer connect timeout allowed before a generation starts.
        if not self.connect(min(self._timeout_s, self._connect_timeout_s) if self._down else None):
            return None
        assert self.info is not None
        missing = [name for name, used in (("verify", verify_from), ("span", span_below)) if used]
        missing = [name for name in missing if not self.supports(name)]
        if missing:
            return self._stop_routing(
                f"the cloud at {self.address} ({self.info.backend} {self.info.server_version}) does not support "
                f"{' and '.join(missing)} requests"
            )
        if self.info.max_context and len(context) + max_tokens > self.info.max_context:
            return self._stop_routing(
                f"the conversation ({len(context)} tokens) no longer fits the cloud model's window "
                f"of {self.info.max_context}"
            )
        resynced = reopened = False
        while True:
            known_len = common_prefix_len(self._server_tokens, context)
            if verify_from:
                # Drafts the server already holds (a regenerated answer) must still be sent to be judged.
                known_len = min(known_len, verify_from)
            if self.info.max_request_tokens and len(context) - known_len + max_tokens > self.info.max_request_tokens:
                return self._stop_routing(
                    f"{len(context) - known_len} tokens to send exceed the cloud's limit of "
                    f"{self.info.max_request_tokens} per request"
                )
            request = pb.DecodeRequest(
                session_id=self.session_id,
                known_len=known_len,
                append=list(context[known_len:]),
                max_tokens=max_tokens,
                sampling=pb.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed),
                verify_from=verify_from,
                span_below=span_below,
            )
            stream_was_open = self._stream is not None
            if self.audit is not None:  # cost and privacy: recorded before sending, kept even if the call fails
                kind = "resync" if resynced else "retry" if reopened else "sync"
                self.audit.record(self.address, self.session_id, known_len, request.append, request.ByteSize(), kind)
            try:
                reply = self._open_stream().request(request, self._deadline_s(len(request.append)))
            except grpc.RpcError as error:
                self._close_stream()
                code = _code(error)
                if code == grpc.StatusCode.FAILED_PRECONDITION and not resynced:
                    # The server restarted or evicted us: start the session over with the full context.
                    resynced = True
                    self._server_tokens = []
                    self.resyncs += 1
                    log.info("cloud lost the session (%s); resending the full context", _reason(error))
                    continue
                if code in _PERMANENT:
                    return self._stop_routing(f"the cloud refused the request ({_describe(error)})")
                if stream_was_open and not reopened and code in _STREAM_BROKEN:
                    # A long-lived stream died (server restart, idle proxy): try one fresh stream first.
                    reopened = True
                    continue
                self._mark_down(f"cloud request failed ({_describe(error)})")
                return None
            except TimeoutError as error:
                self._close_stream()
                self._mark_down(str(error))
                return None
            except BaseException:
                # Interrupted mid-request (Ctrl-C): its reply may still arrive, so this stream can no
                # longer pair requests with replies. The next call opens a fresh one; known_len keeps
                # the server consistent whether or not it processed the request.
                self._close_stream()
                raise
            problem = self._reply_problem(reply, len(context), max_tokens, verify_from)
            if problem:
                # Never let a broken or hostile server's ids reach the SLM; its state is unknown now.
                self._close_stream()
                self._server_tokens = []
                self._mark_down(f"the cloud at {self.address} sent an invalid reply ({problem})")
                return None
            rejected = verify_from and reply.accepted < len(context) - verify_from
            kept = verify_from + reply.accepted if rejected else len(context)
            self._server_tokens = list(context[:kept]) + list(reply.tokens)
            self.calls += 1
            if self.budget is not None:  # cost and privacy
                self.budget.charge(len(reply.tokens))
            self.tokens_sent += len(request.append)
            self.tokens_received += len(reply.tokens)
            if self._down:
                log.info("cloud at %s is back", self.address)
            self._down = False
            self._backoff_s = self._backoff_min_s
            return CloudReply(
                tokens=list(reply.tokens),
                logprobs=list(reply.logprobs),
                finished=reply.finished,
                kept=kept,
                accepted=reply.accepted if verify_from else 0,
            )

    def _reply_problem(
        self, reply: pb.DecodeResponse, context_len: int, max_tokens: int, verify_from: int = 0
    ) -> str | None:
        """What is wrong with a reply, or None: token count, ids, log-probs and the new length must add up."""
        tokens = list(reply.tokens)
        if verify_from:
            drafts = context_len - verify_from
            if not reply.verified:
                return "drafts sent for verification came back unverified"
            if reply.accepted > drafts:
                return f"{reply.accepted} drafts accepted of {drafts} sent"
            if reply.accepted < drafts:  # a rejected draft: the LLM's own token replaces it
                if not tokens:
                    return "a draft was rejected but no replacement token came back"
                if reply.new_len != verify_from + reply.accepted + len(tokens):
                    return f"new_len {reply.new_len} != {verify_from} + {reply.accepted} accepted + {len(tokens)}"
                max_tokens = max(max_tokens, 1)
                context_len = verify_from + reply.accepted
        if len(tokens) > max_tokens:
            return f"{len(tokens)} tokens for {max_tokens} asked"
        vocab = self.info.vocab_size if self.info is not None else 0
        bad = next((t for t in tokens if t < 0 or (vocab and t >= vocab)), None)
        if bad is not None:
            return f"token id {bad} outside the vocabulary of {vocab}"
        if len(reply.logprobs) != len(tokens):
            return f"{len(reply.logprobs)} log-probs for {len(tokens)} tokens"
        if reply.new_len != context_len + len(tokens):
            return f"new_len {reply.new_len} != {context_len} sent + {len(tokens)} produced"
        return None

    def close(self) -> None:
        """End the stream and free the server's session (best effort)."""
        self._close_stream()
        if self._stub is not None:
            try:
                self._stub.CloseSession(
                    pb.CloseSessionRequest(session_id=self.session_id), timeout=2.0, metadata=self._session_metadata()
                )
            except grpc.RpcError:
                pass
        self._drop_channel()

    # -- internals --------------------------------------------------------

    def _open_stream(self) -> _DecodeStream:
        if self._stream is None:
            assert self._stub is not None
            self._stream = _DecodeStream(self._stub, self._session_metadata())
        return self._stream

    def _session_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for the session's own calls: the session header lets a balancer keep them on one replica."""
        return (*self._metadata, (SESSION_KEY, session_header_value(self.session_id)))

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _drop_channel(self) -> None:
        self._close_stream()
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None
        self.info = None

    def start_over(self) -> None:
        """A new conversation on this session: routing is allowed again (the next call re-syncs by prefix)."""
        self.routing_stopped = None

    @property
    def circuit(self) -> str:
        """``closed`` (calls go out), ``open`` (backing off) or ``half-open`` (the next Decode is the probe)."""
        if not self._down:
            return "closed"
        return "half-open" if time.monotonic() >= self._retry_at else "open"

    @property
    def retry_in_s(self) -> float:
        """Seconds until the open circuit lets a probe through (0 when closed or half-open)."""
        return max(0.0, self._retry_at - time.monotonic()) if self._down else 0.0

    def _deadline_s(self, n_append: int) -> float:
        return self._timeout_s + n_append / PREFILL_ALLOWANCE_TOKENS_PER_S

    def _mark_down(self, why: str) -> None:
        """Open the circuit: the first failure is news (one warning), repeated ones are not (debug)."""
        self.failures += 1
        self.last_error = why
        if not self._down:
            log.warning("%s; continuing on the local model and retrying in the background", why)
        else:
            self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        delay = self._backoff_s * (0.5 + 0.5 * self._jitter.random())  # "equal jitter": half fixed, half random
        log.debug("%s; circuit open, next probe in %.1f s", why, delay)
        self._down = True
        self._retry_at = time.monotonic() + delay
        self._drop_channel()

    def _stop_routing(self, why: str) -> None:
        """This conversation can no longer be served by the cloud: say so once and stay local."""
        if self.routing_stopped is None:
            log.warning("%s; this conversation continues on the local model", why)
            self.routing_stopped = why
        return None


def session_header_value(session_id: str) -> str:
    """The ``citer-session`` value: the id itself, or its SHA-256 where gRPC metadata cannot carry it.

    gRPC refuses a header value that is not printable ASCII ("Invalid metadata"), and a caller may name a
    session anything; the balancer only needs a key that is the same on every call of the session.
    """
    if session_id.isascii() and session_id.isprintable():
        return session_id
    return hashlib.sha256(session_id.encode()).hexdigest()


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    return error.code() if hasattr(error, "code") else None


def _reason(error: grpc.RpcError) -> str:
    metadata = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    return f"{metadata.get(REASON_KEY, 'unknown')}, server holds {metadata.get(SERVER_LEN_KEY, '?')} tokens"


def _describe(error: grpc.RpcError) -> str:
    if hasattr(error, "code") and hasattr(error, "details"):
        return f"{error.code().name}: {error.details()}"
    return str(error)
