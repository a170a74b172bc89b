"""From a labelled dataset to a shippable router: train, export, check parity, quantise, calibrate, write the card."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from citer_edge.routing.calibration import cut_for_share
from citer_edge.routing.features import LOGIT_STAT_NAMES
from citer_edge.routing.router import RouterCard
from citer_export.dataset import RouterDataset
from citer_export.onnx_export import PARITY_TOLERANCE, export_onnx, onnx_predict, parity_max_abs_diff, quantize_int8
from citer_export.train import TrainConfig, auc, predict, train_router

log = logging.getLogger(__name__)

CURVE_SHARES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
CALIBRATION_SHARES: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class BuildReport:
    model_path: str
    card_path: str
    val_auc: float
    train_auc: float
    parity_max_abs_diff: float
    int8_path: str | None
    int8_max_abs_diff: float | None
    int8_val_auc: float | None
    positions: int
    critical_share: float
    confidence_val_auc: float  # the baseline the router must beat: rank by low SLM top-1 probability
    heldout_curve: list[dict[str, float]]  # per share: critical positions caught by router vs confidence


def build_router(
    dataset: RouterDataset,
    out_dir: Path,
    config: TrainConfig,
    quantize: bool = False,
    name: str = "router",
    calibration_rows: np.ndarray | None = None,
) -> BuildReport:
    """Train on ``dataset`` and write ``<name>.onnx`` + ``<name>.json``.

    The calibration table is fitted on held-out prompts, restricted to
    ``calibration_rows`` when given (e.g. the latest round's router-driven
    trajectories, whose score distribution is the one met at run time).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    hidden_size = dataset.features.shape[1] - len(LOGIT_STAT_NAMES)
    result = train_router(dataset.features, dataset.labels, dataset.groups, config)
    model_path = export_onnx(result.model, out_dir / f"{name}.onnx")

    rng = np.random.default_rng(config.seed)
    sample = dataset.features[rng.choice(len(dataset.features), size=min(1000, len(dataset.features)), replace=False)]
    parity = parity_max_abs_diff(result.model, model_path, sample)
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {parity:.2e} (> {PARITY_TOLERANCE:g})")

    # Calibrate on held-out prompts: the share a threshold yields on data the router never saw.
    val_x = dataset.features[result.val_mask] if result.val_mask.any() else dataset.features
    val_scores = predict(result.model, val_x)
    calibration_scores = val_scores
    if calibration_rows is not None:
        held_out = calibration_rows[result.val_mask] if result.val_mask.any() else calibration_rows
        if not held_out.any():
            raise ValueError("no held-out rows to calibrate on: give more prompts or another seed")
        calibration_scores = val_scores[held_out]
    calibration = tuple((share, cut_for_share(calibration_scores, share)) for share in CALIBRATION_SHARES)
    val_y = dataset.labels[result.val_mask] if result.val_mask.any() else dataset.labels
    confidence_scores = -val_x[:, -len(LOGIT_STAT_NAMES)]  # low top-1 probability first
    curve = [
        {"share": share, "router": caught_at_share(val_scores, val_y, share),
         "confidence": caught_at_share(confidence_scores, val_y, share)}
        for share in CURVE_SHARES
    ]  # fmt: skip
    confidence_auc = auc(confidence_scores, val_y)

    int8_path = int8_diff = int8_auc = None
    if quantize:
        int8_path = quantize_int8(model_path, out_dir / f"{name}.int8.onnx")
        int8_diff = float(np.max(np.abs(onnx_predict(int8_path, sample) - onnx_predict(model_path, sample))))
        int8_auc = auc(onnx_predict(int8_path, val_x), val_y) if result.val_mask.any() else None

    card = RouterCard(
        feature_size=dataset.features.shape[1],
        hidden_size=hidden_size,
        logit_stats=LOGIT_STAT_NAMES,
        calibration=calibration,
        slm=str(dataset.meta.get("slm", "")),
        slm_fingerprint=str(dataset.meta.get("slm_fingerprint", "")),
        training={"config": asdict(config), "data": dataset.meta, "history": result.history},
        metrics={
            "val_auc": result.val_auc,
            "train_auc": result.train_auc,
            "parity_max_abs_diff": parity,
            "int8_max_abs_diff": int8_diff,
            "int8_val_auc": int8_auc,
            "confidence_val_auc": confidence_auc,
            "heldout_curve": curve,
            "calibration_rows": int(len(calibration_scores)),
        },  # fmt: skip
    )
    card_path = out_dir / f"{name}.json"
    card.save(card_path)
    return BuildReport(
        model_path=str(model_path),
        card_path=str(card_path),
        val_auc=result.val_auc,
        train_auc=result.train_auc,
        parity_max_abs_diff=parity,
        int8_path=str(int8_path) if int8_path else None,
        int8_max_abs_diff=int8_diff,
        int8_val_auc=int8_auc,
        positions=len(dataset.labels),
        critical_share=float(dataset.labels.mean()),
        confidence_val_auc=confidence_auc,
        heldout_curve=curve,
    )


def caught_at_share(scores: np.ndarray, labels: np.ndarray, share: float) -> float:
    """Of the critical positions, the fraction among the top ``share`` of scores: what routing there would fix."""
    if not labels.any():
        return float("nan")
    k = int(round(share * len(scores)))
    chosen = np.argsort(-scores, kind="stable")[:k]
    return float(labels[chosen].sum() / labels.sum())
