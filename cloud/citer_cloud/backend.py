"""The interface every LLM backend implements: sequences of tokens in slots of one shared KV cache.

The session layer decides *what* each slot holds; a backend only knows *how* to
extend or cut slots. One call may extend many slots at once (one forward pass
for every session's pending tokens), which is what lets the engine batch
concurrent requests. Two kinds exist, because the engines that drive them differ:

- a ``BatchingBackend`` (llama.cpp) returns next-token *logits*: our engine
  batches the steps of all sessions and the session manager samples;
- a ``GeneratingBackend`` (vLLM) takes a whole sequence and produces tokens
  itself: it batches, schedules and caches prefixes on its own, so our side
  only keeps each session's tokens and submits them with the appended delta.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from citer_protocol import SamplingSettings


class BackendStartError(RuntimeError):
    """The model could not be loaded or its engine could not start; the message says why in one line."""


class KvCacheFull(Exception):
    """The shared KV cache has no room for the tokens; the caller may evict and retry."""


@dataclass(frozen=True)
class BackendInfo:
    model_name: str
    tokenizer_fingerprint: str
    vocab_size: int
    max_context: int  # longest sequence one slot may hold
    n_slots: int  # sequences the cache can hold at once
    kv_capacity: int  # KV cells shared by all slots
    backend: str


@dataclass(frozen=True)
class SlotChunk:
    """Tokens to append to one slot in a batched forward pass."""

    slot: int
    start_pos: int  # the slot's current length: tokens go at start_pos, start_pos + 1, ...
    tokens: Sequence[int]
    want_logits: bool  # return the next-token logits after the last of ``tokens``
    #: Verification: return the logits after *every* token at position >= rows_from, as a 2-D array
    #: ``[rows, vocab]`` (its last row is the usual next-token logits). None: ``want_logits`` alone.
    rows_from: int | None = None


class Backend(ABC):
    """What the session layer needs of any model: its facts, cutting a slot, and which tokens end a generation."""

    info: BackendInfo

    @abstractmethod
    def truncate(self, slot: int, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` of ``slot`` (0 frees it)."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""


class BatchingBackend(Backend):
    """Computes next-token logits for token sequences living in numbered slots."""

    max_batch_tokens: int  # most tokens one ``evaluate_batch`` call may carry, all chunks together

    @abstractmethod
    def evaluate_batch(self, chunks: Sequence[SlotChunk]) -> list[np.ndarray | None]:
        """Append every chunk to its slot in one forward pass; logits per chunk (None where not wanted).

        A chunk with ``rows_from`` gets a ``[rows, vocab]`` array: the logits after each of its tokens at
        a position >= ``rows_from`` (possibly none).

        Each slot appears at most once. Raises KvCacheFull, leaving every slot as it was before the call.
        """

    def evaluate(self, slot: int, start_pos: int, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` (any number) to one slot and return the logits after the last one.

        Raises KvCacheFull, leaving the slot as it was before the call.
        """
        if not tokens:
            raise ValueError("evaluate needs at least one token")
        step = self.max_batch_tokens
        logits: np.ndarray | None = None
        for offset in range(0, len(tokens), step):
            chunk = tokens[offset : offset + step]
            last = offset + step >= len(tokens)
            try:
                (logits,) = self.evaluate_batch([SlotChunk(slot, start_pos + offset, chunk, want_logits=last)])
            except KvCacheFull:
                self.truncate(slot, start_pos)
                raise
        assert logits is not None
        return logits


@dataclass(frozen=True)
class Generation:
    """What a generating backend produced for one request."""

    tokens: list[int]
    logprobs: list[float]  # of each produced token, under the raw model distribution
    finished: bool  # stopped at an end-of-generation token
    computed_tokens: int  # prompt tokens it had to compute (the rest came from its prefix cache)


class GeneratingBackend(Backend):
    """Produces tokens for whole sequences by itself, batching concurrent requests inside its own engine.

    Slots are only our session bookkeeping here: the backend's cache is keyed
    by content (prefix caching), so ``truncate`` has nothing to undo.
    """

    async def check_health(self) -> bool:
        """True when the engine answers; raises (or never returns) when it is dead or stuck."""
        return True

    @abstractmethod
    async def generate(self, tokens: Sequence[int], max_tokens: int, sampling: SamplingSettings) -> Generation:
        """Continue ``tokens`` by up to ``max_tokens`` tokens (at least 1)."""

    def truncate(self, slot: int, n_tokens: int) -> None:
        """Nothing to cut: the next request names its whole sequence and the prefix cache finds what it shares."""
