"""A cloud share that holds on any prompt mix: an online controller around a scoring policy.

A cut calibrated once, on one prompt mix, sends a different share of another
mix to the cloud: the shipped router's ``--cloud-share 0.2`` sends 8.6 % of
HumanEval's tokens, because HumanEval makes the SLM more confident than the
standard-library prompts the cut was fitted on. ``ShareController`` wraps the
scoring policy (the router, or the confidence rule) and recalibrates as it
goes: it keeps the scores of the last ``window`` positions and puts the cut at
the (1 − target) quantile of them, so whatever the prompts, about the target
share of positions scores above it. Routing changes what the SLM writes next
(and so its later scores), which a window of past scores cannot see; a slow
integral term on the realised-vs-target routed share removes that bias.

It is still a cut on the score: at any moment the positions sent are the
highest-scoring ones, so the most critical tokens go first and the policy
never degrades into random routing.

Share accounting counts routing decisions: positions routed over positions
seen (a routed decision that asks for k tokens counts k of each). A position
routed while the cloud was unreachable still counts as routed: the controller
tracks what the policy asks for, not what the network delivered.

What it learned (the score window and the correction per target) is stored
per model pair and scorer under ``<state dir>/routing/``, so the next
conversation starts calibrated to this user's traffic; ``reset`` (the CLI's
``--reset-share``) forgets it and starts again from the router card.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from citer_edge.routing.calibration import NEVER
from citer_edge.routing.features import TokenFeatures
from citer_edge.routing.policies import ConfidencePolicy, RoutingPolicy
from citer_edge.state import read_json, state_dir, write_json_atomic

log = logging.getLogger(__name__)

#: Positions of score history the cut is taken from: a few replies' worth, so it follows a change of topic
#: within a conversation without jumping at every token.
DEFAULT_WINDOW = 800
#: Share-points of correction per position of error. After 500 positions 5 points off target the cut's share
#: has moved by 5 points: slow next to the window, so the two do not fight.
DEFAULT_GAIN = 0.002
#: Below this many scores (and no prior) the quantile means little; the scorer's own cut is used instead.
MIN_SCORES = 64
#: The correction never moves the quantile further than this from the target (anti-windup).
MAX_OFFSET = 0.25
STATE_VERSION = 1


class ShareStore:
    """One model pair's learned share state: a small JSON file, replaced atomically."""

    def __init__(self, path: Path, description: dict[str, str] | None = None) -> None:
        self.path = path
        self.description = description or {}

    @classmethod
    def for_pair(cls, slm_fingerprint: str, llm: str, scorer: str, folder: Path | None = None) -> ShareStore:
        """The store for this SLM (by tokenizer fingerprint and name), cloud model and scorer."""
        key = hashlib.sha256(f"{slm_fingerprint}|{llm}|{scorer}".encode()).hexdigest()[:16]
        folder = folder if folder is not None else state_dir() / "routing"
        return cls(folder / f"{key}.json", {"llm": llm, "scorer": scorer, "slm_fingerprint": slm_fingerprint})

    def load(self) -> dict | None:
        data = read_json(self.path)
        if data is None or data.get("version") != STATE_VERSION:
            return None
        return data

    def save(self, data: dict) -> None:
        write_json_atomic(self.path, {"version": STATE_VERSION, **self.description, **data})

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)


