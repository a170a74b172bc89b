"""The router's data path without torch: labels, label collection, datasets, stats, CLI errors.

Training, ONNX export and routing with a trained router are in test_router_training.py (they need torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citer_edge import LocalModel
from citer_edge.routing.features import LOGIT_STAT_NAMES
from citer_edge.routing.policies import CloudPolicy
from citer_export.collect import label_prompt
from citer_export.corpus import CodePrompt
from citer_export.dataset import RouterDataset, relabel_by_gap
from citer_export.labels import code_outcome, is_critical

PROMPT = "def add(a, b):\n    "


def test_label_rule_on_handcrafted_cases() -> None:
    same = code_outcome(PROMPT, "return a + b\n")
    assert not is_critical(7, 7, None, None)  # equal tokens: the shortcut, no rollout needed
    assert not is_critical(7, 8, same, code_outcome(PROMPT, "return a + b  # sum\n"))  # formatting only
    broken = code_outcome(PROMPT, "return a +\n")
    assert is_critical(7, 8, broken, same)  # the SLM's token leads to code that does not compile
    assert not is_critical(7, 8, same, broken)  # the SLM's road is the better one
    assert is_critical(7, 8, code_outcome(PROMPT, "return a - b\n"), same)  # different code


def synthetic_dataset(hidden_size: int, n_prompts: int = 100, per_prompt: int = 40, seed: int = 0) -> RouterDataset:
    """Rows shaped like real router input; positions with a low top-1 probability tend to be critical."""
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    hidden = rng.standard_normal((n, hidden_size)).astype(np.float32)
    top1 = rng.beta(4, 1.5, size=n).astype(np.float32)
    margin = (top1 * rng.uniform(0.3, 1.0, size=n)).astype(np.float32)
    entropy = (-np.log(top1) + rng.uniform(0, 0.5, size=n)).astype(np.float32)
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(20 * (top1 - 0.5)))).astype(np.uint8)
    features = np.column_stack([hidden, top1, margin, entropy]).astype(np.float32)
    groups = np.repeat(np.arange(n_prompts), per_prompt).astype(np.int32)
    positions = np.tile(np.arange(per_prompt), n_prompts).astype(np.int32)
    return RouterDataset(features, labels, groups, positions, {"slm": "synthetic"})


def test_collect_labels_every_position_with_router_features(smol_slm: LocalModel, smol_path: Path) -> None:
    with LocalModel(smol_path, n_ctx=1024) as llm:
        done = label_prompt(smol_slm, llm, CodePrompt("t", PROMPT), max_tokens=12, rollout_tokens=8)
    assert len(done.features) == len(done.labels) == len(done.llm_tokens) == len(done.routed) > 0
    assert done.features[0].shape == (smol_slm.hidden_size + len(LOGIT_STAT_NAMES),)
    assert done.features[0].dtype == np.float32
    # Same model both sides, teacher-forced vs decoded: every position is a shortcut with a zero gap.
    assert done.shortcuts == len(done.labels) and not any(done.labels) and not any(done.rolled_out)
    assert max(done.llm_gaps) == 0.0


def test_eval_all_scores_each_position_like_stepwise_decoding(smol_path: Path) -> None:
    """Teacher forcing must give the LLM's view of every prefix, not just the last one."""
    with LocalModel(smol_path, n_ctx=512) as model:
        prompt, continuation = model.tokenize(PROMPT), model.tokenize("return a + b\n", add_bos=False)
        model.sync(prompt)
        stepwise = [model.logits.copy()]
        for token in continuation[:-1]:
            model.eval([token])
            stepwise.append(model.logits.copy())
        model.sync(prompt)
        forced = np.vstack([model.logits[None], model.eval_all(continuation[:-1])])
        assert model.tokens == prompt + continuation[:-1]
    assert forced.shape == (len(continuation), model.n_vocab)
    assert [int(np.argmax(row)) for row in forced] == [int(np.argmax(row)) for row in stepwise]
    # Batched and single-token kernels round differently (~0.2 on logits of ~25 here): noise, not another position.
    assert np.max(np.abs(forced - np.vstack(stepwise))) < 0.01 * np.max(np.abs(forced))


