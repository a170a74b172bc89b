"""The interface every LLM backend implements: sequences of tokens in slots of one shared KV cache.

The session layer decides *what* each slot holds; a backend only knows *how* to
extend or cut slots. One call may extend many slots at once (one forward pass
for every session's pending tokens), which is what lets the engine batch
concurrent requests. llama.cpp (CPU/any GGUF) implements it today; a PyTorch
or vLLM backend for GPUs is another subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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


class Backend(ABC):
    """Computes next-token logits for token sequences living in numbered slots."""

    info: BackendInfo
    max_batch_tokens: int  # most tokens one ``evaluate_batch`` call may carry, all chunks together

    @abstractmethod
    def evaluate_batch(self, chunks: Sequence[SlotChunk]) -> list[np.ndarray | None]:
        """Append every chunk to its slot in one forward pass; logits per chunk (None where not wanted).

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

    @abstractmethod
    def truncate(self, slot: int, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` of ``slot`` (0 frees it)."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""
