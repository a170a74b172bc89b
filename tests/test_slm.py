"""The SLM wrapper: the state routing reads, rollback, prefix reuse and a full window."""

from __future__ import annotations

import numpy as np
import pytest

from citer_edge.slm import ContextFullError, LocalModel
from tests.conftest import CHAT_PROMPT


def test_state_has_logits_and_hidden_of_the_right_shape(smol_slm: LocalModel) -> None:
    smol_slm.reset()
    smol_slm.eval(smol_slm.tokenize(CHAT_PROMPT))
    assert smol_slm.logits.shape == (smol_slm.n_vocab,) and smol_slm.logits.dtype == np.float32
    assert smol_slm.hidden.shape == (smol_slm.hidden_size,) and smol_slm.hidden.dtype == np.float32
    assert np.isfinite(smol_slm.logits).all() and np.isfinite(smol_slm.hidden).all()
    assert np.abs(smol_slm.hidden).sum() > 0


def test_rollback_then_replay_restores_the_same_state(smol_slm: LocalModel) -> None:
    smol_slm.reset()
    prompt = smol_slm.tokenize(CHAT_PROMPT)
    smol_slm.eval(prompt)
    for _ in range(6):
        smol_slm.eval([int(np.argmax(smol_slm.logits))])
    tokens = smol_slm.tokens
    logits, hidden = smol_slm.logits.copy(), smol_slm.hidden.copy()
    smol_slm.rollback(len(prompt) + 2)
    assert smol_slm.tokens == tokens[: len(prompt) + 2]
    for token in tokens[len(prompt) + 2 :]:
        smol_slm.eval([token])
    np.testing.assert_array_equal(smol_slm.logits, logits)
    np.testing.assert_array_equal(smol_slm.hidden, hidden)


def test_sync_reuses_the_common_prefix(smol_slm: LocalModel) -> None:
    smol_slm.reset()
    prompt = smol_slm.tokenize(CHAT_PROMPT)
    assert smol_slm.sync(prompt) == 0
    longer = prompt + smol_slm.tokenize("def is_prime(n):", add_bos=False)
    assert smol_slm.sync(longer) == len(prompt)
    assert smol_slm.tokens == longer
    assert smol_slm.sync(prompt) == len(prompt) - 1  # shorter: last token re-evaluated for fresh state
    assert smol_slm.tokens == prompt


def test_full_window_raises_without_corrupting_state(smol_path) -> None:
    with LocalModel(smol_path, n_ctx=64) as slm:
        slm.eval(list(range(100, 160)))
        with pytest.raises(ContextFullError, match="window of 64"):
            slm.eval(list(range(200, 210)))
        assert len(slm.tokens) == 60
        slm.eval([5, 6, 7, 8])
        assert len(slm.tokens) == 64
