"""Reference outputs from llama.cpp alone (llama-cpp-python's ``Llama``), to compare the hybrid loop against."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np


def llama_greedy(
    model_path: Path, prompt: Sequence[int], n_tokens: int, n_ctx: int = 2048, split_last: bool = False
) -> list[int]:
    """Greedy tokens from a plain llama.cpp context: the prompt in one batch, then one token at a time.

    ``split_last`` feeds the prompt's last token as its own batch, the shape
    the edge SLM uses (see LocalModel), since batch shapes change the numerics.
    """
    llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, verbose=False)
    try:
        if split_last:
            llm.eval(list(prompt[:-1]))
            llm.eval(list(prompt[-1:]))
        else:
            llm.eval(list(prompt))
        out: list[int] = []
        eog = llama_cpp.llama_model_get_vocab(llm.model)
        for _ in range(n_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
            token = int(np.argmax(logits))
            out.append(token)
            if llama_cpp.llama_vocab_is_eog(eog, token):
                break
            llm.eval([token])
        return out
    finally:
        llm.close()
