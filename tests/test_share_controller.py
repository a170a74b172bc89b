"""The adaptive share controller: the cloud share holds on any score distribution, the most critical go first,
and what it learned carries over to the next conversation (until reset).

Synthetic streams stand in for prompt mixes: prompts of varying difficulty (scores correlated within a
prompt), a routed position makes the next score likelier to be high (an LLM token surprises the SLM), and
the mix shifts twice. Tolerance: the realised share of positions routed is within ±2 points of the target
over the whole stream and within each mix after its first 1,000 positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from citer_cloud.server import CloudServer
from citer_edge import LocalModel
from citer_edge.decode import HybridGenerator
from citer_edge.routing.calibration import cut_for_share
from citer_edge.routing.controller import ShareController, ShareStore, card_prior
from citer_edge.routing.policies import ConfidencePolicy
from tests.test_cli import run_cli

TOLERANCE = 0.02
PHASE = 4000  # positions per prompt mix
SETTLE = 1000  # positions a mix may take before its share must hold


def phase_of(position: int) -> int:
    return position // PHASE


def run_stream(decide, seed: int = 0, feedback: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Scores and decisions over three prompt mixes: easy, hard, very easy (40 prompts of 100 positions each)."""
    rng = np.random.default_rng(seed)
    scores, routed, previous = [], [], False
    for position_block in range(3 * PHASE // 100):
        difficulty = rng.uniform(0.5, 1.5) * (1.0, 3.0, 0.4)[phase_of(position_block * 100)]
        for _ in range(100):
            score = min(1.0, float(rng.beta(difficulty, 6.0)) + (feedback if previous else 0.0))
            previous = decide(score)
            scores.append(score)
            routed.append(previous)
    return np.array(scores), np.array(routed)


def controlled(controller: ShareController):
    def decide(score: float) -> bool:
        to_cloud = score >= controller.cut
        controller.observe(score, to_cloud)
        return to_cloud

    return decide


@pytest.mark.parametrize("target", [0.1, 0.2, 0.3])
def test_share_holds_within_two_points_when_the_prompt_mix_shifts(target: float) -> None:
    controller = ShareController(ConfidencePolicy(0.6), target, initial_cut=0.4)
    _, routed = run_stream(controlled(controller))
    assert abs(routed.mean() - target) <= TOLERANCE
    for phase in range(3):
        settled = routed[phase * PHASE + SETTLE : (phase + 1) * PHASE]
        assert abs(settled.mean() - target) <= TOLERANCE, (phase, settled.mean())
    assert controller.realised_share == pytest.approx(routed.mean())


def test_a_fixed_cut_on_the_same_stream_misses_the_target_by_far() -> None:
    """What the controller is for: a cut calibrated on the first mix sends very different shares of the others."""
    calibrated = {}

    def fixed(score: float) -> bool:
        return score >= calibrated["cut"]

    scores, _ = run_stream(lambda score: False)
    calibrated["cut"] = cut_for_share(scores[:PHASE], 0.2)
    _, routed = run_stream(fixed)
    shares = [routed[p * PHASE : (p + 1) * PHASE].mean() for p in range(3)]
    assert abs(shares[1] - 0.2) > 0.25 and abs(shares[2] - 0.2) > 0.1, shares


def test_the_highest_scores_go_to_the_cloud_not_random_ones() -> None:
    """Within a mix the controller routes (nearly) exactly the positions an oracle cut at the target would."""
    target = 0.2
    controller = ShareController(ConfidencePolicy(0.6), target, initial_cut=0.4)
    scores, routed = run_stream(controlled(controller), feedback=0.0)
    for phase in range(3):
        part = slice(phase * PHASE + SETTLE, (phase + 1) * PHASE)
        oracle = scores[part] >= cut_for_share(scores[part], target)
        # Random routing at this share agrees with the oracle on 68 % of positions and catches 20 % of its
        # picks. The controller's window follows each prompt's difficulty, so it differs from a cut fixed over
        # the whole mix on a few positions (measured: 95-97 % agreement, 84-94 % caught).
        assert (oracle == routed[part]).mean() >= 0.93
        assert (routed[part] & oracle).sum() / oracle.sum() >= 0.8
        assert scores[part][routed[part]].mean() > scores[part][~routed[part]].mean() + 0.15


def test_what_was_learned_carries_to_the_next_conversation_and_reset_forgets_it(tmp_path: Path) -> None:
    store = ShareStore.for_pair("fp", "llm-a", "confidence", folder=tmp_path)
    first = ShareController(ConfidencePolicy(0.6), 0.2, initial_cut=0.4, store=store)
    rng = np.random.default_rng(1)
    for score in rng.beta(6.0, 2.0, size=600):  # a hard mix: the 80th percentile is far above 0.4
        first.observe(float(score), float(score) >= first.cut)
    learned_cut = first.cut
    assert learned_cut > 0.8
    first.save()
    assert store.path.is_file()

    second = ShareController(ConfidencePolicy(0.6), 0.2, initial_cut=0.4, store=store)
    assert second.cut == pytest.approx(learned_cut, abs=1e-4)  # starts calibrated, not at the initial cut
    assert second.offset == pytest.approx(first.offset, abs=1e-6)

    fresh = ShareController(ConfidencePolicy(0.6), 0.2, initial_cut=0.4, store=store, reset=True)
    assert fresh.cut == 0.4 and not store.path.exists()
    other_pair = ShareStore.for_pair("fp", "llm-b", "confidence", folder=tmp_path)
    assert other_pair.path != store.path


def test_the_card_prior_starts_at_the_card_cut() -> None:
    calibration = ((0.0, 1.01), (0.1, 0.85), (0.2, 0.66), (0.3, 0.42), (0.5, 0.13), (1.0, 0.0))
    for share, cut in calibration[1:4]:
        controller = ShareController(
            ConfidencePolicy(0.6), share, initial_cut=0.0, prior_scores=card_prior(calibration)
        )
        assert controller.cut == pytest.approx(cut, abs=0.02)


def test_a_routed_call_of_several_tokens_counts_them_all() -> None:
    controller = ShareController(ConfidencePolicy(0.6), 0.2, initial_cut=0.5, tokens_per_route=4)
    controller.observe(0.9, True)
    controller.observe(0.1, False)
    assert (controller.routed, controller.seen) == (4, 5)


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ShareController(ConfidencePolicy(0.6), 1.5, initial_cut=0.5)


def test_share_holds_on_a_real_slm(smol_slm: LocalModel) -> None:
    """SmolLM2's own confidence over six unlike prompts: the routed share lands on the target, a fixed cut does not.

    Without a cloud the trajectory does not depend on routing, so the fixed cut's share on the very same
    positions is exact. Tolerance: ±4 points over 700 positions (one prompt mix change per 120 positions is
    harsher than a conversation; the synthetic streams above hold ±2 points).
    """
    target = 0.2
    controller = ShareController(ConfidencePolicy(0.9), target, initial_cut=0.1)
    generator = HybridGenerator(smol_slm, controller)
    scores = []
    for prompt in REAL_PROMPTS:
        scores += [token.critical_probability for token in generator.stream(smol_slm.tokenize(prompt), max_tokens=120)]
    assert controller.seen == len(scores) > 600  # one decision per position
    assert abs(controller.realised_share - target) <= 0.04, controller.realised_share
    fixed_share = float((np.array(scores) >= 0.1).mean())  # ConfidencePolicy(0.9) on its own
    assert abs(fixed_share - target) > 0.15, fixed_share


REAL_PROMPTS = (
    "1, 2, 3, 4, 5,",
    "The history of the Roman empire",
    "def quicksort(items):",
    "Once upon a time",
    "import numpy as np\n",
    "Dear Sir or Madam,",
)


def test_cli_adaptive_share_is_remembered_per_model_pair_and_reset(
    smol_path: Path, smol_server: CloudServer, tmp_path: Path
) -> None:
    env = {"CITER_EDGE_STATE_DIR": str(tmp_path)}
    command = ("generate", "--slm", str(smol_path), "--cloud", smol_server.address, "--policy", "confidence",
               "--share-control", "adaptive", "--cloud-share", "0.3", "--cloud-timeout", "60", "--max-tokens", "24",
               "--raw", "--json", "The history of the Roman empire")  # fmt: skip
    first = run_cli(*command, env=env)
    assert first.returncode == 0, first.stderr
    payload = json.loads(first.stdout)
    assert payload["policy"].startswith("adaptive-confidence(share=0.3")
    assert payload["summary"]["target_share"] == 0.3
    (state,) = (tmp_path / "routing").glob("*.json")
    assert len(json.loads(state.read_text())["scores"]) == 24  # what this run saw, kept for the next one
    second = run_cli(*command, env=env)
    assert "starting from 24 learned scores" in second.stderr
    assert len(json.loads(state.read_text())["scores"]) == 48
    reset = run_cli(*command, "--reset-share", env=env)
    assert reset.returncode == 0 and "forgot what it learned" in reset.stderr
    assert len(json.loads(state.read_text())["scores"]) == 24
    wrong = run_cli("generate", "--slm", str(smol_path), "--reset-share", "hi", env=env)
    assert wrong.returncode == 1 and wrong.stderr.strip().endswith("add that option")
