"""Reference outputs from llama.cpp alone, to compare the hybrid loop against.

The model is opened through the project's loader (so it gets the same safe
buffer policy as everything else), but decoding is a plain loop over
llama.cpp's own single-sequence batches, independent of ``LocalModel`` and the
cloud backend it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as llama_internals

from citer_protocol.llama_loader import context_params, decode_in_order, load_llama_model


def llama_greedy(
    model_path: Path, prompt: Sequence[int], n_tokens: int, n_ctx: int = 2048, split_last: bool = False
) -> list[int]:
    """Greedy tokens from a plain llama.cpp context: the prompt in one batch, then one token at a time.

    ``split_last`` feeds the prompt's last token as its own batch, the shape
    the edge SLM uses (see LocalModel), since batch shapes change the numerics.
    """
    model = load_llama_model(model_path)
    params = context_params(n_ctx, 512)  # 512: llama.cpp's default batch, and the SLM's prefill batch
    ctx = llama_internals.LlamaContext(model=model, params=params, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    n_vocab = model.n_vocab()
    try:
        if len(prompt) > params.n_batch:
            raise ValueError(f"the reference feeds the prompt in one batch of at most {params.n_batch} tokens")
        batches = [list(prompt[:-1]), list(prompt[-1:])] if split_last else [list(prompt)]
        for batch in batches:
            decode_in_order(ctx, batch)
        out: list[int] = []
        for _ in range(n_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, -1), shape=(n_vocab,))
            token = int(np.argmax(logits))
            out.append(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            decode_in_order(ctx, [token])
        return out
    finally:
        ctx.close()
        model.close()
