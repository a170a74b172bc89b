"""The interface every LLM backend implements: sequences of tokens in slots of one shared KV cache.

The session layer decides *what* each slot holds; a backend only knows *how* to
extend or cut a slot. llama.cpp (CPU/any GGUF) implements it today; a PyTorch
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


class Backend(ABC):
    """Computes next-token logits for token sequences living in numbered slots."""

    info: BackendInfo

    @abstractmethod
    def evaluate(self, slot: int, start_pos: int, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` to ``slot`` at ``start_pos`` and return the logits after the last one.

        Raises KvCacheFull, leaving the slot as it was before the call.
        """

    @abstractmethod
    def truncate(self, slot: int, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` of ``slot`` (0 frees it)."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""
