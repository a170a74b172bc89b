"""Routing policies: who decides, per token, whether the cloud LLM should produce it.

The decode loop only calls ``route`` (P(critical) and the decision); a new
policy (the trained ONNX router, a budgeted one) is one more subclass and never
touches the loop.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod

from citer_edge.routing.features import TokenFeatures


class RoutingPolicy(ABC):
    """Decides from one position's features whether the next token is critical."""

    name: str = "policy"
    #: ``route`` decides ``critical_probability >= threshold`` unless a policy overrides it.
    threshold: float = 0.5

    @abstractmethod
    def critical_probability(self, features: TokenFeatures) -> float:
        """P(the next token is critical), in [0, 1]."""

    def route(self, features: TokenFeatures) -> tuple[float, bool]:
        """P(critical) and whether to ask the cloud, scoring the position once (a router is not free)."""
        p_critical = self.critical_probability(features)
        return p_critical, p_critical >= self.threshold

    def wants_cloud(self, features: TokenFeatures) -> bool:
        return self.route(features)[1]

    def describe(self) -> str:
        return self.name


class LocalPolicy(RoutingPolicy):
    """Never asks the cloud: the SLM-only baseline and the offline mode."""

    name = "local"

    def critical_probability(self, features: TokenFeatures) -> float:
        return 0.0


class CloudPolicy(RoutingPolicy):
    """Always asks the cloud: every token comes from the LLM (the quality ceiling)."""

    name = "cloud"

    def critical_probability(self, features: TokenFeatures) -> float:
        return 1.0


class ConfidencePolicy(RoutingPolicy):
    """Routes when the SLM's top-1 probability falls below ``min_top1_prob``."""

    name = "confidence"

    def __init__(self, min_top1_prob: float = 0.6) -> None:
        if not 0.0 <= min_top1_prob <= 1.0:
            raise ValueError(f"min_top1_prob must be in [0, 1], got {min_top1_prob}")
        self.min_top1_prob = min_top1_prob

    def critical_probability(self, features: TokenFeatures) -> float:
        return 1.0 - features.top1_prob

    def route(self, features: TokenFeatures) -> tuple[float, bool]:
        return 1.0 - features.top1_prob, features.top1_prob < self.min_top1_prob

    def describe(self) -> str:
        return f"confidence(top1<{self.min_top1_prob:g})"


class RandomPolicy(RoutingPolicy):
    """Sends each token to the cloud with probability ``cloud_share``: the no-information baseline."""

    name = "random"

    def __init__(self, cloud_share: float, seed: int = 0) -> None:
        if not 0.0 <= cloud_share <= 1.0:
            raise ValueError(f"cloud_share must be in [0, 1], got {cloud_share}")
        self.cloud_share = cloud_share
        self._rng = random.Random(seed)

    def critical_probability(self, features: TokenFeatures) -> float:
        return self.cloud_share

    def route(self, features: TokenFeatures) -> tuple[float, bool]:
        return self.cloud_share, self._rng.random() < self.cloud_share

    def describe(self) -> str:
        return f"random(p={self.cloud_share:g})"


def make_policy(name: str, threshold: float | None = None, seed: int = 0) -> RoutingPolicy:
    """Build a policy by CLI name; ``threshold`` is the confidence cut or the random share."""
    if name == "local":
        return LocalPolicy()
    if name == "cloud":
        return CloudPolicy()
    if name == "confidence":
        return ConfidencePolicy(0.6 if threshold is None else threshold)
    if name == "random":
        return RandomPolicy(0.2 if threshold is None else threshold, seed=seed)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")


POLICY_NAMES: tuple[str, ...] = ("local", "cloud", "confidence", "random")
