"""The meaning of ``SamplingParams``: one implementation so the SLM and the LLM sample the same way.

Sampling runs on plain logits in numpy, so it is independent of the backend
(llama.cpp here, PyTorch on GPU servers) and reproducible from a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    """Temperature 0 is greedy; ``top_p`` in (0, 1) enables nucleus sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):  # NaN compares False with anything
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-probabilities of a 1-D logit vector (float64)."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - np.log(np.exp(shifted).sum())


def sample_token(logits: np.ndarray, settings: SamplingSettings, rng: np.random.Generator) -> int:
    """Pick the next token id from ``logits`` under ``settings``."""
    if settings.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / settings.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if 0.0 < settings.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Smallest set whose mass reaches top_p; the epsilon keeps 0.5 + 0.3 from missing 0.8 by rounding.
        keep = order[: int(np.searchsorted(cumulative, settings.top_p - 1e-9)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))
