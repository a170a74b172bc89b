"""What a labelled dataset holds: per collection round, how positions were labelled and how often they are critical.

Also the check that keeps the cheap label honest: where rollouts were run,
how often the LLM-gap rule agrees with CITER's rollout verdict.
"""

from __future__ import annotations

import numpy as np

from citer_export.dataset import RouterDataset


def dataset_stats(dataset: RouterDataset, gap: float) -> dict[str, object]:
    extras = dataset.extras
    n = len(dataset.labels)
    stats: dict[str, object] = {"positions": n, "prompts": int(len(np.unique(dataset.groups))),
                                "critical_share": float(dataset.labels.mean()) if n else 0.0}  # fmt: skip
    if {"slm_token", "llm_token"} <= set(extras):
        differ = extras["slm_token"] != extras["llm_token"]
        stats["shortcut_share"] = float(1 - differ.mean()) if n else 0.0  # labelled by the shortcut alone
        stats["disagreement_share"] = float(differ.mean()) if n else 0.0  # would need a rollout under CITER
    if "routed" in extras:
        stats["routed_share"] = float(extras["routed"].mean()) if n else 0.0
    rolled = extras.get("rolled_out", np.zeros(n, dtype=bool)).astype(bool)
    stats["rolled_out"] = int(rolled.sum())
    if rolled.any() and dataset.has_gaps:
        by_gap = dataset.labels_by_gap(gap)[rolled].astype(bool)
        by_rollout = dataset.labels[rolled].astype(bool)
        stats["gap_rule_vs_rollouts"] = {
            "gap": gap,
            "agreement": float((by_gap == by_rollout).mean()),
            "both_critical": int((by_gap & by_rollout).sum()),
            "gap_only": int((by_gap & ~by_rollout).sum()),
            "rollout_only": int((~by_gap & by_rollout).sum()),
            "neither": int((~by_gap & ~by_rollout).sum()),
        }
    return stats
