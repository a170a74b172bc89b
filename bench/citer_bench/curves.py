"""Summary metrics of a quality-vs-cloud-share curve, as RouteLLM defines them.

The "gap recovered" at a point is (quality − SLM-only) / (LLM-only − SLM-only).
APGR is its area over cloud share 0…1; CPT(x) is the smallest cloud share at
which the curve recovers x of the gap. Curves are anchored at (0, SLM-only)
and (1, LLM-only) and interpolated linearly between measured points.
"""

from __future__ import annotations

from collections.abc import Sequence


def gap_recovered(quality: float, slm_quality: float, llm_quality: float) -> float:
    gap = llm_quality - slm_quality
    if gap == 0:
        raise ValueError("SLM-only and LLM-only quality are equal: there is no gap to recover")
    return (quality - slm_quality) / gap


def _anchored(
    points: Sequence[tuple[float, float]], slm_quality: float, llm_quality: float
) -> list[tuple[float, float]]:
    curve = {0.0: 0.0, 1.0: 1.0}
    for share, quality in points:
        if 0.0 < share < 1.0:
            curve[share] = gap_recovered(quality, slm_quality, llm_quality)
    return sorted(curve.items())


def apgr(points: Sequence[tuple[float, float]], slm_quality: float, llm_quality: float) -> float:
    """Average performance gap recovered: trapezoid area under (cloud share, gap recovered)."""
    curve = _anchored(points, slm_quality, llm_quality)
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False))


def cpt(points: Sequence[tuple[float, float]], slm_quality: float, llm_quality: float, target: float) -> float:
    """Cloud share needed to recover ``target`` (e.g. 0.5) of the gap, by linear interpolation."""
    curve = _anchored(points, slm_quality, llm_quality)
    previous = curve[0]
    for share, recovered in curve:
        if recovered >= target:
            (x0, y0) = previous
            if recovered == y0 or share == x0:
                return share
            return x0 + (target - y0) * (share - x0) / (recovered - y0)
        previous = (share, recovered)
    return 1.0
