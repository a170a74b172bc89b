"""The trained-router path end to end on small data: training, ONNX parity, calibration, routing (needs torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="router training needs the `train` extra (torch==2.13.0 CPU)")

from citer_edge import CloudSession, HybridGenerator, LocalModel  # noqa: E402
from citer_edge.errors import RouterMismatchError  # noqa: E402
from citer_edge.routing.calibration import NEVER  # noqa: E402
from citer_edge.routing.router import RouterCard, RouterPolicy  # noqa: E402
from citer_export.build import build_router  # noqa: E402
from citer_export.onnx_export import PARITY_TOLERANCE  # noqa: E402
from citer_export.train import TrainConfig, auc  # noqa: E402
from tests.conftest import CHAT_PROMPT  # noqa: E402
from tests.test_router import synthetic_dataset  # noqa: E402


@pytest.fixture(scope="module")
def built_router(tmp_path_factory, smol_slm: LocalModel):
    out = tmp_path_factory.mktemp("router")
    dataset = synthetic_dataset(smol_slm.hidden_size)
    report = build_router(dataset, out, TrainConfig(hidden=32, epochs=8), quantize=True)
    return out, report, dataset


def test_trained_router_learns_and_onnx_matches_pytorch(built_router) -> None:
    _, report, dataset = built_router
    oracle = auc(-dataset.features[:, -3], dataset.labels)  # ranking by the true signal, top-1 probability
    assert report.val_auc > oracle - 0.05  # a broken pipeline scores ~0.5; the stats path alone reaches ~oracle
    assert report.parity_max_abs_diff <= PARITY_TOLERANCE
    assert report.int8_max_abs_diff is not None and report.int8_max_abs_diff < 0.1
    assert report.int8_val_auc is not None and report.int8_val_auc > 0.7


def test_calibration_table_is_monotonic(built_router) -> None:
    out, _, _ = built_router
    card = RouterCard.load(out / "router.json")
    shares = [share for share, _ in card.calibration]
    cuts = [cut for _, cut in card.calibration]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0
    assert all(a >= b for a, b in zip(cuts, cuts[1:], strict=False))
    assert cuts[0] == NEVER and cuts[-1] == 0.0
    assert card.threshold_for_share(0.2) >= card.threshold_for_share(0.3)


def test_shipped_style_router_routes_a_generation(built_router, smol_slm: LocalModel, smol_server) -> None:
    out, _, _ = built_router
    prompt = smol_slm.tokenize(CHAT_PROMPT)
    everything = RouterPolicy.load(out / "router.onnx", smol_slm.hidden_size, cloud_share=1.0)
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint)
    result = HybridGenerator(smol_slm, everything, cloud).generate(prompt, max_tokens=12)
    assert set(result.sources) == {"llm"}
    nothing = RouterPolicy.load(out / "router.onnx", smol_slm.hidden_size, cloud_share=0.0)
    result = HybridGenerator(smol_slm, nothing, cloud).generate(prompt, max_tokens=12)
    assert set(result.sources) == {"slm"}
    stream = HybridGenerator(smol_slm, nothing, cloud).stream(prompt, max_tokens=5)
    assert all(0.0 <= token.critical_probability <= 1.0 for token in stream)


def test_router_for_another_slm_is_refused_clearly(built_router, smol_slm: LocalModel) -> None:
    out, _, _ = built_router
    with pytest.raises(RouterMismatchError, match=r"expects \d+ features .* this SLM gives"):
        RouterPolicy.load(out / "router.onnx", smol_slm.hidden_size + 320, cloud_share=0.2)


def test_auc_matches_definition() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert auc(scores, labels) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)


def test_train_cli_calibrates_on_the_latest_round_only(tmp_path: Path) -> None:
    from citer_export.cli import main

    first, second = tmp_path / "r1.npz", tmp_path / "r2.npz"
    synthetic_dataset(16, n_prompts=40, per_prompt=20, seed=1).save(first)
    late = synthetic_dataset(16, n_prompts=40, per_prompt=20, seed=2)
    late.features[:, -3] = np.clip(late.features[:, -3] + 0.2, 0, 1)  # the later round's SLM is more confident
    late.save(second)
    out = tmp_path / "router"
    args = ["train", str(first), str(second), "--out", str(out), "--hidden", "8", "--epochs", "3", "--name", "r"]
    assert main([*args, "--calibrate-on", str(second)]) == 0
    card = RouterCard.load(out / "r.json")
    assert 0 < card.metrics["calibration_rows"] < 0.5 * 2 * 800  # held-out rows of round 2 only
    assert card.slm == "synthetic" and card.training["data"]["rounds"]["slm"]["chunks"] == 2  # provenance summed
    with pytest.raises(SystemExit, match="must also be among the training datasets"):
        main([*args, "--calibrate-on", str(tmp_path / "elsewhere.npz")])
