"""The on-device small model: llama.cpp through llama-cpp-python, with what routing needs.

After each evaluation it exposes the next-token logits *and* the final hidden
state of the last position (the router's input), and it can roll its KV cache
back to any earlier position, so the decode loop can rewrite history (a resync,
a rejected draft) without re-reading the whole context.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as llama_internals

from citer_edge.errors import CiterEdgeError, ModelNotFoundError
from citer_edge.sequences import common_prefix_len
from citer_protocol.llama_loader import context_params, load_llama_model, vocab_fingerprint

log = logging.getLogger(__name__)


class ContextFullError(CiterEdgeError):
    """The conversation no longer fits the SLM's context window."""


class LocalModel:
    """One llama.cpp model and one context: the device's side of a conversation.

    Hidden states cost llama.cpp an output row per token of a batch (with
    ``embeddings`` on, every token becomes an output), so ``eval`` runs all but
    the last token of a batch with embeddings off and the last one alone with
    them on. Measured on Qwen2.5-Coder-0.5B, 500-token prompt, 2 cores: the
    all-outputs prefill took +590 MB RSS and 6.1 s; this split takes about
    +75 MB and 4.5 s. The price is numerical: the last prompt token is
    evaluated in its own batch, so logits differ slightly (not bitwise) from
    a one-batch prefill; greedy runs compared exactly must feed the same shapes.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_ctx: int = 4096,
        n_threads: int | None = None,
        prefill_batch: int = 512,
        verbose: bool = False,
        extra_buffers: str | None = None,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        self.path = path
        self._model = load_llama_model(path, extra_buffers=extra_buffers, verbose=verbose)
        self.n_ctx = min(n_ctx, self._model.n_ctx_train()) if n_ctx > 0 else self._model.n_ctx_train()
        self.prefill_batch = max(1, min(prefill_batch, self.n_ctx))
        params = context_params(self.n_ctx, self.prefill_batch, n_threads)
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        self._ctx = llama_internals.LlamaContext(model=self._model, params=params, verbose=verbose)
        self._batch = llama_cpp.llama_batch_init(self.prefill_batch, 0, 1)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self.n_vocab = self._model.n_vocab()
        self.hidden_size = self._model.n_embd()
        self._tokens: list[int] = []
        self._logits: np.ndarray | None = None
        self._hidden: np.ndarray | None = None
        self._fingerprint: str | None = None
        self.metadata = self._model.metadata()

    # -- vocabulary -------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids for ``text``; special tokens such as ``<|im_start|>`` are parsed."""
        bos = self._model.add_bos_token() if add_bos is None else add_bos
        return self._model.tokenize(text.encode("utf-8"), bos, True)

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes one token renders to (may be part of a UTF-8 character)."""
        return self._model.detokenize([token], special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(list(tokens), special=False).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        """The token as written in the vocabulary (special tokens included, e.g. ``<|im_end|>``)."""
        return (llama_cpp.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, ``<|im_end|>``, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    @property
    def fingerprint(self) -> str:
        """The tokenizer fingerprint the cloud's LLM must match (see citer_protocol.fingerprint)."""
        if self._fingerprint is None:
            self._fingerprint = vocab_fingerprint(self._model)
        return self._fingerprint

    @property
    def name(self) -> str:
        return self.metadata.get("general.name", self.path.stem)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    # -- state ------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        """Tokens currently in the KV cache, in order."""
        return list(self._tokens)

    @property
    def logits(self) -> np.ndarray:
        """Next-token logits after the last evaluated token (float32, length n_vocab)."""
        if self._logits is None:
            raise RuntimeError("no token evaluated yet")
        return self._logits

    @property
    def hidden(self) -> np.ndarray:
        """Final hidden state at the last evaluated position (float32, length hidden_size)."""
        if self._hidden is None:
            raise RuntimeError("no token evaluated yet")
        return self._hidden

    def eval(self, tokens: Sequence[int]) -> None:
        """Append ``tokens``: all but the last without hidden states, in ``prefill_batch`` chunks; then the last."""
        if not tokens:
            return
        self._ensure_room(len(tokens))
        head = list(tokens[:-1])
        if head:
            llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
            try:
                for start in range(0, len(head), self.prefill_batch):
                    self._decode(head[start : start + self.prefill_batch], read_state=False)
            finally:
                llama_cpp.llama_set_embeddings(self._ctx.ctx, True)
        self._decode([tokens[-1]], read_state=True)

    def eval_all(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` and return the next-token logits after *each* of them, ``[len(tokens), n_vocab]``.

        Teacher forcing: one batched pass scores a whole known continuation,
        which is how label collection reads the LLM's choice at every position
        of an SLM trajectory without decoding token by token. No hidden states
        are read (``hidden`` is unavailable afterwards; ``logits`` is the last row).
        """
        if not tokens:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        self._ensure_room(len(tokens))
        rows = []
        llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
        try:
            for start in range(0, len(tokens), self.prefill_batch):
                chunk = list(tokens[start : start + self.prefill_batch])
                self._decode(chunk, read_state=False, all_logits=True)
                logits = llama_cpp.llama_get_logits(self._ctx.ctx)
                rows.append(np.ctypeslib.as_array(logits, shape=(len(chunk), self.n_vocab)).copy())
        finally:
            llama_cpp.llama_set_embeddings(self._ctx.ctx, True)
        scores = np.concatenate(rows)
        self._logits = scores[-1]
        return scores

    def sync(self, tokens: Sequence[int]) -> int:
        """Make the context equal ``tokens``, reusing the longest common prefix; return how many were reused."""
        reused = common_prefix_len(self._tokens, tokens)
        if reused == len(tokens) and reused > 0:
            reused -= 1  # re-evaluate the last token so logits/hidden describe this exact position
        self.rollback(reused)
        self.eval(tokens[reused:])
        return reused

    def rollback(self, n_tokens: int) -> None:
        """Drop every token after the first ``n_tokens`` from the KV cache.

        Logits and hidden state are stale afterwards until the next ``eval``;
        use ``sync`` to land on a position with fresh ones.
        """
        if n_tokens < len(self._tokens):
            self._ctx.kv_cache_seq_rm(0, n_tokens, -1)
            del self._tokens[n_tokens:]
            self._logits = self._hidden = None

    def reset(self) -> None:
        self.rollback(0)

    def _ensure_room(self, n_tokens: int) -> None:
        if len(self._tokens) + n_tokens > self.n_ctx:
            raise ContextFullError(
                f"context full: {len(self._tokens)} + {n_tokens} tokens exceed the SLM window of {self.n_ctx}"
            )

    def _decode(self, chunk: list[int], read_state: bool, all_logits: bool = False) -> None:
        batch = self._batch
        start = len(self._tokens)
        batch.n_tokens = len(chunk)
        for i, token in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.seq_id[i][0] = 0
            batch.n_seq_id[i] = 1
            batch.logits[i] = all_logits or i == len(chunk) - 1
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            self._ctx.kv_cache_seq_rm(0, start, -1)
            raise ContextFullError(f"llama_decode failed with status {status} at position {start}")
        self._tokens.extend(chunk)
        self._logits = self._hidden = None
        if not read_state:
            return
        logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
        hidden = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, -1)
        self._logits = np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).copy()
        self._hidden = np.ctypeslib.as_array(hidden, shape=(self.hidden_size,)).copy()

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self._model.close()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
