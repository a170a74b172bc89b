"""The router network: a linear path on the logit statistics plus a small MLP over all features.

The linear path makes the confidence baseline easy to learn (the router must
never do worse than it); the MLP adds what the hidden state knows, behind
dropout so it does not memorise the ~900 hidden dimensions. Feature
standardisation lives inside the model (as buffers), so the exported ONNX
graph takes raw features and the client needs no preprocessing step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RouterMLP(nn.Module):
    def __init__(self, feature_size: int, hidden: int = 256, dropout: float = 0.3, n_stats: int = 3) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.n_stats = n_stats
        self.stats_head = nn.Linear(n_stats, 1)
        self.register_buffer("mean", torch.zeros(feature_size))
        self.register_buffer("inv_std", torch.ones(feature_size))
        self.net = nn.Sequential(nn.Linear(feature_size, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def fit_normalisation(self, features: np.ndarray) -> None:
        """Standardise with the training set's statistics (constant columns keep scale 1)."""
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.inv_std.copy_(torch.from_numpy(np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0).astype(np.float32)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        scaled = (features - self.mean) * self.inv_std
        return (self.stats_head(scaled[:, -self.n_stats :]) + self.net(scaled)).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """P(critical) per row."""
        return torch.sigmoid(self.logits(features))
