"""Router training data on disk: one compressed ``.npz`` per collection run.

Rows are positions: ``features`` (the SLM's router input, float32),
``labels`` (1 = critical), ``groups`` (which prompt, for honest validation
splits) and ``positions``; ``extras`` holds per-row columns a collection run
adds (the models' tokens, the LLM's log-prob gap, ...) so labels can be
re-derived under another rule without collecting again. Metadata (models, label rule, counts) is stored as
a JSON string in the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from citer_export.labels import gap_labels

EXTRA_PREFIX = "extra_"
GAP_COLUMNS = frozenset({"slm_token", "llm_token", "llm_gap"})


@dataclass
class RouterDataset:
    features: np.ndarray  # [n, feature_size] float32
    labels: np.ndarray  # [n] uint8
    groups: np.ndarray  # [n] int32, prompt index
    positions: np.ndarray  # [n] int32, token index within the completion
    meta: dict = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.labels) == len(self.groups) == len(self.positions) == n):
            raise ValueError("features, labels, groups and positions must have one row per position")
        for name, column in self.extras.items():
            if len(column) != n:
                raise ValueError(f"extra column {name!r} has {len(column)} rows, expected {n}")

    @property
    def has_gaps(self) -> bool:
        """Whether the collection stored both models' tokens and the LLM's gap (needed to apply the gap rule)."""
        return GAP_COLUMNS <= set(self.extras)

    def labels_by_gap(self, gap: float) -> np.ndarray:
        """Every row's label under the gap rule, rollouts ignored."""
        if not self.has_gaps:
            raise ValueError(f"the gap rule needs the extra columns {sorted(GAP_COLUMNS)}; collect the data again")
        return gap_labels(self.extras["slm_token"], self.extras["llm_token"], self.extras["llm_gap"], gap)

    def save(self, path: Path) -> Path:
        np.savez_compressed(
            path,
            features=self.features.astype(np.float32),
            labels=self.labels.astype(np.uint8),
            groups=self.groups.astype(np.int32),
            positions=self.positions.astype(np.int32),
            meta=np.array(json.dumps(self.meta)),
            **{EXTRA_PREFIX + name: column for name, column in self.extras.items()},
        )
        return path

    @classmethod
    def load(cls, path: Path) -> RouterDataset:
        with np.load(path) as data:
            extras = {key[len(EXTRA_PREFIX) :]: data[key] for key in data.files if key.startswith(EXTRA_PREFIX)}
            return cls(
                data["features"],
                data["labels"],
                data["groups"],
                data["positions"],
                json.loads(str(data["meta"])),
                extras,
            )

    @classmethod
    def concat(cls, parts: list[RouterDataset]) -> RouterDataset:
        """Join runs; group ids are offset so prompts from different files never merge."""
        shared = set.intersection(*(set(p.extras) for p in parts)) if parts else set()
        offset, groups = 0, []
        for part in parts:
            groups.append(part.groups + offset)
            offset += int(part.groups.max()) + 1 if len(part.groups) else 0
        return cls(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate(groups),
            np.concatenate([p.positions for p in parts]),
            summarize_meta([p.meta for p in parts]),
            {name: np.concatenate([p.extras[name] for p in parts]) for name in shared},
        )


def relabel_by_gap(dataset: RouterDataset, gap: float) -> RouterDataset:
    """The same rows with labels re-derived by the gap rule where no rollout decided them."""
    labels = dataset.labels_by_gap(gap)
    rolled = dataset.extras.get("rolled_out", np.zeros(len(labels), dtype=bool)).astype(bool)
    labels[rolled] = dataset.labels[rolled]
    meta = {**dataset.meta, "relabelled_gap": gap}
    return RouterDataset(dataset.features, labels, dataset.groups, dataset.positions, meta, dataset.extras)


COUNTS: tuple[str, ...] = ("positions", "shortcuts", "rollouts", "routed", "seconds")


def summarize_meta(metas: list[dict]) -> dict:
    """One provenance record for many chunk files: shared settings once, counts summed per collection round.

    A round is named by the router that drove its trajectories ("slm" for round 1: the SLM's own).
    """
    first = metas[0] if metas else {}
    shared = {k: v for k, v in first.items() if k not in COUNTS and all(m.get(k) == v for m in metas)}
    shared.pop("prompts", None)
    rounds: dict[str, dict] = {}
    for meta in metas:
        router = meta.get("router")
        key = "/".join(Path(router).parts[-2:]) if router else "slm"  # the driving router, without local folders
        entry = rounds.setdefault(key, {"chunks": 0, "prompts": 0, **{k: 0 for k in COUNTS},
                                        "gap": meta.get("gap"), "rollout_tokens": meta.get("rollout_tokens"),
                                        "cloud_share": meta.get("cloud_share")})  # fmt: skip
        entry["chunks"] += 1
        entry["prompts"] += len(meta.get("prompts", []))
        for k in COUNTS:
            entry[k] += meta.get(k, 0) or 0
    return {**shared, "rounds": rounds}
