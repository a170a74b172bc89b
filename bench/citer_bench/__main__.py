"""``citer-bench <benchmark> [options]``: one command per benchmark; ``citer-bench <benchmark> --help`` explains it."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "quality": "HumanEval pass@1 vs cloud share for every policy (the Pareto plot)",
    "share": "realised vs target cloud share on three prompt sets: fixed calibration vs the adaptive controller",
    "throughput": "tokens/s of SLM-only, LLM-only and hybrid decoding",
    "overhead": "per-token time of the SLM step, feature extraction and routing policies",
    "network": "tokens/s and time to first token against an emulated round-trip time",
    "capacity": "concurrent sessions one cloud server sustains, with p50/p99 call latency",
    "resubmit": "per-call server cost vs context length: vLLM's resubmission vs llama.cpp's in-place sessions",
    "buffers": "SLM decode and prefill tokens/s under each llama.cpp weight-buffer setting (AMX, repack)",
    "faults": "stalls, lost tokens and recovery of a generation through network faults and server kills",
    "edge-speed": "tokens/s of every decode mode vs SLM-only against RTT, edge and cloud pinned to their own cores",
    "tie-flips": "where a lossless run's answer differs from the LLM-only one: the LLM's logit margin there",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: citer-bench <benchmark> [options]\n\nbenchmarks:")
        for name, what in BENCHMARKS.items():
            print(f"  {name:12} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"citer_bench.{argv[0].replace('-', '_')}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
