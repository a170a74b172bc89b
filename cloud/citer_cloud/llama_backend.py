"""llama.cpp backend: one model, one context, one unified KV cache shared by every session.

Each session owns a llama.cpp sequence id, so switching sessions costs nothing
and a request evaluates only the tokens it appends (delta sync).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as llama_internals

from citer_cloud.backend import BackendInfo, BatchingBackend, KvCacheFull, SlotChunk
from citer_protocol.llama_loader import context_params, load_llama_model, vocab_fingerprint

log = logging.getLogger(__name__)


class LlamaCppBackend(BatchingBackend):
    """Runs a GGUF model on CPU (or whatever llama.cpp was built for)."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        max_sessions: int = 16,
        kv_tokens: int = 16384,
        n_threads: int | None = None,
        n_batch: int = 512,
        verbose: bool = False,
        extra_buffers: str | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        max_parallel = llama_cpp.llama_max_parallel_sequences()
        if not 1 <= max_sessions <= max_parallel:
            raise ValueError(f"max_sessions must be in 1..{max_parallel}, got {max_sessions}")
        self._model = load_llama_model(path, extra_buffers=extra_buffers, n_gpu_layers=n_gpu_layers, verbose=verbose)
        params = context_params(kv_tokens, n_batch, n_threads)
        params.n_seq_max = max_sessions
        params.kv_unified = True  # sessions share all cells: one long chat may use what idle ones do not
        params.embeddings = False
        self._ctx = llama_internals.LlamaContext(model=self._model, params=params, verbose=verbose)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.max_batch_tokens = n_batch
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        n_vocab = self._model.n_vocab()
        capacity = llama_cpp.llama_n_ctx(self._ctx.ctx)
        metadata = self._model.metadata()
        self.info = BackendInfo(
            model_name=metadata.get("general.name", path.stem),
            tokenizer_fingerprint=vocab_fingerprint(self._model),
            vocab_size=n_vocab,
            max_context=min(self._model.n_ctx_train(), capacity),
            n_slots=max_sessions,
            kv_capacity=capacity,
            backend="llama.cpp",
        )
        log.info("loaded %s: %d slots, %d KV cells", self.info.model_name, max_sessions, capacity)

    def evaluate_batch(self, chunks: Sequence[SlotChunk]) -> list[np.ndarray | None]:
        """One ``llama_decode`` for every chunk: each token tagged with its slot's sequence id."""
        total = sum(len(chunk.tokens) for chunk in chunks)
        if not 0 < total <= self.max_batch_tokens or any(not chunk.tokens for chunk in chunks):
            raise ValueError(f"a batch carries 1..{self.max_batch_tokens} tokens and no empty chunk, got {total}")
        batch = self._batch
        batch.n_tokens = total
        rows: list[list[int] | int | None] = []  # per chunk: batch indices of its rows, one index, or None
        i = 0
        for chunk in chunks:
            chunk_rows: list[int] = []
            for offset, token in enumerate(chunk.tokens):
                batch.token[i] = token
                batch.pos[i] = chunk.start_pos + offset
                batch.seq_id[i][0] = chunk.slot
                batch.n_seq_id[i] = 1
                wanted = (chunk.want_logits and offset == len(chunk.tokens) - 1) or (
                    chunk.rows_from is not None and chunk.start_pos + offset >= chunk.rows_from
                )
                batch.logits[i] = wanted
                if wanted:
                    chunk_rows.append(i)
                i += 1
            if chunk.rows_from is not None:
                rows.append(chunk_rows)
            else:
                rows.append(i - 1 if chunk.want_logits else None)
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            for chunk in chunks:
                self.truncate(chunk.slot, chunk.start_pos)
            if status == 1:
                raise KvCacheFull(f"no KV room for {total} tokens across {len(chunks)} slots")
            raise RuntimeError(f"llama_decode failed with status {status}")
        vocab = self.info.vocab_size
        results: list[np.ndarray | None] = []
        for row in rows:
            if row is None:
                results.append(None)
            elif isinstance(row, list):
                rows_of_chunk = [self._logits_row(r) for r in row]
                results.append(np.stack(rows_of_chunk) if rows_of_chunk else np.zeros((0, vocab), np.float32))
            else:
                results.append(self._logits_row(row))
        return results

    def _logits_row(self, index: int) -> np.ndarray:
        logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
        return np.ctypeslib.as_array(logits, shape=(self.info.vocab_size,)).copy()

    def truncate(self, slot: int, n_tokens: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot, n_tokens, -1)

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self._model.close()
