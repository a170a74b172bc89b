"""Sessions: what the server holds for each conversation, and the rules of delta sync.

A session is a token sequence in one backend slot. A request names how much of
it the client believes the server holds (``known_len``) and what to append; the
server evaluates only the appended tokens. Every check runs before any state
changes, so a rejected request leaves its session exactly as it was.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from citer_cloud.backend import Backend, BatchingBackend, Generation, KvCacheFull, SlotChunk
from citer_protocol import SamplingSettings, sample_token

log = logging.getLogger(__name__)

MAX_SESSION_ID_LEN = 128
#: (tenant name, session id): a tenant can only ever name its own sessions.
SessionKey = tuple[str, str]
_EVICTED_MEMORY = 4096  # evicted ids remembered, to tell "evicted" from "unknown"


class ErrorKind(enum.Enum):
    """The gRPC status a rejected request maps to (kept free of grpc so this module tests alone)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"


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
    tenant: str = ""  # sessions live in their tenant's namespace: (tenant, session_id) is the key
    tokens: list[int] = field(default_factory=list)  # everything the server holds, in order
    n_evaluated: int = 0  # prefix of ``tokens`` that is in the KV cache
    logits: np.ndarray | None = None  # next-token logits after tokens[:n_evaluated]
    rng: np.random.Generator | None = None

    @property
    def key(self) -> SessionKey:
        return (self.tenant, self.session_id)


@dataclass(frozen=True)
class TenantLimits:
    """What one tenant may hold at once; None means no limit of that kind."""

    max_sessions: int | None = None
    max_kv_tokens: int | None = None


@dataclass(frozen=True)
class DecodeCall:
    """One Decode request as the session layer sees it: whose session, the client's view of it, what to add."""

    session_id: str
    known_len: int
    append: Sequence[int]
    max_tokens: int
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    tenant: str = ""
    limits: TenantLimits | None = None
    verify_from: int = 0  # 0: no verification; else the position of the first draft (see DecodeRequest)
    span_below: float = 0.0  # 0: produce max_tokens; else continue while the LLM's top-1 is below it

    @property
    def key(self) -> SessionKey:
        return (self.tenant, self.session_id)


@dataclass(frozen=True)
class DecodeResult:
    tokens: list[int]
    logprobs: list[float]
    new_len: int
    finished: bool
    accepted: int = 0  # verify mode: drafts kept
    verified: bool = False


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
    drafts_accepted: int = 0
    drafts_rejected: int = 0


@dataclass
class DecodeJob:
    """One Decode request in flight: its session's pending tokens are evaluated over one or more steps.

    The engine batches the steps of many jobs into shared forward passes; a
    job ends when it has produced ``max_tokens`` tokens, hit an end token, or
    failed (``error``).
    """

    session: Session
    max_tokens: int
    sampling: SamplingSettings
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False  # an end-of-generation token was produced
    error: RequestError | None = None
    cancelled: bool = False  # the client went away: the engine drops the job at the next step
    verify: Verification | None = None
    span_below: float = 0.0
    span_closed: bool = False  # the LLM became sure of the next token: the multi-token turn ends here

    @property
    def pending(self) -> int:
        """Tokens the session holds that are not in the KV cache yet."""
        return len(self.session.tokens) - self.session.n_evaluated

    @property
    def done(self) -> bool:
        if self.error is not None or self.cancelled or self.finished or self.span_closed:
            return True
        return len(self.tokens) >= self.max_tokens and (self.max_tokens > 0 or self.pending == 0)

    def result(self) -> DecodeResult:
        if self.error is not None:
            raise self.error
        accepted, verified = (self.verify.accepted, True) if self.verify else (0, False)
        return DecodeResult(self.tokens, self.logprobs, len(self.session.tokens), self.finished, accepted, verified)


@dataclass
class Verification:
    """Verify-on-sync state of one job: drafts at positions [next, end) still wait for the LLM's judgement.

    The LLM's greedy choice at position p is the argmax of the logits after
    tokens[:p]. Drafts are checked in order as those logits arrive (from the
    session's stored logits or from the rows of the job's prefill); the first
    disagreement cuts the session there and the LLM's own token takes its place.
    """

    start: int  # first draft position (verify_from)
    end: int  # one past the last draft
    next: int  # first draft not yet checked
    rejected: bool = False

    @property
    def accepted(self) -> int:
        return self.next - self.start

    @property
    def pending(self) -> bool:
        return self.next < self.end


