"""ONNX export of the router, a numeric parity check against PyTorch, and optional int8 quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from citer_edge.routing.router import INPUT_NAME, OUTPUT_NAME
from citer_export.model import RouterMLP
from citer_export.train import predict

#: Largest |P_onnx − P_torch| accepted for the float32 export (float rounding only).
PARITY_TOLERANCE = 1e-5


def export_onnx(model: RouterMLP, path: Path) -> Path:
    model.eval()
    dummy = torch.zeros(2, model.feature_size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter: no onnxscript dependency, same graph for an MLP
    )
    return path


def onnx_predict(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: rows.astype(np.float32)})[0]


def parity_max_abs_diff(model: RouterMLP, path: Path, rows: np.ndarray) -> float:
    """Max |P_onnx − P_torch| over ``rows`` (use ≥ 1,000 real feature rows)."""
    return float(np.max(np.abs(onnx_predict(path, rows) - predict(model, rows.astype(np.float32)))))


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of the weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target
