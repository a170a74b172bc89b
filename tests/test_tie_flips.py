"""The tie-flip check: where two completions part, and the LLM's margin between the two tokens there."""

from __future__ import annotations

import numpy as np
import pytest

from citer_bench.edge_speed import compare_to_reference
from citer_bench.tie_flips import flip_margin
from citer_edge import LocalModel


def test_answers_part_where_their_token_lists_first_differ() -> None:
    assert compare_to_reference([1, 2, 3], [1, 2, 3]) is None
    assert compare_to_reference([1, 2, 3], [1, 5, 3]) == 1
    assert compare_to_reference([1, 2], [1, 2, 3]) == 2  # a prefix parts where it ends


def test_flip_margin_is_the_llm_logit_gap_between_the_two_choices(smol_slm: LocalModel) -> None:
    prompt = "def add(a, b):\n    return"
    smol_slm.sync(smol_slm.tokenize(prompt))
    logits = np.asarray(smol_slm.logits, dtype=np.float64)
    best, second = (int(t) for t in np.argsort(logits)[::-1][:2])
    text = [smol_slm.token_bytes(t).decode("utf-8") for t in (best, second)]
    found = flip_margin(smol_slm, prompt, lossless=text[1] + " x", reference=text[0] + " x")
    assert found["position"] == 0
    assert found["margin"] == pytest.approx(logits[best] - logits[second], abs=1e-3)
    assert found["leads"] == "reference" and found["rank"] == {"reference": 0, "lossless": 1}
    # One answer stopped earlier: no token choice to judge (the tail would re-tokenise as a different merge).
    stopped = flip_margin(smol_slm, prompt, lossless=" a + b)\n", reference=" a + b)\n\n")
    assert stopped["margin"] is None and "stops" in stopped["note"]