class SessionManager:
    """Owns every session of one backend: validation, delta sync, sampling and LRU eviction.

    ``begin`` checks and syncs a request and returns a job; ``step`` runs one
    forward pass for many jobs at once. ``decode`` does both for one request,
    for callers that do not batch. One thread at a time (the engine's).
    """

    def __init__(self, backend: Backend, max_request_tokens: int = 4096, max_session_kv_share: float = 1.0) -> None:
        if not 0 < max_session_kv_share <= 1:
            raise ValueError(f"max_session_kv_share must be in (0, 1], got {max_session_kv_share}")
        self.backend = backend
        self.max_request_tokens = max_request_tokens
        self.max_session_tokens = int(max_session_kv_share * backend.info.kv_capacity)
        self._sessions: OrderedDict[SessionKey, Session] = OrderedDict()  # least recently used first
        self._free_slots = list(range(backend.info.n_slots - 1, -1, -1))
        self._evicted: OrderedDict[SessionKey, None] = OrderedDict()
        self._stats = ServerStats(kv_tokens_capacity=backend.info.kv_capacity)
        self._jobs: dict[SessionKey, DecodeJob] = {}  # session -> its unfinished job
        self.on_step: Callable[[int, int], None] | None = None  # (requests, tokens) of each forward pass: metrics
        self._lock = threading.RLock()

    @property
    def features(self) -> tuple[str, ...]:
        """Optional protocol features (InfoResponse.features): verify and span need the backend's logits."""
        return ("verify", "span") if isinstance(self.backend, BatchingBackend) else ()

    # -- public API -------------------------------------------------------

    def decode(self, call: DecodeCall) -> DecodeResult:
        """Sync ``call.append`` after the first ``call.known_len`` tokens, then produce (unbatched)."""
        job = self.begin(call)
        while not job.done:
            self.step([job])
        return job.result()

    def begin(self, call: DecodeCall) -> DecodeJob:
        """Validate and sync a request (no forward pass yet); raises RequestError before changing anything."""
        session_id, known_len, append, max_tokens, sampling = (
            call.session_id, call.known_len, call.append, call.max_tokens, call.sampling
        )  # fmt: skip
        key = call.key
        with self._lock:
            self._validate(session_id, known_len, append, max_tokens)
            self._validate_features(call)
            self._check_limits(key, known_len, append, max_tokens, call.limits or TenantLimits())
            if key in self._jobs:
                raise RequestError(
                    ErrorKind.FAILED_PRECONDITION,
                    f"session {session_id!r} already has a request running; send one request at a time",
                    reason="SESSION_BUSY",
                )
            session = self._sessions.get(key)
            if session is None:
                if known_len > 0:
                    reason = "SESSION_EVICTED" if key in self._evicted else "SESSION_UNKNOWN"
                    raise RequestError(
                        ErrorKind.FAILED_PRECONDITION,
                        f"session {session_id!r} is not on this server ({reason}); resend the full context",
                        reason=reason,
                    )
                session = self._create(key)
            elif known_len > len(session.tokens):
                raise RequestError(
                    ErrorKind.FAILED_PRECONDITION,
                    f"known_len {known_len} is ahead of the {len(session.tokens)} tokens the server holds",
                    reason="KNOWN_LEN_AHEAD",
                    server_len=len(session.tokens),
                )
            self._stats.decode_requests += 1
            self._sessions.move_to_end(key)
            self._cut(session, known_len)
            session.tokens.extend(append)
            if isinstance(self.backend, BatchingBackend):  # a generating backend reports what it computed itself
                self._stats.tokens_prefilled += len(append)
            if session.rng is None:
                session.rng = np.random.default_rng(sampling.seed)
            job = DecodeJob(session, max_tokens, sampling, span_below=call.span_below)
            if call.verify_from:
                job.verify = Verification(call.verify_from, len(session.tokens), call.verify_from)
                self._start_verification(job)
            elif max_tokens > 0 and job.pending == 0 and session.logits is None:
                # Logits were dropped by a rollback: recompute the last position.
                session.n_evaluated -= 1
                self.backend.truncate(session.slot, session.n_evaluated)
            self._produce_ready(job)
            if not job.done:
                self._jobs[key] = job
            return job

    def step(self, jobs: Sequence[DecodeJob], token_budget: int | None = None) -> None:
        """One forward pass over the pending tokens of ``jobs``, then sampling where logits arrived.

        Jobs in their decode phase (one pending token) go first, then prefill
        chunks in the order given until ``token_budget`` (the backend's batch
        size by default) is spent; a long prefill continues in later steps, so
        it never holds up the others' decode steps.
        """
        backend = self.backend
        if not isinstance(backend, BatchingBackend):
            raise TypeError(f"{type(backend).__name__} produces tokens itself; use record_generation, not step")
        with self._lock:
            budget = min(token_budget or backend.max_batch_tokens, backend.max_batch_tokens)
            free_cells = self.backend.info.kv_capacity - sum(s.n_evaluated for s in self._sessions.values())
            if free_cells < 1:
                self._make_room([job for job in jobs if not job.done])
                return
            budget = min(budget, free_cells)  # what does not fit waits for the next step instead of failing
            plan: list[tuple[DecodeJob, int]] = []
            for job in sorted((j for j in jobs if not j.done), key=lambda j: j.pending > 1):
                take = min(job.pending, budget)
                if take > 0:
                    plan.append((job, take))
                    budget -= take
            if not plan:
                return
            chunks = [
                SlotChunk(
                    job.session.slot,
                    job.session.n_evaluated,
                    job.session.tokens[job.session.n_evaluated : job.session.n_evaluated + take],
                    want_logits=take == job.pending,
                    # Verification needs the logits after every position from the one before the next draft.
                    rows_from=job.verify.next - 1 if job.verify and job.verify.pending else None,
                )
                for job, take in plan
            ]
            try:
                results = backend.evaluate_batch(chunks)
            except KvCacheFull:
                self._make_room([job for job, _ in plan])
                return
            self._stats.forward_passes += 1
            if self.on_step is not None:
                self.on_step(len(plan), sum(take for _, take in plan))
            for (job, take), (chunk, logits) in zip(plan, zip(chunks, results, strict=True), strict=True):
                job.session.n_evaluated += take
                if chunk.rows_from is not None:
                    logits = self._verify_rows(job, chunk, logits)
                job.session.logits = logits  # None after a partial prefill: older logits describe nothing now
                if logits is not None:
                    self._produce_ready(job)
            for job, _ in plan:
                if job.done:
                    self._jobs.pop(job.session.key, None)

    def record_generation(self, job: DecodeJob, generation: Generation) -> None:
        """Record what a generating backend (vLLM) produced for ``job``, as ``step`` does for sampled tokens.

        A job that failed meanwhile (its session closed or evicted) or was
        cancelled keeps its outcome and the session is left as it is. The
        backend's prefix cache now holds the whole sequence as far as we can
        tell; ``tokens_prefilled`` counts what it actually computed (the
        uncached tail, at its block granularity), not what was appended, so
        the counter only ever grows.
        """
        with self._lock:
            if job.error is not None or job.cancelled:
                return
            session = job.session
            self._stats.tokens_prefilled += generation.computed_tokens
            self._stats.tokens_generated += len(generation.tokens)
            session.tokens.extend(generation.tokens)
            session.n_evaluated = len(session.tokens)
            session.logits = None
            job.tokens.extend(generation.tokens)
            job.logprobs.extend(generation.logprobs)
            job.finished = generation.finished
            self._jobs.pop(session.key, None)

    def count_forward_pass(self, requests: int, tokens: int) -> None:
        """A forward pass run inside a generating backend's own engine (its statistics report them)."""
        with self._lock:
            self._stats.forward_passes += 1
        if self.on_step is not None:
            self.on_step(requests, tokens)

    def cancel(self, job: DecodeJob) -> None:
        """Stop a job (its client went away); what it evaluated stays, like any response the client lost."""
        with self._lock:
            job.cancelled = True
            self._jobs.pop(job.session.key, None)

    def close(self, session_id: str, tenant: str = "") -> bool:
        with self._lock:
            session = self._sessions.pop((tenant, session_id), None)
            if session is None:
                return False
            self._fail_job(session.key, "SESSION_CLOSED", f"session {session_id!r} was closed during the request")
            self._release(session)
            return True

    def stats(self) -> ServerStats:
        with self._lock:
            self._stats.live_sessions = len(self._sessions)
            self._stats.kv_tokens_used = sum(s.n_evaluated for s in self._sessions.values())
            return ServerStats(**vars(self._stats))

    def session_length(self, session_id: str, tenant: str = "") -> int | None:
        with self._lock:
            session = self._sessions.get((tenant, session_id))
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

    def _validate_features(self, call: DecodeCall) -> None:
        """Verify and span requests: supported by this backend, greedy, and within the request's bounds."""
        if not (call.verify_from or call.span_below):
            return
        if not isinstance(self.backend, BatchingBackend):
            raise RequestError(
                ErrorKind.UNIMPLEMENTED,
                f"the {self.backend.info.backend} backend does not support verify_from or span_below; "
                "check InfoResponse.features",
            )
        if not math.isfinite(call.span_below) or not 0.0 <= call.span_below <= 1.0:
            raise RequestError(ErrorKind.INVALID_ARGUMENT, f"span_below must be in [0, 1], got {call.span_below}")
        if call.verify_from:
            if not call.sampling.greedy:
                raise RequestError(ErrorKind.INVALID_ARGUMENT, "verify_from needs greedy sampling (temperature 0)")
            low, high = max(call.known_len, 1), call.known_len + len(call.append)
            if not low <= call.verify_from <= high:
                raise RequestError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"verify_from {call.verify_from} must lie in [{low}, {high}] (the appended tokens)",
                )

    def _check_limits(
        self, key: SessionKey, known_len: int, append: Sequence[int], max_tokens: int, limits: TenantLimits
    ) -> None:
        """Per-session and per-tenant limits, checked before anything changes."""
        wanted = known_len + len(append) + max_tokens
        if wanted > self.max_session_tokens:
            raise RequestError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"one session may hold at most {self.max_session_tokens} tokens of the KV cache; this request "
                f"would need {wanted}",
            )
        tenant = key[0]
        if limits.max_sessions is not None and key not in self._sessions:  # only counted where a limit applies
            live = sum(1 for k in self._sessions if k[0] == tenant)
            if live >= limits.max_sessions:
                raise RequestError(
                    ErrorKind.RESOURCE_EXHAUSTED,
                    f"tenant {tenant!r} has {live} live sessions, its limit; close one (CloseSession) first",
                )
        if limits.max_kv_tokens is not None:
            held = sum(  # what its other sessions hold, and what their running requests will still add
                len(s.tokens) + (self._jobs[k].max_tokens - len(self._jobs[k].tokens) if k in self._jobs else 0)
                for k, s in self._sessions.items()
                if k[0] == tenant and k != key
            )
            if held + wanted > limits.max_kv_tokens:
                raise RequestError(
                    ErrorKind.RESOURCE_EXHAUSTED,
                    f"tenant {tenant!r} would hold {held + wanted} KV tokens, over its limit of "
                    f"{limits.max_kv_tokens}; close sessions it no longer needs",
                )

    # -- state changes ----------------------------------------------------

    def _create(self, key: SessionKey) -> Session:
        if not self._free_slots and not self._evict_lru(keep=set()):
            # Every slot holds a running request: refuse the newcomer rather than kill someone's request.
            raise RequestError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"all {self.backend.info.n_slots} session slots are in use by running requests; retry shortly",
            )
        session = Session(session_id=key[1], slot=self._free_slots.pop(), tenant=key[0])
        self._sessions[key] = session
        self._evicted.pop(key, None)
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

    def _produce_ready(self, job: DecodeJob) -> None:
        """Sample the job's next token where fresh logits exist and it wants more tokens."""
        session = job.session
        if job.done or job.pending or session.logits is None or len(job.tokens) >= job.max_tokens:
            return
        if job.span_below and job.tokens and _top1_probability(session.logits) >= job.span_below:
            job.span_closed = True  # the LLM is sure of the next token: hand the turn back (logits are kept)
            return
        assert session.rng is not None
        token = sample_token(session.logits, job.sampling, session.rng)
        job.logprobs.append(_logprob(session.logits, token))
        job.tokens.append(token)
        # The new token joins the sequence now but enters the KV cache lazily, with the job's next step
        # or the session's next request: a final token the client never extends costs nothing.
        session.tokens.append(token)
        session.logits = None
        self._stats.tokens_generated += 1
        if self.backend.is_end(token):
            job.finished = True

    def _start_verification(self, job: DecodeJob) -> None:
        """Check what the session's stored logits can judge now; make sure the rest gets logits rows."""
        session, verify = job.session, job.verify
        assert verify is not None
        if session.n_evaluated == verify.start and session.logits is not None:
            self._judge(job, verify.start, session.logits)  # the first draft, from the logits already held
        elif session.n_evaluated >= verify.start:
            # The logits before the first draft were dropped (a rollback): recompute that position.
            session.n_evaluated = verify.start - 1
            self.backend.truncate(session.slot, session.n_evaluated)
            session.logits = None
        self._finish_verification(job)

    def _verify_rows(self, job: DecodeJob, chunk: SlotChunk, rows: np.ndarray | None) -> np.ndarray | None:
        """Judge drafts with a verify chunk's logits rows; return the logits to produce from (or None)."""
        verify = job.verify
        assert verify is not None and rows is not None
        first = max(chunk.start_pos, chunk.rows_from or 0)  # position whose logits are rows[0]
        for index in range(rows.shape[0]):
            position = first + index + 1  # the token these logits predict
            if position < verify.next or not verify.pending:
                continue
            if not self._judge(job, position, rows[index]):
                return rows[index]  # the session now ends just before ``position``: produce the LLM's token
        self._finish_verification(job)
        last = chunk.start_pos + len(chunk.tokens) - 1
        return rows[-1] if chunk.want_logits and first + rows.shape[0] - 1 == last else None

    def _judge(self, job: DecodeJob, position: int, logits: np.ndarray) -> bool:
        """Compare the draft at ``position`` with the LLM's greedy choice; on disagreement cut the session there."""
        session, verify = job.session, job.verify
        assert verify is not None
        if int(np.argmax(logits)) == session.tokens[position]:
            verify.next = position + 1
            self._stats.drafts_accepted += 1
            return True
        self._stats.drafts_rejected += verify.end - position
        verify.end = verify.next = position
        verify.rejected = True
        del session.tokens[position:]
        if session.n_evaluated > position:
            self.backend.truncate(session.slot, position)
            session.n_evaluated = position
        session.logits = logits if session.n_evaluated == position else None
        job.max_tokens = max(job.max_tokens, 1)  # the LLM's own token replaces the rejected draft
        return False

    def _finish_verification(self, job: DecodeJob) -> None:
        """Every draft kept: an accepted end-of-generation token ends the reply with nothing more to produce."""
        verify = job.verify
        assert verify is not None
        if not verify.pending and not verify.rejected and verify.end > verify.start and not job.tokens:
            job.finished = self.backend.is_end(job.session.tokens[verify.end - 1])

    def _make_room(self, jobs: list[DecodeJob]) -> None:
        """No KV room for the next step: evict one session and let the next step retry.

        Idle sessions go first, then running ones outside this step, then (when every session is
        in this step) the least recently used of them: its request fails with SESSION_EVICTED and
        its client resends. A request that cannot fit even alone is refused.
        """
        if not jobs:
            return
        in_step = {job.session.key for job in jobs}
        if self._evict_lru(keep=in_step) or self._evict_lru(keep=in_step, include_busy=True):
            return
        if len(jobs) > 1:
            self._evict_lru(keep=set(), include_busy=True)
            return
        (job,) = jobs
        pending = job.pending
        del job.session.tokens[job.session.n_evaluated :]  # what did not fit is not kept
        job.session.logits = None
        job.error = RequestError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"KV cache full: {pending} tokens do not fit even with every other session evicted",
        )
        self._jobs.pop(job.session.key, None)

    def _evict_lru(self, keep: set[SessionKey], include_busy: bool = False) -> bool:
        """Evict the least recently used session not in ``keep`` (idle ones only unless ``include_busy``)."""
        for key in self._sessions:
            if key in keep or (key in self._jobs and not include_busy):
                continue
            session = self._sessions.pop(key)
            self._fail_job(key, "SESSION_EVICTED", f"session {key[1]!r} was evicted to make room")
            self._release(session)
            self._evicted[key] = None
            while len(self._evicted) > _EVICTED_MEMORY:
                self._evicted.popitem(last=False)
            self._stats.sessions_evicted += 1
            log.info("evicted a session of tenant %r (%d tokens)", key[0], len(session.tokens))  # ids are not logged
            return True
        return False

    def _fail_job(self, key: SessionKey, reason: str, message: str) -> None:
        job = self._jobs.pop(key, None)
        if job is not None:
            job.error = RequestError(ErrorKind.FAILED_PRECONDITION, message, reason=reason)

    def _release(self, session: Session) -> None:
        self.backend.truncate(session.slot, 0)
        self._free_slots.append(session.slot)


def _top1_probability(logits: np.ndarray) -> float:
    peak = float(np.max(logits))
    return float(1.0 / np.exp(logits.astype(np.float64) - peak).sum())


def _logprob(logits: np.ndarray, token: int) -> float:
    peak = float(np.max(logits))
    return float(logits[token] - peak - np.log(np.exp(logits.astype(np.float64) - peak).sum()))
