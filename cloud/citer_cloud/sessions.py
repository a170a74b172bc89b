"""Sessions: what the server holds for each conversation, and the rules of delta sync.

A session is a token sequence in one backend slot. A request names how much of
it the client believes the server holds (``known_len``) and what to append; the
server evaluates only the appended tokens. Every check runs before any state
changes, so a rejected request leaves its session exactly as it was.
"""

from __future__ import annotations

import enum
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from citer_cloud.backend import Backend, KvCacheFull
from citer_protocol import SamplingSettings, sample_token

log = logging.getLogger(__name__)

MAX_SESSION_ID_LEN = 128
_EVICTED_MEMORY = 4096  # evicted ids remembered, to tell "evicted" from "unknown"


class ErrorKind(enum.Enum):
    """The gRPC status a rejected request maps to (kept free of grpc so this module tests alone)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"


class RequestError(Exception):
    """A request the server refuses; ``reason``/``server_len`` are set for sync failures."""

    def __init__(self, kind: ErrorKind, message: str, reason: str = "", server_len: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.server_len = server_len


@dataclass
class Session:
    session_id: str
    slot: int
    tokens: list[int] = field(default_factory=list)  # everything the server holds, in order
    n_evaluated: int = 0  # prefix of ``tokens`` that is in the KV cache
    logits: np.ndarray | None = None  # next-token logits after tokens[:n_evaluated]
    rng: np.random.Generator | None = None


@dataclass(frozen=True)
class DecodeResult:
    tokens: list[int]
    logprobs: list[float]
    new_len: int
    finished: bool


@dataclass
class ServerStats:
    tokens_prefilled: int = 0
    tokens_generated: int = 0
    forward_passes: int = 0
    sessions_created: int = 0
    sessions_evicted: int = 0
    decode_requests: int = 0
    live_sessions: int = 0
    kv_tokens_used: int = 0
    kv_tokens_capacity: int = 0


class SessionManager:
    """Owns every session of one backend: validation, delta sync, sampling and LRU eviction."""

    def __init__(self, backend: Backend, max_request_tokens: int = 4096) -> None:
        self.backend = backend
        self.max_request_tokens = max_request_tokens
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._free_slots = list(range(backend.info.n_slots - 1, -1, -1))
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._stats = ServerStats(kv_tokens_capacity=backend.info.kv_capacity)
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------

    def decode(
        self,
        session_id: str,
        known_len: int,
        append: Sequence[int],
        max_tokens: int,
        sampling: SamplingSettings,
    ) -> DecodeResult:
        """Sync ``append`` after the first ``known_len`` tokens, then produce up to ``max_tokens``."""
        with self._lock:
            self._validate(session_id, known_len, append, max_tokens)
            session = self._sessions.get(session_id)
            if session is None:
                if known_len > 0:
                    reason = "SESSION_EVICTED" if session_id in self._evicted else "SESSION_UNKNOWN"
                    raise RequestError(
                        ErrorKind.FAILED_PRECONDITION,
                        f"session {session_id!r} is not on this server ({reason}); resend the full context",
                        reason=reason,
                    )
                session = self._create(session_id)
            elif known_len > len(session.tokens):
                raise RequestError(
                    ErrorKind.FAILED_PRECONDITION,
                    f"known_len {known_len} is ahead of the {len(session.tokens)} tokens the server holds",
                    reason="KNOWN_LEN_AHEAD",
                    server_len=len(session.tokens),
                )
            self._stats.decode_requests += 1
            self._sessions.move_to_end(session_id)
            self._cut(session, known_len)
            if append:
                self._extend(session, list(append), prefill=True)
            return self._produce(session, max_tokens, sampling)

    def generate(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingSettings) -> Iterator[DecodeResult]:
        """A whole LLM-only completion, one token per yielded result (the cloud-only baseline)."""
        session_id = f"_generate-{uuid.uuid4().hex}"
        if not prompt:
            raise RequestError(ErrorKind.INVALID_ARGUMENT, "prompt is empty")
        try:
            result = self.decode(session_id, 0, prompt, min(1, max_tokens), sampling)
            yield result
            for _ in range(max_tokens - 1):
                if result.finished:
                    break
                result = self.decode(session_id, result.new_len, [], 1, sampling)
                yield result
        finally:
            self.close(session_id)

    def close(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                return False
            self._release(session)
            return True

    def stats(self) -> ServerStats:
        with self._lock:
            self._stats.live_sessions = len(self._sessions)
            self._stats.kv_tokens_used = sum(s.n_evaluated for s in self._sessions.values())
            return ServerStats(**vars(self._stats))

    def session_length(self, session_id: str) -> int | None:
        with self._lock:
            session = self._sessions.get(session_id)
            return None if session is None else len(session.tokens)

    # -- validation (no state changes) ------------------------------------

    def _validate(self, session_id: str, known_len: int, append: Sequence[int], max_tokens: int) -> None:
        info = self.backend.info
        if not session_id or len(session_id) > MAX_SESSION_ID_LEN:
            raise RequestError(ErrorKind.INVALID_ARGUMENT, f"session_id must be 1..{MAX_SESSION_ID_LEN} characters")
        if not append and max_tokens == 0:
            raise RequestError(ErrorKind.INVALID_ARGUMENT, "empty request: nothing to append and max_tokens is 0")
        if known_len == 0 and not append:
            raise RequestError(ErrorKind.INVALID_ARGUMENT, "empty context: append at least one token to start from")
        if len(append) + max_tokens > self.max_request_tokens:
            raise RequestError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"request too large: {len(append)} appended + {max_tokens} to produce exceeds "
                f"max_request_tokens={self.max_request_tokens}",
            )
        bad = next(((i, t) for i, t in enumerate(append) if not 0 <= t < info.vocab_size), None)
        if bad is not None:
            raise RequestError(
                ErrorKind.INVALID_ARGUMENT,
                f"token id {bad[1]} at append[{bad[0]}] is outside the vocabulary (0..{info.vocab_size - 1})",
            )
        if known_len + len(append) + max_tokens > info.max_context:
            raise RequestError(
                ErrorKind.OUT_OF_RANGE,
                f"context would reach {known_len + len(append) + max_tokens} tokens, beyond the "
                f"model's window of {info.max_context}",
            )

    # -- state changes ----------------------------------------------------

    def _create(self, session_id: str) -> Session:
        if not self._free_slots:
            self._evict_lru(keep=None)
        session = Session(session_id=session_id, slot=self._free_slots.pop())
        self._sessions[session_id] = session
        self._evicted.pop(session_id, None)
        self._stats.sessions_created += 1
        return session

    def _cut(self, session: Session, length: int) -> None:
        """Roll the session back to ``length`` tokens (a lost response or a client rollback)."""
        if length < len(session.tokens):
            del session.tokens[length:]
        if length < session.n_evaluated:
            self.backend.truncate(session.slot, length)
            session.n_evaluated = length
            session.logits = None

    def _extend(self, session: Session, tokens: list[int], prefill: bool) -> None:
        """Evaluate ``tokens`` after the session's cached prefix, evicting other sessions for room."""
        pending = session.tokens[session.n_evaluated :] + tokens  # lazily held LLM tokens go first
        while True:
            try:
                logits = self.backend.evaluate(session.slot, session.n_evaluated, pending)
                break
            except KvCacheFull:
                if not self._evict_lru(keep=session.session_id):
                    raise RequestError(
                        ErrorKind.RESOURCE_EXHAUSTED,
                        f"KV cache full: {len(pending)} tokens do not fit even with every other session evicted",
                    ) from None
        session.tokens.extend(tokens)
        session.n_evaluated = len(session.tokens)
        session.logits = logits
        self._stats.forward_passes += 1
        if prefill:
            self._stats.tokens_prefilled += len(tokens)

    def _produce(self, session: Session, max_tokens: int, sampling: SamplingSettings) -> DecodeResult:
        produced: list[int] = []
        logprobs: list[float] = []
        finished = False
        if session.rng is None:
            session.rng = np.random.default_rng(sampling.seed)
        for _ in range(max_tokens):
            if session.logits is None or session.n_evaluated < len(session.tokens):
                self._catch_up(session)
            assert session.logits is not None
            token = sample_token(session.logits, sampling, session.rng)
            logprobs.append(_logprob(session.logits, token))
            produced.append(token)
            # The new token joins the sequence now but enters the KV cache lazily, on the next
            # request that needs its logits: a final token the client never extends costs nothing.
            session.tokens.append(token)
            session.logits = None
            self._stats.tokens_generated += 1
            if self.backend.is_end(token):
                finished = True
                break
        return DecodeResult(tokens=produced, logprobs=logprobs, new_len=len(session.tokens), finished=finished)

    def _catch_up(self, session: Session) -> None:
        """Bring the KV cache level with ``tokens`` so fresh logits exist for the last position."""
        if session.n_evaluated == len(session.tokens):
            # Logits were dropped by a rollback: recompute the last position.
            session.n_evaluated -= 1
            self.backend.truncate(session.slot, session.n_evaluated)
        self._extend(session, [], prefill=False)

    def _evict_lru(self, keep: str | None) -> bool:
        for session_id in self._sessions:
            if session_id != keep:
                session = self._sessions.pop(session_id)
                self._release(session)
                self._evicted[session_id] = None
                while len(self._evicted) > _EVICTED_MEMORY:
                    self._evicted.popitem(last=False)
                self._stats.sessions_evicted += 1
                log.info("evicted session %s (%d tokens)", session_id, len(session.tokens))
                return True
        return False

    def _release(self, session: Session) -> None:
        self.backend.truncate(session.slot, 0)
        self._free_slots.append(session.slot)


def _logprob(logits: np.ndarray, token: int) -> float:
    peak = float(np.max(logits))
    return float(logits[token] - peak - np.log(np.exp(logits.astype(np.float64) - peak).sum()))
