"""Router training data on disk: one compressed ``.npz`` per collection run.

Rows are positions: ``features`` (the SLM's router input, float32),
``labels`` (1 = critical), ``groups`` (which prompt, for honest validation
splits) and ``positions``. Metadata (models, label rule, counts) is stored as
a JSON string in the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RouterDataset:
    features: np.ndarray  # [n, feature_size] float32
    labels: np.ndarray  # [n] uint8
    groups: np.ndarray  # [n] int32, prompt index
    positions: np.ndarray  # [n] int32, token index within the completion
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.labels) == len(self.groups) == len(self.positions) == n):
            raise ValueError("features, labels, groups and positions must have one row per position")

    def save(self, path: Path) -> Path:
        np.savez_compressed(
            path,
            features=self.features.astype(np.float32),
            labels=self.labels.astype(np.uint8),
            groups=self.groups.astype(np.int32),
            positions=self.positions.astype(np.int32),
            meta=np.array(json.dumps(self.meta)),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> RouterDataset:
        with np.load(path) as data:
            return cls(
                data["features"], data["labels"], data["groups"], data["positions"], json.loads(str(data["meta"]))
            )

    @classmethod
    def concat(cls, parts: list[RouterDataset]) -> RouterDataset:
        """Join runs; group ids are offset so prompts from different files never merge."""
        offset, groups = 0, []
        for part in parts:
            groups.append(part.groups + offset)
            offset += int(part.groups.max()) + 1 if len(part.groups) else 0
        return cls(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate(groups),
            np.concatenate([p.positions for p in parts]),
            {"parts": [p.meta for p in parts]},
        )
