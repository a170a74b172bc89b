"""Thresholds that hit a target cloud share, calibrated on prompts that are not HumanEval.

Users ask for "20 % cloud", not "top-1 < 0.63" (RouteLLM calibrates the same
way). Token-level policies calibrate on the SLM's per-token confidence; the
query-level router on its per-prompt mean confidence over the first tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def threshold_for_share(scores: Sequence[float], share: float) -> float:
    """The cut ``t`` such that a fraction ``share`` of ``scores`` lies strictly below it.

    Scores are confidences (route when score < t). Share 0 gives 0 (never
    route), share 1 gives a value above every score (always route).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("no scores to calibrate on")
    if share == 0.0:
        return 0.0
    if share == 1.0:
        return float(np.nextafter(values[-1], np.inf))
    k = int(round(share * values.size))
    k = min(max(k, 1), values.size - 1)
    # Midway between the k-th smallest and the next one: exactly k scores fall below.
    return float((values[k - 1] + values[k]) / 2)


def share_below(scores: Sequence[float], threshold: float) -> float:
    values = np.asarray(scores, dtype=np.float64)
    return float((values < threshold).mean()) if values.size else 0.0


#: A cut no probability reaches: "route when p ≥ cut" never fires.
NEVER = 1.01


def cut_for_share(scores: Sequence[float], share: float) -> float:
    """The cut ``c`` such that a fraction ``share`` of ``scores`` is ≥ ``c`` (route when score ≥ c).

    For routers that output P(critical); decreasing in ``share``. Share 0
    gives a cut above every probability, share 1 gives 0.
    """
    if share == 0.0:
        return NEVER
    if share == 1.0:
        return 0.0
    negated = -np.asarray(scores, dtype=np.float64)
    return -threshold_for_share(negated, share)
