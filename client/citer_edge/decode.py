"""The collaborative decode loop: per token, the router decides; the SLM or the cloud LLM produces.

Each step is a small named method: read the SLM's features, ask the policy,
fetch tokens (cloud or local), write them back into the SLM's context. LLM
tokens enter the SLM's KV cache like its own, so the SLM always continues from
the true text. When the cloud is unavailable the loop silently stays local.

Three modes change *when* text is final and *what* waits for the network:

- **lossless** (greedy only): every SLM token is a draft; the next cloud call
  (at a position the router marks critical, after ``max_draft`` drafts, and at
  the end) sends the drafts with ``verify_from`` and the server keeps them up to
  the first one it would not have written, replacing that one with its own.
  Tokens are yielded once verified, so the output is the LLM's greedy text.
  With ``LocalPolicy`` and ``max_draft=k`` this is classic draft-k speculative
  decoding over the same gRPC path.
- **overlap**: while a call is in flight the SLM keeps going from its own
  token at the routed position; when the LLM's token equals it, that work is
  kept, otherwise it is rolled back (``_draft_while_waiting``).
- **spans** (``span_below``): a call may return up to ``tokens_per_call``
  tokens, the server continuing only while it is itself unsure.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from citer_edge.cloud.session import CloudReply, CloudSession
from citer_edge.routing.features import extract_features
from citer_edge.routing.policies import RoutingPolicy
from citer_edge.slm import ContextFullError, LocalModel
from citer_edge.usage import CostMeter
from citer_protocol import SamplingSettings, sample_token

Source = Literal["slm", "llm"]


@dataclass(frozen=True)
class GeneratedToken:
    token_id: int
    text: str  # new text this token completes ("" inside a multi-byte character)
    source: Source
    critical_probability: float  # what the policy saw at this position
    slm_top1_prob: float  # the SLM's confidence here, whoever produced the token


@dataclass
class GenerationSummary:
    policy: str
    prompt_tokens: int = 0
    tokens: int = 0
    cloud_tokens: int = 0
    cloud_calls: int = 0  # round trips that came back with tokens (or a verdict)
    cloud_fallbacks: int = 0  # positions the policy routed to the cloud but the SLM produced
    cloud_wait_s: float = 0.0  # time the edge sat blocked on the cloud
    time_to_first_token_s: float = 0.0
    elapsed_s: float = 0.0
    finish_reason: str = "length"  # "stop" (end token), "length" (max_tokens) or "context" (window full)
    mode: str = "blocking"  # "blocking", "lossless", with "+overlap" and/or "+span" where used
    drafts_accepted: int = 0  # lossless: SLM tokens the LLM verified
    drafts_rejected: int = 0  # lossless: SLM tokens rolled back because the LLM disagreed (or followed one that did)
    unverified_tokens: int = 0  # lossless: tokens given out unverified because the cloud was unavailable
    overlap_kept: int = 0  # overlap: SLM tokens decoded during a call and kept
    overlap_discarded: int = 0  # overlap: SLM tokens decoded during a call and rolled back
    # cost and privacy (filled by citer_edge.usage.CostMeter when the stream ends)
    target_share: float | None = None  # the cloud share asked for, where a share target applies
    local_only: bool = False  # nothing of this conversation was allowed to leave the device
    budget: dict[str, object] | None = None  # CloudBudget.to_dict(): limits, use, tokens_left, calls_left
    uploads: int = 0  # requests that carried conversation tokens off the device during this generation
    upload_tokens: int = 0
    upload_text_bytes: int = 0  # UTF-8 bytes of those tokens' text
    upload_wire_bytes: int = 0  # serialized request bytes (DecodeRequest.ByteSize())

    @property
    def cloud_share(self) -> float:
        return self.cloud_tokens / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "cloud_share": self.cloud_share, "tokens_per_s": self.tokens_per_s}

    def line(self) -> str:
        """One human-readable summary line for the CLI."""
        extra = ""
        if self.mode.startswith("lossless"):
            extra = f", {self.drafts_accepted} drafts verified, {self.drafts_rejected} rolled back"
            if self.unverified_tokens:
                extra += f", {self.unverified_tokens} UNVERIFIED (cloud unavailable)"
        return (
            f"[{self.tokens} tokens, {self.cloud_tokens} from the cloud ({self.cloud_share:.0%}) in "
            f"{self.cloud_calls} calls, {self.tokens_per_s:.1f} tok/s, cloud wait {self.cloud_wait_s:.2f} s, "
            f"policy {self.policy}{'' if self.mode == 'blocking' else ', mode ' + self.mode}{extra}, "
            f"finish: {self.finish_reason}{self._cost_text()}]"
        )

    def _cost_text(self) -> str:
        """The cost and privacy part of ``line``: target share, budget left, bytes uploaded."""
        parts = []
        if self.local_only:
            parts.append("local only")
        if self.target_share is not None:
            parts.append(f"target share {self.target_share:.0%}")
        budget = self.budget or {}
        left = [
            f"{budget[f'{what}_left']} {what}" for what in ("tokens", "calls") if budget.get(f"{what}_left") is not None
        ]
        if left:
            parts.append(f"budget left: {' and '.join(left)}")
        if self.uploads:
            parts.append(f"uploaded {self.upload_text_bytes} B of text ({self.upload_wire_bytes} B on the wire)")
        return "".join(f", {part}" for part in parts)


class GenerationStream:
    """Iterate for tokens as they are produced; ``summary`` and ``token_ids`` are complete afterwards.

    ``meter`` completes the summary's cost-and-privacy fields (what was asked
    of the cloud and uploaded) whenever iteration stops, also when the caller
    stops early; it counts from the first token asked for, so streams created
    together and consumed in turn each count only their own uploads.
    """

    def __init__(
        self, steps: Iterator[GeneratedToken], summary: GenerationSummary, meter: CostMeter | None = None
    ) -> None:
        self._steps = steps
        self.summary = summary
        self.token_ids: list[int] = []
        self.sources: list[Source] = []
        self._meter = meter
        self._metering = False

    def __iter__(self) -> Iterator[GeneratedToken]:
        if self._meter is not None and not self._metering:
            self._meter.start()
            self._metering = True
        try:
            for token in self._steps:
                self.token_ids.append(token.token_id)
                self.sources.append(token.source)
                yield token
        finally:
            if self._meter is not None:
                self._meter.finish(self.summary)  # again after a resumed iteration: it counts from start()

    def text(self) -> str:
        """Consume the rest of the stream and return the whole completion."""
        return "".join(token.text for token in self)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    sources: list[Source]
    summary: GenerationSummary = field(repr=False)


@dataclass(frozen=True)
class _Position:
    """Who wrote one output token, and what the policy and the SLM saw there."""

    source: Source
    critical_probability: float
    slm_top1_prob: float


class HybridGenerator:
    """Generates with an SLM on the device and, where the policy says so, the cloud LLM.

    ``lossless`` makes the output the LLM's greedy text (see the module
    docstring); ``max_draft`` bounds how many unverified tokens it lets pile
    up (how far the stream may lag, and how much one rejection can waste).
    ``overlap`` keeps the SLM decoding while a call is in flight.
    ``span_below`` lets one call return up to ``tokens_per_call`` tokens while
    the LLM stays unsure.
    """

    def __init__(
        self,
        slm: LocalModel,
        policy: RoutingPolicy,
        cloud: CloudSession | None = None,
        tokens_per_call: int = 1,
        lossless: bool = False,
        max_draft: int = 16,
        overlap: bool = False,
        span_below: float = 0.0,
    ) -> None:
        if tokens_per_call < 1:
            raise ValueError("tokens_per_call must be at least 1")
        if max_draft < 1:
            raise ValueError("max_draft must be at least 1")
        if not 0.0 <= span_below <= 1.0:
            raise ValueError(f"span_below must be in [0, 1], got {span_below}")
        self.slm = slm
        self.policy = policy
        self.cloud = cloud
        self.tokens_per_call = tokens_per_call
        self.lossless = lossless
        self.max_draft = max_draft
        self.overlap = overlap
        self.span_below = span_below
        self._worker: ThreadPoolExecutor | None = None
        if cloud is not None:
            cloud.connect()  # checks the tokenizer pairing now; unreachable is fine, it retries later

    @property
    def mode(self) -> str:
        return "+".join(
            name
            for name, on in (
                ("lossless" if self.lossless else "blocking", True),
                ("overlap", self.overlap),
                ("span", self.span_below > 0),
            )
            if on
        )

    def stream(
        self, prompt: Sequence[int], max_tokens: int = 256, sampling: SamplingSettings | None = None
    ) -> GenerationStream:
        """Start generating after ``prompt`` (token ids); nothing runs until the stream is iterated."""
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        sampling = sampling or SamplingSettings()
        if self.lossless and not sampling.greedy:
            raise ValueError("lossless decoding reproduces the LLM's greedy output: use temperature 0")
        summary = GenerationSummary(policy=self.policy.describe(), prompt_tokens=len(prompt), mode=self.mode)
        steps = _Run(self, list(prompt), max_tokens, sampling, summary).steps()
        return GenerationStream(steps, summary, CostMeter(self))

    def generate(
        self, prompt: Sequence[int], max_tokens: int = 256, sampling: SamplingSettings | None = None
    ) -> GenerationResult:
        stream = self.stream(prompt, max_tokens, sampling)
        text = stream.text()
        return GenerationResult(text=text, token_ids=stream.token_ids, sources=stream.sources, summary=stream.summary)

    def close(self) -> None:
        """Stop the worker thread overlap mode started (the SLM and the cloud session stay the caller's)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def __enter__(self) -> HybridGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, call: object, *args: object) -> Future[CloudReply | None]:
        """Run a cloud call on the generator's one worker thread (the SLM keeps the caller's)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citer-cloud-call")
        return self._worker.submit(call, *args)  # type: ignore[arg-type]


class _Run:
    """One generation's state: the context (prompt, settled text, then drafts) and who wrote each token.

    ``context[:final]`` is settled (verified, or never in question); tokens
    from ``final`` on are drafts that a cloud reply may still roll back. Only
    settled tokens are yielded. Outside lossless mode every token is settled
    as soon as it is written (in overlap mode, once the call it raced returns).
    """

    def __init__(
        self,
        generator: HybridGenerator,
        prompt: list[int],
        max_tokens: int,
        sampling: SamplingSettings,
        summary: GenerationSummary,
    ) -> None:
        self.g = generator
        self.slm = generator.slm
        self.cloud = generator.cloud
        self.context = prompt
        self.start = self.final = self.emitted = len(prompt)
        self.positions: list[_Position] = []  # one per output token: context[start:]
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.summary = summary
        self.rng = np.random.default_rng(sampling.seed)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.ended = False  # the last token in context ends the generation
        self.window_full = False  # the SLM could not take the last tokens
        self.started = time.perf_counter()

    @property
    def produced(self) -> int:
        return len(self.context) - self.start

    @property
    def drafts(self) -> int:
        return len(self.context) - self.final

    @property
    def complete(self) -> bool:
        return self.ended or self.produced >= self.max_tokens

    # -- the loop -----------------------------------------------------------

    def steps(self) -> Iterator[GeneratedToken]:
        try:
            self.slm.sync(self.context)
        except ContextFullError:
            self.summary.finish_reason = "context"
            return
        while True:
            if self.window_full:
                yield from self._finish("context")
                return
            if self.complete:
                if self.g.lossless and self.drafts and self.cloud is not None and self._verify_tail():
                    yield from self._emit()
                    continue  # the LLM replaced a draft: the answer goes on from its token
                yield from self._finish("stop" if self.ended else "length")
                return
            features = extract_features(self.slm.logits, self.slm.hidden)
            p_critical, to_cloud = self.g.policy.route(features)
            here = _Position("slm", p_critical, features.top1_prob)
            full_draft = self.g.lossless and self.drafts >= self.g.max_draft
            if self.cloud is not None and (to_cloud or full_draft):
                if self._cloud_turn(here):
                    yield from self._emit()
                    continue
                self.summary.cloud_fallbacks += to_cloud
                if self.g.lossless:
                    self._give_up_verification()
            self._add_slm_token(here)
            yield from self._emit()
            if not self.complete:
                self._write_back([self.context[-1]])

    # -- named steps --------------------------------------------------------

    def _add_slm_token(self, here: _Position) -> None:
        """The SLM writes this position: settled at once, or a draft awaiting verification (lossless)."""
        token = sample_token(self.slm.logits, self.sampling, self.rng)
        self.context.append(token)
        self.positions.append(here)
        self.ended = self.slm.is_end(token)
        if not self.g.lossless:
            self.final = len(self.context)
        elif self.cloud is None:
            self._give_up_verification()

    def _cloud_turn(self, here: _Position) -> bool:
        """One round trip for this position, drafts sent for verification; False: the SLM writes it instead."""
        assert self.cloud is not None
        sent = len(self.context)
        wanted = min(self.g.tokens_per_call, self.max_tokens - self.produced)
        verify_from = self.final if self.g.lossless and self.drafts else 0
        args = (list(self.context), wanted, self.sampling, verify_from, self.g.span_below)
        if self.g.overlap:
            future = self.g._submit(self.cloud.decode, *args)
            try:
                self._draft_while_waiting(future, here)
            finally:
                asked = time.perf_counter()
                reply = future.result()  # never abandoned: the session must not serve two threads at once
                self.summary.cloud_wait_s += time.perf_counter() - asked
            return self._reconcile(reply, sent, here)
        asked = time.perf_counter()
        reply = self.cloud.decode(*args)
        self.summary.cloud_wait_s += time.perf_counter() - asked
        if reply is None:
            return False
        self._apply(reply, here)
        return True

    def _draft_while_waiting(self, future: Future[CloudReply | None], here: _Position) -> None:
        """Keep the SLM decoding from its own token at the routed position until the reply arrives.

        Stops early at a position the policy routes (it needs a call of its
        own), at an end token, at ``max_tokens`` or when the SLM's window is full.
        """
        position = here
        while not future.done() and not self.complete:
            token = sample_token(self.slm.logits, self.sampling, self.rng)
            self.context.append(token)
            self.positions.append(position)
            self.ended = self.slm.is_end(token)
            if self.complete:
                return
            try:
                self.slm.eval([token])
            except ContextFullError:
                return  # the token stays unevaluated; whoever keeps it writes it back and finds the window full
            features = extract_features(self.slm.logits, self.slm.hidden)
            p_critical, to_cloud = self.g.policy.route(features)
            if to_cloud:
                return
            position = _Position("slm", p_critical, features.top1_prob)

    def _reconcile(self, reply: CloudReply | None, sent: int, here: _Position) -> bool:
        """Keep what the SLM decoded during the call where the LLM agrees with it; otherwise roll it back."""
        speculative = self.context[sent:]
        if reply is None:
            if not speculative:
                return False  # nothing written meanwhile: the loop falls back to the SLM as usual
            # Blocking would have fallen back to the SLM's token here: the one already written.
            self.summary.cloud_fallbacks += 1
            self.summary.overlap_kept += len(speculative)
            if self.g.lossless:
                self._give_up_verification()
            else:
                self.final = len(self.context)
            self._catch_up()
            return True
        llm = reply.tokens
        if not llm or reply.kept != sent or llm != speculative[: len(llm)]:
            self.summary.overlap_discarded += len(speculative)
            self._truncate(sent)
            self._apply(reply, here)
            return True
        self._count_reply(reply, sent)
        self.summary.overlap_kept += len(speculative) - len(llm)
        for index in range(sent - self.start, sent - self.start + len(llm)):
            self.positions[index] = _Position("llm", here.critical_probability, self.positions[index].slm_top1_prob)
        self.final = sent + len(llm) if self.g.lossless else len(self.context)
        self._catch_up()
        return True

    def _apply(self, reply: CloudReply, here: _Position) -> None:
        """Roll back what the LLM rejected, append its tokens and settle them."""
        self._count_reply(reply, len(self.context))
        self._truncate(reply.kept)
        self.context.extend(reply.tokens)
        self.positions.extend(_Position("llm", here.critical_probability, here.slm_top1_prob) for _ in reply.tokens)
        self.final = len(self.context)
        self.ended = reply.finished
        if not self.complete:
            self._write_back(reply.tokens)

    def _count_reply(self, reply: CloudReply, sent: int) -> None:
        self.summary.cloud_calls += 1
        drafts = sent - self.final if self.g.lossless else 0
        if drafts:
            self.summary.drafts_accepted += reply.accepted
            self.summary.drafts_rejected += drafts - reply.accepted

    def _verify_tail(self) -> bool:
        """The answer is complete but ends in drafts: one sync-only call verifies them.

        True when the LLM replaced a draft (the answer goes on from its token);
        False when every draft stands, or the cloud could not be asked.
        """
        assert self.cloud is not None
        asked = time.perf_counter()
        reply = self.cloud.decode(list(self.context), 0, self.sampling, self.final)
        self.summary.cloud_wait_s += time.perf_counter() - asked
        if reply is None:
            self._give_up_verification()
            return False
        if reply.kept == len(self.context):
            self._count_reply(reply, len(self.context))
            self.final = len(self.context)
            return False
        self._apply(reply, self.positions[reply.kept - self.start])  # the rejected draft's position
        return True

    def _give_up_verification(self) -> None:
        """The cloud is unavailable: the drafts so far are given out as they are, counted as unverified."""
        self.summary.unverified_tokens += self.drafts
        self.final = len(self.context)

    def _truncate(self, length: int) -> None:
        """Drop context[length:] from the transcript and the SLM's KV cache."""
        if length < len(self.context):
            del self.context[length:]
            del self.positions[length - self.start :]
            self.slm.rollback(length)
            self.ended = False

    def _catch_up(self) -> None:
        """Evaluate whatever of the kept context the SLM has not seen (the last token decoded during a call)."""
        missing = self.context[len(self.slm.tokens) :]
        if missing and not self.complete:
            self._write_back(missing)

    def _write_back(self, tokens: list[int]) -> None:
        """Evaluate new tokens in the SLM so its next step sees them; a full window ends the generation."""
        try:
            self.slm.eval(tokens)
        except ContextFullError:
            self.window_full = True

    def _finish(self, reason: str) -> Iterator[GeneratedToken]:
        if self.g.lossless and self.drafts:
            self._give_up_verification()
        self.final = len(self.context)
        self.summary.finish_reason = reason
        yield from self._emit(last=True)

    def _emit(self, last: bool = False) -> Iterator[GeneratedToken]:
        """Yield settled tokens not yet given out; the generation's last flushes the UTF-8 decoder."""
        summary = self.summary
        while self.emitted < self.final:
            token = self.context[self.emitted]
            position = self.positions[self.emitted - self.start]
            self.emitted += 1
            summary.tokens += 1
            summary.cloud_tokens += position.source == "llm"
            if summary.tokens == 1:
                summary.time_to_first_token_s = time.perf_counter() - self.started
            # The generation's last token flushes the decoder: an unfinished character at the very end shows
            # as U+FFFD instead of vanishing. A complete answer with nothing left to verify ends here.
            ends = (last or self.complete) and self.emitted == self.final == len(self.context)
            text = self.utf8.decode(self.slm.token_bytes(token), final=ends)
            yield GeneratedToken(token, text, position.source, position.critical_probability, position.slm_top1_prob)
        summary.elapsed_s = time.perf_counter() - self.started
