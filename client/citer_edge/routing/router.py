"""The trained token router at run time: an ONNX model scored by onnxruntime, plus its JSON card.

The card says what the router expects (feature layout and size), what it was
trained on, and how to turn a target cloud share into a threshold, so users
ask for ``cloud_share=0.2`` instead of a raw probability cut.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from citer_edge.errors import ModelNotFoundError, RouterMismatchError
from citer_edge.routing.features import LOGIT_STAT_NAMES, TokenFeatures
from citer_edge.routing.policies import RoutingPolicy

INPUT_NAME = "features"
OUTPUT_NAME = "p_critical"


@dataclass(frozen=True)
class RouterCard:
    """The JSON beside ``router.onnx``: contract, provenance, metrics and calibration."""

    feature_size: int
    hidden_size: int
    logit_stats: tuple[str, ...]
    calibration: tuple[tuple[float, float], ...]  # (cloud share, threshold), share ascending
    slm: str = ""
    slm_fingerprint: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RouterCard:
        data = json.loads(Path(path).read_text())
        return cls(
            feature_size=int(data["feature_size"]),
            hidden_size=int(data["hidden_size"]),
            logit_stats=tuple(data["logit_stats"]),
            calibration=tuple((float(s), float(t)) for s, t in data["calibration"]),
            slm=data.get("slm", ""),
            slm_fingerprint=data.get("slm_fingerprint", ""),
            training=data.get("training", {}),
            metrics=data.get("metrics", {}),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        data = {
            **self.__dict__,
            "logit_stats": list(self.logit_stats),
            "calibration": [list(p) for p in self.calibration],
        }
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    def threshold_for_share(self, cloud_share: float) -> float:
        """Interpolate the calibration table: the P(critical) cut that sends ``cloud_share`` of tokens out."""
        if not self.calibration:
            raise ValueError("this router card has no calibration table")
        shares = np.array([s for s, _ in self.calibration])
        cuts = np.array([t for _, t in self.calibration])
        return float(np.interp(cloud_share, shares, cuts))


def execution_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else the CPU."""
    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    return [*preferred, "CPUExecutionProvider"]


class OnnxRouter:
    """P(critical) for one feature row; one small session pinned to one thread (it rides on the SLM's cores)."""

    def __init__(self, model_path: str | os.PathLike[str], card: RouterCard) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=execution_providers())
        declared = self.session.get_inputs()[0].shape[-1]
        if isinstance(declared, int) and declared != card.feature_size:
            raise RouterMismatchError(
                f"router model takes {declared} features but its card says {card.feature_size}: {model_path}"
            )
        self.card = card

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """P(critical) for a batch of feature rows (float32, shape [n, feature_size])."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(rows, dtype=np.float32)})[0]


class RouterPolicy(RoutingPolicy):
    """Routes with a trained router: cloud when P(critical) ≥ threshold (from a target share or given)."""

    name = "router"

    def __init__(self, router: OnnxRouter, threshold: float | None = None, cloud_share: float | None = None) -> None:
        if (threshold is None) == (cloud_share is None):
            raise ValueError("give exactly one of threshold and cloud_share")
        self.router = router
        self.cloud_share = cloud_share
        self.threshold = threshold if threshold is not None else router.card.threshold_for_share(cloud_share or 0.0)

    @classmethod
    def load(
        cls,
        model_path: str | os.PathLike[str],
        hidden_size: int,
        cloud_share: float | None = None,
        threshold: float | None = None,
    ) -> RouterPolicy:
        """Load ``router.onnx`` and its card (``router.json`` beside it), checking it fits this SLM."""
        path = Path(model_path)
        for needed in (path, path.with_suffix(".json")):
            if not needed.is_file():
                raise ModelNotFoundError(f"router file not found: {needed} (a router is a .onnx with its .json card)")
        card = RouterCard.load(path.with_suffix(".json"))
        expected = hidden_size + len(LOGIT_STAT_NAMES)
        if card.feature_size != expected or tuple(card.logit_stats) != LOGIT_STAT_NAMES:
            raise RouterMismatchError(
                f"router {path.name} expects {card.feature_size} features ({card.hidden_size}-dim hidden state + "
                f"{', '.join(card.logit_stats)}) but this SLM gives {expected} ({hidden_size} + "
                f"{', '.join(LOGIT_STAT_NAMES)}); use a router trained for this SLM"
            )
        return cls(OnnxRouter(path, card), threshold=threshold, cloud_share=cloud_share)

    def critical_probability(self, features: TokenFeatures) -> float:
        return float(self.router.predict(features.router_input()[None, :])[0])

    def describe(self) -> str:
        target = f"share={self.cloud_share:g}, " if self.cloud_share is not None else ""
        return f"router({target}p>={self.threshold:.3g})"


#: Routers trained for the registry's SLMs ship inside the package: ``<name>.onnx`` beside ``<name>.json``.
SHIPPED_DIR = Path(__file__).parent / "routers"


def shipped_router(slm_file: str, hidden_size: int) -> Path | None:
    """The packaged router trained for this SLM, matched on the GGUF file name and hidden size; None if none."""
    for card_path in sorted(SHIPPED_DIR.glob("*.json")):
        card = RouterCard.load(card_path)
        if card.slm == slm_file and card.hidden_size == hidden_size and card_path.with_suffix(".onnx").is_file():
            return card_path.with_suffix(".onnx")
    return None


def default_policy(slm_file: str, hidden_size: int, cloud_share: float, fallback: RoutingPolicy) -> RoutingPolicy:
    """The shipped router at ``cloud_share`` where one fits this SLM, else ``fallback`` (the confidence rule)."""
    path = shipped_router(slm_file, hidden_size)
    return RouterPolicy.load(path, hidden_size, cloud_share=cloud_share) if path else fallback
