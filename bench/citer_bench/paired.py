"""Per-problem (paired) statistics for HumanEval runs: what mixing the two models breaks and rescues, and
whether two runs really differ.

Every run answers the same 164 problems, so two runs are compared problem by
problem rather than as two independent pass rates: at 164 problems a pass
rate alone moves by about ±4 points from noise, while most problems are
answered the same way by both runs and carry no information about the
difference. The paired bootstrap and McNemar's exact test both use only that
pairing.

The categories come from the two ends (SLM alone, LLM alone). A hybrid that
mixed the two well would keep every problem both ends solve and add the ones
only the LLM solves; "broken" and "lost SLM wins" count where token-level
mixing does worse than either model alone would have.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: task_id -> passed, for one run.
Outcomes = Mapping[str, bool]

BOTH_RIGHT = "both_right"
ONLY_LLM_RIGHT = "only_llm_right"
ONLY_SLM_RIGHT = "only_slm_right"
BOTH_WRONG = "both_wrong"
CATEGORIES: tuple[str, ...] = (BOTH_RIGHT, ONLY_LLM_RIGHT, ONLY_SLM_RIGHT, BOTH_WRONG)

#: What a hybrid run did with each category, named by the change that matters: (category, hybrid passed) -> name.
TRANSITIONS: dict[tuple[str, bool], str] = {
    (BOTH_RIGHT, False): "broken",  # both models alone solve it; the mix does not
    (ONLY_LLM_RIGHT, True): "rescued",  # the point of routing: the LLM's win kept
    (ONLY_SLM_RIGHT, False): "lost_slm_wins",  # the SLM alone solves it; the mix does not
    (BOTH_WRONG, True): "gained",  # neither alone solves it; the mix does
}

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def categorise(slm: Outcomes, llm: Outcomes) -> dict[str, str]:
    """Each problem both ends answered, by which end solved it."""
    categories = {}
    for task_id in slm.keys() & llm.keys():
        slm_right, llm_right = bool(slm[task_id]), bool(llm[task_id])
        if slm_right and llm_right:
            categories[task_id] = BOTH_RIGHT
        elif llm_right:
            categories[task_id] = ONLY_LLM_RIGHT
        elif slm_right:
            categories[task_id] = ONLY_SLM_RIGHT
        else:
            categories[task_id] = BOTH_WRONG
    return categories


def category_sizes(categories: Mapping[str, str]) -> dict[str, int]:
    """Problems per category, every category present (zero where empty), so tables keep their columns."""
    counts = Counter(categories.values())
    return {name: counts.get(name, 0) for name in CATEGORIES}


def tasks_by_category(categories: Mapping[str, str]) -> dict[str, list[str]]:
    """The problems in each category, in task order: which problems a table's counts are made of."""
    return {name: sorted((t for t, c in categories.items() if c == name), key=task_order) for name in CATEGORIES}


def transitions(categories: Mapping[str, str], hybrid: Outcomes) -> dict[str, object]:
    """Counts (and sorted task ids) of broken, rescued, lost-SLM-win and gained problems of one hybrid run.

    Only problems the hybrid answered count, so an unfinished run is judged on its own problems.
    """
    tasks: dict[str, list[str]] = {name: [] for name in TRANSITIONS.values()}
    for task_id, passed in hybrid.items():
        name = TRANSITIONS.get((categories.get(task_id, ""), bool(passed)))
        if name is not None:
            tasks[name].append(task_id)
    counts: dict[str, object] = {name: len(ids) for name, ids in tasks.items()}
    counts["tasks"] = {name: sorted(ids, key=task_order) for name, ids in tasks.items()}
    return counts


def task_order(task_id: str) -> tuple[int, str]:
    """HumanEval/10 after HumanEval/9, not after HumanEval/1."""
    number = task_id.rsplit("/", 1)[-1]
    return (int(number), task_id) if number.isdigit() else (1 << 30, task_id)