@pytest.mark.qwen
def test_collect_on_the_default_pair_labels_disagreements(qwen_slm_path: Path, qwen_llm_path: Path) -> None:
    """Real SLM vs LLM: the teacher-forced LLM view must match its own decoding where it is routed to."""
    prompt = CodePrompt("t", 'def median(values):\n    """Return the median of a list of numbers."""\n')
    with LocalModel(qwen_slm_path, n_ctx=1024) as slm, LocalModel(qwen_llm_path, n_ctx=1024) as llm:
        own = label_prompt(slm, llm, prompt, max_tokens=24)
        gaps = np.array(own.llm_gaps)
        differ = np.array(own.slm_tokens) != np.array(own.llm_tokens)
        assert (gaps[~differ] == 0).all() and (gaps[differ] > 0).all()
        assert own.labels == [int(d and g > 1.0) for d, g in zip(differ, gaps, strict=True)]
        # A router that routes every position makes the trajectory the LLM's own greedy text.
        followed = label_prompt(slm, llm, prompt, max_tokens=24, router=CloudPolicy())
        assert all(followed.routed)
        llm.sync(llm.tokenize(prompt.prompt))
        greedy = []
        for _ in followed.llm_tokens[:-1]:
            greedy.append(int(np.argmax(llm.logits)))
            llm.eval([greedy[-1]])
        assert followed.llm_tokens[: len(greedy)] == greedy


def test_relabelling_by_gap_keeps_rollout_decisions() -> None:
    extras = {
        "slm_token": np.array([1, 2, 3, 4]),
        "llm_token": np.array([1, 5, 6, 7]),
        "llm_gap": np.array([0.0, 0.5, 2.0, 3.0], dtype=np.float32),
        "rolled_out": np.array([False, False, False, True]),
    }
    rows = np.zeros((4, 5), dtype=np.float32)
    dataset = RouterDataset(rows, np.array([0, 0, 0, 0], np.uint8), np.zeros(4, np.int32), np.arange(4), {}, extras)
    assert relabel_by_gap(dataset, 1.0).labels.tolist() == [0, 0, 1, 0]  # the rollout said "same code" at row 3
    assert relabel_by_gap(dataset, 0.0).labels.tolist() == [0, 1, 1, 0]


def test_dataset_round_trips_extra_columns(tmp_path: Path) -> None:
    dataset = synthetic_dataset(8, n_prompts=3, per_prompt=4)
    dataset.extras = {"llm_gap": np.arange(12, dtype=np.float32)}
    loaded = RouterDataset.load(dataset.save(tmp_path / "d.npz"))
    assert loaded.extras["llm_gap"].tolist() == list(range(12))
    joined = RouterDataset.concat([loaded, loaded])
    assert len(joined.extras["llm_gap"]) == 24 and joined.groups.max() == 5


def test_cli_router_policy_errors_are_one_line(smol_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "router.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "citer_edge.cli", "generate", "--slm", str(smol_path), "--policy", "router",
         "--router", str(missing), "hi"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"citer-edge: error: router file not found: {missing} (a router is a .onnx with its .json card)"
    )


def test_stats_compare_the_gap_rule_with_rollout_verdicts() -> None:
    from citer_export.stats import dataset_stats

    extras = {
        "slm_token": np.array([1, 2, 3, 4, 5]),
        "llm_token": np.array([1, 6, 7, 8, 5]),
        "llm_gap": np.array([0.0, 2.0, 2.0, 0.3, 0.0], dtype=np.float32),
        "rolled_out": np.array([False, True, True, True, False]),
        "routed": np.array([False, True, False, False, False]),
    }
    labels = np.array([0, 1, 0, 1, 0], np.uint8)  # rollouts: critical, same code, critical
    dataset = RouterDataset(np.zeros((5, 4), np.float32), labels, np.array([0, 0, 1, 1, 1]), np.arange(5), {}, extras)
    stats = dataset_stats(dataset, gap=1.0)
    assert stats["shortcut_share"] == pytest.approx(0.4) and stats["disagreement_share"] == pytest.approx(0.6)
    assert stats["routed_share"] == pytest.approx(0.2) and stats["rolled_out"] == 3 and stats["prompts"] == 2
    versus = stats["gap_rule_vs_rollouts"]
    assert (versus["both_critical"], versus["gap_only"], versus["rollout_only"], versus["neither"]) == (1, 1, 1, 0)
    assert versus["agreement"] == pytest.approx(1 / 3)
