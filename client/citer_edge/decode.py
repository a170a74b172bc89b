"""The collaborative decode loop: per token, the router decides; the SLM or the cloud LLM produces.

Each step is a small named method: read the SLM's features, ask the policy,
fetch tokens (cloud or local), write them back into the SLM's context. LLM
tokens enter the SLM's KV cache like its own, so the SLM always continues from
the true text. When the cloud is unavailable the loop silently stays local.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from citer_edge.cloud.session import CloudSession
from citer_edge.routing.features import extract_features
from citer_edge.routing.policies import RoutingPolicy
from citer_edge.slm import ContextFullError, LocalModel
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
    cloud_calls: int = 0
    cloud_fallbacks: int = 0  # positions the policy routed to the cloud but the SLM produced
    cloud_wait_s: float = 0.0
    time_to_first_token_s: float = 0.0
    elapsed_s: float = 0.0
    finish_reason: str = "length"  # "stop" (end token), "length" (max_tokens) or "context" (window full)

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
        return (
            f"[{self.tokens} tokens, {self.cloud_tokens} from the cloud ({self.cloud_share:.0%}) in "
            f"{self.cloud_calls} calls, {self.tokens_per_s:.1f} tok/s, cloud wait {self.cloud_wait_s:.2f} s, "
            f"policy {self.policy}, finish: {self.finish_reason}]"
        )


class GenerationStream:
    """Iterate for tokens as they are produced; ``summary`` and ``token_ids`` are complete afterwards."""

    def __init__(self, steps: Iterator[GeneratedToken], summary: GenerationSummary) -> None:
        self._steps = steps
        self.summary = summary
        self.token_ids: list[int] = []
        self.sources: list[Source] = []

    def __iter__(self) -> Iterator[GeneratedToken]:
        for token in self._steps:
            self.token_ids.append(token.token_id)
            self.sources.append(token.source)
            yield token

    def text(self) -> str:
        """Consume the rest of the stream and return the whole completion."""
        return "".join(token.text for token in self)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    sources: list[Source]
    summary: GenerationSummary = field(repr=False)


class HybridGenerator:
    """Generates with an SLM on the device and, where the policy says so, the cloud LLM."""

    def __init__(
        self,
        slm: LocalModel,
        policy: RoutingPolicy,
        cloud: CloudSession | None = None,
        tokens_per_call: int = 1,
    ) -> None:
        if tokens_per_call < 1:
            raise ValueError("tokens_per_call must be at least 1")
        self.slm = slm
        self.policy = policy
        self.cloud = cloud
        self.tokens_per_call = tokens_per_call
        if cloud is not None:
            cloud.connect()  # checks the tokenizer pairing now; unreachable is fine, it retries later

    def stream(
        self, prompt: Sequence[int], max_tokens: int = 256, sampling: SamplingSettings | None = None
    ) -> GenerationStream:
        """Start generating after ``prompt`` (token ids); nothing runs until the stream is iterated."""
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        summary = GenerationSummary(policy=self.policy.describe(), prompt_tokens=len(prompt))
        return GenerationStream(self._steps(list(prompt), max_tokens, sampling or SamplingSettings(), summary), summary)

    def generate(
        self, prompt: Sequence[int], max_tokens: int = 256, sampling: SamplingSettings | None = None
    ) -> GenerationResult:
        stream = self.stream(prompt, max_tokens, sampling)
        text = stream.text()
        return GenerationResult(text=text, token_ids=stream.token_ids, sources=stream.sources, summary=stream.summary)

    # -- the loop -----------------------------------------------------------

    def _steps(
        self, context: list[int], max_tokens: int, sampling: SamplingSettings, summary: GenerationSummary
    ) -> Iterator[GeneratedToken]:
        started = time.perf_counter()
        rng = np.random.default_rng(sampling.seed)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            self.slm.sync(context)
        except ContextFullError:
            summary.finish_reason = "context"
            return
        while summary.tokens < max_tokens:
            features = extract_features(self.slm.logits, self.slm.hidden)
            p_critical, to_cloud = self.policy.route(features)
            wanted = min(self.tokens_per_call, max_tokens - summary.tokens)
            batch, source, finished = None, "slm", False
            if self.cloud is not None and to_cloud:
                batch, finished = self._cloud_tokens(context, wanted, sampling, summary)
                source = "llm" if batch else "slm"
            if not batch:
                token = sample_token(self.slm.logits, sampling, rng)
                batch, finished = [token], self.slm.is_end(token)
            for index, token in enumerate(batch):
                summary.tokens += 1
                summary.cloud_tokens += source == "llm"
                if summary.tokens == 1:
                    summary.time_to_first_token_s = time.perf_counter() - started
                # The generation's last token flushes the decoder: an unfinished character shows as U+FFFD
                # instead of vanishing.
                last = summary.tokens >= max_tokens or (index == len(batch) - 1 and finished) or self.slm.is_end(token)
                text = utf8.decode(self.slm.token_bytes(token), final=last)
                yield GeneratedToken(token, text, source, p_critical, features.top1_prob)
            summary.elapsed_s = time.perf_counter() - started
            if finished or self.slm.is_end(batch[-1]):
                summary.finish_reason = "stop"
                return
            context.extend(batch)
            if summary.tokens >= max_tokens:
                return
            if not self._write_back(batch, summary):
                return

    def _cloud_tokens(
        self, context: list[int], wanted: int, sampling: SamplingSettings, summary: GenerationSummary
    ) -> tuple[list[int] | None, bool]:
        """Ask the cloud for ``wanted`` tokens; (None, False) means produce locally this time."""
        assert self.cloud is not None
        asked = time.perf_counter()
        reply = self.cloud.decode(context, wanted, sampling)
        summary.cloud_wait_s += time.perf_counter() - asked
        if reply is None or not reply.tokens:
            summary.cloud_fallbacks += 1
            return None, False
        summary.cloud_calls += 1
        return reply.tokens, reply.finished

    def _write_back(self, tokens: list[int], summary: GenerationSummary) -> bool:
        """Evaluate new tokens in the SLM so its next step sees them; False when the window is full."""
        try:
            self.slm.eval(tokens)
        except ContextFullError:
            summary.finish_reason = "context"
            return False
        return True
