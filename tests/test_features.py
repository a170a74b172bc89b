"""Router features: the fast float32 logit statistics agree with a plain float64 softmax."""

from __future__ import annotations

import numpy as np

from citer_edge.routing.features import LOGIT_STAT_NAMES, extract_features, logit_stats


def reference_stats(logits: np.ndarray) -> tuple[float, float, float]:
    x = logits.astype(np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    top = np.sort(p)[-2:]
    return float(top[1]), float(top[1] - top[0]), float(-(p[p > 0] * np.log(p[p > 0])).sum())


def test_logit_stats_match_float64_reference() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.5, 3.0, 20.0):  # flat, typical and very peaked distributions
        logits = (rng.standard_normal(151_936) * scale).astype(np.float32)
        np.testing.assert_allclose(logit_stats(logits), reference_stats(logits), rtol=1e-4, atol=1e-6)


def test_logit_stats_runner_up_at_the_edges_and_in_ties() -> None:
    """The runner-up is found around the argmax: it must not miss either end or a tied maximum."""
    for logits in ([3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.5, 0.0, 2.5], [1.0, 3.0, 3.0], [4.0]):
        values = np.array(logits, dtype=np.float32)
        expected = reference_stats(values) if values.size > 1 else (1.0, 0.0, 0.0)
        np.testing.assert_allclose(logit_stats(values), expected, rtol=1e-5, atol=1e-7)


def test_router_input_is_hidden_then_stats_in_float32() -> None:
    hidden = np.arange(896, dtype=np.float32)
    logits = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    row = extract_features(logits, hidden).router_input()
    assert row.dtype == np.float32 and row.shape == (896 + len(LOGIT_STAT_NAMES),)
    np.testing.assert_array_equal(row[:896], hidden)
    np.testing.assert_allclose(row[896:], reference_stats(logits), rtol=1e-5)