class ShareController(RoutingPolicy):
    """Routes the positions whose score is in the top ``target_share`` of the recent ones."""

    name = "adaptive"

    def __init__(
        self,
        scorer: RoutingPolicy,
        target_share: float,
        initial_cut: float,
        prior_scores: Sequence[float] = (),
        window: int = DEFAULT_WINDOW,
        gain: float = DEFAULT_GAIN,
        tokens_per_route: int = 1,
        store: ShareStore | None = None,
        reset: bool = False,
    ) -> None:
        if not 0.0 <= target_share <= 1.0:
            raise ValueError(f"the target cloud share must be in [0, 1], got {target_share}")
        if window < MIN_SCORES:
            raise ValueError(f"the score window must hold at least {MIN_SCORES} positions, got {window}")
        if tokens_per_route < 1:
            raise ValueError("tokens_per_route must be at least 1")
        self.scorer = scorer
        self.target_share = target_share
        self.initial_cut = initial_cut
        self.gain = gain
        self.tokens_per_route = tokens_per_route
        self._window: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []
        self.offset = 0.0  # the integral correction, in share points added to the target quantile
        self.seen = 0  # positions since this controller was made (this process)
        self.routed = 0
        self._offsets: dict[str, float] = {}
        self._fill([float(s) for s in prior_scores])
        self.store: ShareStore | None = None
        if store is not None:
            self.attach_store(store, reset=reset)

    def attach_store(self, store: ShareStore, reset: bool = False) -> None:
        """Start from what ``store`` learned before (unless ``reset``), and save there from now on."""
        self.store = store
        if reset:
            store.reset()
            log.info("share controller: forgot what it learned for this model pair (%s)", store.path)
            return
        learned = store.load()
        if not learned:
            return
        self._window.clear()
        self._fill(learned.get("scores", []))
        self._offsets = {str(k): float(v) for k, v in learned.get("offsets", {}).items()}
        self.offset = self._offsets.get(_target_key(self.target_share), 0.0)
        log.info("share controller: starting from %d learned scores (%s)", len(self._window), store.path)

    # -- the policy -------------------------------------------------------

    @property
    def threshold(self) -> float:  # type: ignore[override]
        """The cut in force now: route when the scorer's P(critical) is at least this."""
        return self.cut

    @property
    def effective_share(self) -> float:
        """The quantile the cut is taken at: the target plus the integral correction."""
        return min(1.0, max(0.0, self.target_share + self.offset))

    @property
    def cut(self) -> float:
        share = self.effective_share
        if len(self._sorted) < MIN_SCORES:
            return self.initial_cut
        return _cut_for_share(self._sorted, share)

    @property
    def realised_share(self) -> float:
        """Positions routed over positions seen by this controller (this process)."""
        return self.routed / self.seen if self.seen else 0.0

    def critical_probability(self, features: TokenFeatures) -> float:
        return self.scorer.critical_probability(features)

    def route(self, features: TokenFeatures) -> tuple[float, bool]:
        score = self.scorer.critical_probability(features)
        to_cloud = score >= self.cut
        self.observe(score, to_cloud)
        return score, to_cloud

    def observe(self, score: float, routed: bool) -> None:
        """Account one decision: the score joins the window, the correction moves toward the target."""
        if len(self._window) == self._window.maxlen:
            oldest = self._window[0]
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._window.append(score)
        bisect.insort(self._sorted, score)
        weight = self.tokens_per_route if routed else 1
        self.seen += weight
        self.routed += weight if routed else 0
        error = weight * (self.target_share - (1.0 if routed else 0.0))
        self.offset = min(MAX_OFFSET, max(-MAX_OFFSET, self.offset + self.gain * error))

    def describe(self) -> str:
        return f"adaptive-{self.scorer.name}(share={self.target_share:g}, p>={self.cut:.3g})"

    # -- persistence ------------------------------------------------------

    def save(self) -> None:
        """Store what was learned, for the next conversation with this model pair (no-op without a store)."""
        if self.store is None:
            return
        self._offsets[_target_key(self.target_share)] = round(self.offset, 6)
        self.store.save(
            {
                "scores": [round(s, 5) for s in self._window],
                "offsets": self._offsets,
                "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )

    def _fill(self, scores: Sequence[float]) -> None:
        for score in list(scores)[-(self._window.maxlen or 0) :]:
            self._window.append(float(score))
        self._sorted = sorted(self._window)


def _target_key(share: float) -> str:
    return f"{share:.4f}"


def _cut_for_share(ordered: list[float], share: float) -> float:
    """The cut that puts ``share`` of ``ordered`` (ascending) at or above it: midway between neighbours."""
    if share <= 0.0:
        return NEVER
    n = len(ordered)
    if share >= 1.0:
        return 0.0
    k = min(max(int(round(share * n)), 1), n - 1)  # how many scores should reach the cut
    return (ordered[n - k - 1] + ordered[n - k]) / 2


def scorer_cut(policy: RoutingPolicy) -> float:
    """A scoring policy's own fixed cut on ``critical_probability`` (the controller's starting point)."""
    if isinstance(policy, ConfidencePolicy):
        return 1.0 - policy.min_top1_prob  # route when top-1 < m  ⇔  P(critical) = 1 − top-1 > 1 − m
    return float(policy.threshold)


def card_prior(calibration: Sequence[tuple[float, float]], n: int = 100) -> list[float]:
    """Pseudo-scores distributed as a router card's calibration says (share s of them at or above cut(s)).

    They seed an empty window, so a first conversation starts at the card's cut and moves away from it
    smoothly as real scores replace them.
    """
    import numpy as np

    shares = np.array([s for s, _ in calibration], dtype=np.float64)
    cuts = np.array([min(t, 1.0) for _, t in calibration], dtype=np.float64)
    quantiles = (np.arange(n) + 0.5) / n  # share of scores at or above each pseudo-score
    return [float(np.interp(q, shares, cuts)) for q in quantiles]
