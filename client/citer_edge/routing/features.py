"""Per-position signals the routing policies read: cheap logit statistics plus the SLM's hidden state.

Computed once per token and shared by every policy, so the confidence baseline
and the trained router see exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Logit statistics appended to the hidden state to form the router's input, in this order.
LOGIT_STAT_NAMES: tuple[str, ...] = ("top1_prob", "margin", "entropy")


@dataclass(frozen=True)
class TokenFeatures:
    """What the SLM knows about the position it is about to fill."""

    top1_prob: float  # probability of the SLM's greedy token
    margin: float  # top-1 minus top-2 probability
    entropy: float  # of the next-token distribution, in nats
    hidden: np.ndarray  # final hidden state, float32

    def router_input(self) -> np.ndarray:
        """The router's feature row: hidden state followed by LOGIT_STAT_NAMES (float32)."""
        stats = np.array([self.top1_prob, self.margin, self.entropy], dtype=np.float32)
        return np.concatenate([self.hidden.astype(np.float32, copy=False), stats])


def logit_stats(logits: np.ndarray) -> tuple[float, float, float]:
    """Top-1 probability, top-1 minus top-2 margin and entropy (nats) of a logit vector.

    Runs once per token on the hot path, so it stays in float32 with one exp
    pass, and the runner-up is the max of the two slices around the argmax:
    ``np.partition`` took 1.5 ms of the 1.7 ms this cost on the 2-core EPYC
    for Qwen's 151,936 logits (6 % of an SLM step); now it is about 0.25 ms.
    """
    best = int(logits.argmax())
    peak = float(logits[best])
    rest = [part.max() for part in (logits[:best], logits[best + 1 :]) if part.size]
    second = float(max(rest)) if rest else peak
    shifted = logits - peak
    exp = np.exp(shifted)
    total = float(exp.sum(dtype=np.float64))
    top1 = 1.0 / total
    top2 = float(np.exp(second - peak)) / total
    entropy = float(np.log(total)) - float(np.dot(exp, shifted)) / total
    return top1, top1 - top2, entropy


def extract_features(logits: np.ndarray, hidden: np.ndarray) -> TokenFeatures:
    top1, margin, entropy = logit_stats(logits)
    return TokenFeatures(top1_prob=top1, margin=margin, entropy=entropy, hidden=hidden)
