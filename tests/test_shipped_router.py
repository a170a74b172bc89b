"""The router shipped for the default pair: packaged, found for the default SLM, the default policy, and it routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from citer_cloud.server import CloudServer
from citer_edge import CloudSession, HybridGenerator, LocalModel
from citer_edge.routing.features import LOGIT_STAT_NAMES
from citer_edge.routing.policies import ConfidencePolicy
from citer_edge.routing.router import SHIPPED_DIR, RouterCard, RouterPolicy, default_policy, shipped_router
from tests.test_cli import run_cli

pytestmark = pytest.mark.qwen

PROMPT = 'def is_palindrome(text):\n    """Return True if text reads the same backwards, ignoring case."""\n'


def test_the_default_slm_has_a_shipped_router_with_its_card(qwen_slm_path: Path) -> None:
    path = shipped_router(qwen_slm_path.name, 896)
    assert path is not None and path.parent == SHIPPED_DIR
    card = RouterCard.load(path.with_suffix(".json"))
    assert card.slm == qwen_slm_path.name and card.feature_size == 896 + len(LOGIT_STAT_NAMES)
    assert card.metrics["parity_max_abs_diff"] <= 1e-5
    assert card.metrics["val_auc"] > card.metrics["confidence_val_auc"]  # better than the rule it replaces
    cuts = [cut for _, cut in card.calibration]
    assert all(a >= b for a, b in zip(cuts, cuts[1:], strict=False))
    assert card.training["data"]["slm"] == qwen_slm_path.name  # provenance names the SLM it was trained on


def test_auto_policy_uses_the_router_only_where_it_fits(qwen_slm_path: Path, smol_path: Path) -> None:
    fallback = ConfidencePolicy(0.6)
    chosen = default_policy(qwen_slm_path.name, 896, 0.2, fallback)
    assert isinstance(chosen, RouterPolicy) and chosen.cloud_share == 0.2
    assert default_policy(smol_path.name, 576, 0.2, fallback) is fallback  # no router for SmolLM2
    assert default_policy(qwen_slm_path.name, 1536, 0.2, fallback) is fallback  # same file name, other width


def test_shipped_router_routes_a_generation_on_the_default_pair(
    qwen_slm_path: Path, qwen_llm_path: Path, start_server: Callable[..., CloudServer]
) -> None:
    server = start_server(qwen_llm_path)
    with LocalModel(qwen_slm_path, n_ctx=1024) as slm:
        prompt = slm.tokenize(PROMPT)
        policy = default_policy(qwen_slm_path.name, slm.hidden_size, 0.5, ConfidencePolicy(0.6))
        cloud = CloudSession(server.address, slm.fingerprint)
        tokens = list(HybridGenerator(slm, policy, cloud).stream(prompt, max_tokens=24))
        cloud.close()
    probabilities = np.array([t.critical_probability for t in tokens])
    assert ((0 <= probabilities) & (probabilities <= 1)).all() and probabilities.std() > 0
    routed = [t.source == "llm" for t in tokens]
    assert routed == [p >= policy.threshold for p in probabilities]  # the cloud got exactly what the router chose


def test_cli_picks_the_router_by_default_for_the_default_slm(qwen_slm_path: Path, smol_path: Path) -> None:
    result = run_cli("generate", "--slm", str(qwen_slm_path), "--max-tokens", "4", "--json", "--raw", PROMPT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"].startswith("router(share=0.2")
    result = run_cli("generate", "--slm", str(smol_path), "--max-tokens", "4", "--json", "--raw", PROMPT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"].startswith("confidence(")
