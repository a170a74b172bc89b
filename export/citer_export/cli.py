"""``citer-export``: build router datasets and turn them into a shippable ONNX router with its card."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from citer_export.build import build_router
from citer_export.dataset import RouterDataset, relabel_by_gap
from citer_export.stats import dataset_stats
from citer_export.train import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="citer-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train, export to ONNX, check parity, calibrate and write the card")
    train.add_argument("datasets", nargs="+", type=Path, help=".npz files from `citer-export collect`")
    train.add_argument("--out", type=Path, required=True, help="folder for router.onnx and router.json")
    train.add_argument("--hidden", type=int, default=TrainConfig.hidden)
    train.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    train.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--int8", action="store_true", help="also write an int8-quantised model and its accuracy delta")
    train.add_argument("--gap", type=float, help="re-derive rollout-free labels with this LLM log-prob gap (nats)")
    train.add_argument("--name", default="router", help="file stem: <out>/<name>.onnx and <out>/<name>.json")
    train.add_argument("--calibrate-on", nargs="+", type=Path, default=[],
                       help="fit the share→threshold table on these datasets' held-out prompts only "
                            "(the latest round: trajectories closest to how the router will run)")  # fmt: skip
    stats = sub.add_parser("stats", help="how datasets were labelled, per round; gap rule vs rollouts where both exist")
    stats.add_argument("datasets", nargs="+", type=Path, help=".npz files or folders of them")
    stats.add_argument("--gap", type=float, default=1.0, help="the gap rule to compare with rollout labels (nats)")
    hf = sub.add_parser(
        "hf-folder", help="write a GGUF model as a Hugging Face folder (for citer-cloud --backend vllm)"
    )
    hf.add_argument("model", help="alias or GGUF path")
    hf.add_argument("--out", type=Path, required=True, help="folder to write")
    hf.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    collect = sub.add_parser("collect", help="label SLM positions against the LLM (CITER shortcut + rollouts)")
    from citer_export.collect import add_arguments

    add_arguments(collect)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "collect":
        from citer_export.collect import run

        return run(args)
    if args.command == "hf-folder":
        from citer_edge.models import resolve_model
        from citer_export.hf_folder import gguf_to_hf_folder

        gguf_to_hf_folder(resolve_model(args.model), args.out, args.dtype)
        return 0
    if args.command == "stats":
        report = {path.name: dataset_stats(RouterDataset.concat(_load([path])[1]), args.gap) for path in args.datasets}
        print(json.dumps(report, indent=2))
        return 0
    files, parts = _load(args.datasets)
    dataset = RouterDataset.concat(parts)
    if args.gap is not None:
        dataset = relabel_by_gap(dataset, args.gap)
    calibration_rows = None
    if args.calibrate_on:
        chosen = {path.resolve() for path in _expand(args.calibrate_on)}
        if not chosen <= {path.resolve() for path in files}:
            raise SystemExit("citer-export: error: --calibrate-on datasets must also be among the training datasets")
        calibration_rows = np.concatenate([np.full(len(part.labels), path.resolve() in chosen)
                                           for path, part in zip(files, parts, strict=True)])  # fmt: skip
    config = TrainConfig(hidden=args.hidden, dropout=args.dropout, weight_decay=args.weight_decay,
                         epochs=args.epochs, seed=args.seed)  # fmt: skip
    report = build_router(dataset, args.out, config, quantize=args.int8, name=args.name,
                          calibration_rows=calibration_rows)  # fmt: skip
    print(json.dumps(asdict(report), indent=2))
    return 0


def _load(paths: list[Path]) -> tuple[list[Path], list[RouterDataset]]:
    """The chunk files behind ``paths`` and their datasets, in the same order."""
    files = _expand(paths)
    return files, [RouterDataset.load(path) for path in files]


def _expand(paths: list[Path]) -> list[Path]:
    """Folders stand for the chunk files inside them."""
    files = [f for p in paths for f in (sorted(p.glob("*.npz")) if p.is_dir() else [p])]
    if not files:
        raise SystemExit("citer-export: error: no .npz datasets found in " + " ".join(map(str, paths)))
    return files


if __name__ == "__main__":
    sys.exit(main())