def paired_arrays(a: Outcomes, b: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """The two runs' outcomes on the problems both answered, aligned by task id (0/1 integers)."""
    shared = sorted(a.keys() & b.keys(), key=task_order)
    return (np.array([int(bool(a[t])) for t in shared], dtype=np.int8),
            np.array([int(bool(b[t])) for t in shared], dtype=np.int8))  # fmt: skip


def bootstrap_difference_ci(
    a: np.ndarray,
    b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile CI of mean(a) − mean(b), resampling problems (pairs), not the two runs separately.

    Resampling pairs keeps each problem's two answers together, which is what
    makes the interval narrow where the runs agree on most problems. A fixed
    seed makes a regenerated report reproduce the committed one exactly.
    """
    differences = a.astype(np.int16) - b.astype(np.int16)
    if differences.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, differences.size, size=(resamples, differences.size))
    means = differences[picks].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant problems as a fair-coin binomial.

    Under "the runs are equally good" each problem only one of them solves is
    equally likely to favour either; concordant problems say nothing. Exact
    (not the chi-squared approximation) because discordant counts here are
    often below 20.
    """
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    smaller = min(only_a, only_b)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """Run ``a`` against run ``b`` on the same problems; ``difference`` is pass@1(a) − pass@1(b)."""

    a: str
    b: str
    kind: str  # "vs_slm", "vs_llm" or "matched_share"
    problems: int
    pass_a: float
    pass_b: float
    difference: float
    ci_low: float
    ci_high: float
    only_a_right: int
    only_b_right: int
    mcnemar_p: float

    def as_dict(self) -> dict[str, object]:
        return {
            "a": self.a, "b": self.b, "kind": self.kind, "problems": self.problems,
            "pass_at_1_a": self.pass_a, "pass_at_1_b": self.pass_b,
            "difference": self.difference, "ci95": [self.ci_low, self.ci_high],
            "only_a_right": self.only_a_right, "only_b_right": self.only_b_right,
            "mcnemar_p": self.mcnemar_p,
        }  # fmt: skip


def compare(name_a: str, a: Outcomes, name_b: str, b: Outcomes, kind: str) -> PairedComparison:
    """Difference, bootstrap CI and McNemar p of two runs over the problems both answered."""
    left, right = paired_arrays(a, b)
    n = int(left.size)
    low, high = bootstrap_difference_ci(left, right)
    only_a = int(np.sum((left == 1) & (right == 0)))
    only_b = int(np.sum((left == 0) & (right == 1)))
    pass_a = float(left.mean()) if n else math.nan
    pass_b = float(right.mean()) if n else math.nan
    return PairedComparison(name_a, name_b, kind, n, pass_a, pass_b, pass_a - pass_b, low, high,
                            only_a, only_b, mcnemar_exact(only_a, only_b))  # fmt: skip


def nearest_share_pairs(
    curves: Mapping[str, Iterable[tuple[str, float]]],
) -> list[tuple[str, str]]:
    """Run pairs across curves at the nearest realised cloud share, each run matched at least once.

    ``curves`` maps a curve (policy) to its runs as (run name, achieved share),
    in the order pairs should read (the first curve's run is ``a``). Achieved
    shares miss the targets differently per policy, so matching on the
    nominal target would compare, e.g., 8.6 % with 11.5 %.
    """
    names = list(curves)
    runs = {curve: sorted(curves[curve], key=lambda run: run[1]) for curve in names}
    pairs: list[tuple[str, str]] = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if not runs[first] or not runs[second]:
                continue
            found = {(run, _nearest(runs[second], share)) for run, share in runs[first]}
            found |= {(_nearest(runs[first], share), run) for run, share in runs[second]}
            order = {run: k for k, (run, _) in enumerate(runs[first] + runs[second])}
            pairs += sorted(found, key=lambda pair: (order[pair[0]], order[pair[1]]))
    return pairs


def _nearest(runs: list[tuple[str, float]], share: float) -> str:
    """The run whose achieved share is closest (the lower one on a tie, for determinism)."""
    return min(runs, key=lambda run: (abs(run[1] - share), run[1]))[0]
