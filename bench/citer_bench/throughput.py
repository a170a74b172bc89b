"""Tokens/s of SLM-only, LLM-only and hybrid decoding on one machine, with the cloud on loopback.

Each mode generates greedy answers to the same chat prompts. The SLM's KV
cache is cleared before every prompt and every prompt opens a new cloud
session, so no run reuses another's cache (cold numbers). Modes:

- ``slm``: policy local, the SLM alone.
- ``llm-generate``: the cloud's Generate RPC streaming the LLM alone.
- ``llm-hybrid``: policy cloud in the hybrid loop (each token a cloud call,
  also written back into the SLM so it could take over at any point).
- ``hybrid-confidence``: policy confidence, route when top-1 < --threshold.

On a 2-core machine the SLM and the cloud share the cores, so hybrid speed
here is a lower bound on a real device plus a GPU server.

    citer-bench throughput --slm qwen2.5-coder-0.5b --llm qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence

import grpc
from tqdm import tqdm

from citer_bench.machine import machine_description, write_result
from citer_edge import CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_edge.chat.conversation import Conversation
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_edge.routing.policies import make_policy
from citer_export.corpus import SPEED_PROMPTS
from citer_protocol import pb, pb_grpc

MODES = ("slm", "llm-generate", "llm-hybrid", "hybrid-confidence")


def chat_prompts(slm: LocalModel, texts: Sequence[str]) -> list[list[int]]:
    """Each text as a one-message chat, in the SLM's own template."""
    prompts = []
    for text in texts:
        conversation = Conversation(slm)
        conversation.add_user(text)
        prompts.append(conversation.prompt_tokens())
    return prompts


def run_hybrid(slm: LocalModel, address: str, policy_name: str, threshold: float, prompt: list[int], n: int) -> dict:
    cloud = CloudSession(address, slm.fingerprint, timeout_s=60) if policy_name != "local" else None
    slm.reset()
    try:
        generator = HybridGenerator(slm, make_policy(policy_name, threshold), cloud)
        result = generator.generate(prompt, max_tokens=n, sampling=SamplingSettings())
    finally:
        if cloud is not None:
            cloud.close()
    summary = result.summary
    return {
        "tokens": summary.tokens,
        "elapsed_s": summary.elapsed_s,
        "ttft_s": summary.time_to_first_token_s,
        "cloud_tokens": summary.cloud_tokens,
        "cloud_calls": summary.cloud_calls,
        "cloud_wait_s": summary.cloud_wait_s,
    }


def run_generate(address: str, prompt: list[int], n: int) -> dict:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        started = time.perf_counter()
        ttft = None
        tokens = 0
        for _ in stub.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=n), timeout=600):
            tokens += 1
            ttft = ttft if ttft is not None else time.perf_counter() - started
        elapsed = time.perf_counter() - started
    return {"tokens": tokens, "elapsed_s": elapsed, "ttft_s": ttft or 0.0, "cloud_tokens": tokens, "cloud_calls": 1}


def summarise(runs: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in runs)
    elapsed = sum(r["elapsed_s"] for r in runs)
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "ttft_s_median": statistics.median(r["ttft_s"] for r in runs),
        "cloud_share": sum(r["cloud_tokens"] for r in runs) / tokens if tokens else 0.0,
        "cloud_calls": sum(r["cloud_calls"] for r in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM, help="SLM alias or GGUF path")
    parser.add_argument("--llm", default=DEFAULT_LLM, help="LLM alias or GGUF path (served on loopback)")
    parser.add_argument("--prompts", type=int, default=len(SPEED_PROMPTS), help="how many of the fixed prompts")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--threshold", type=float, default=0.6, help="confidence policy: top-1 probability cut")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--name", default="throughput", help="result file name under bench/results/")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    results: dict[str, dict] = {}
    with LocalCloud(llm_path) as cloud, LocalModel(slm_path) as slm:
        prompts = chat_prompts(slm, SPEED_PROMPTS[: args.prompts])
        for mode in args.modes:
            runs = []
            for prompt in tqdm(prompts, desc=mode, file=sys.stderr):
                if mode == "llm-generate":
                    runs.append(run_generate(cloud.address, prompt, args.max_tokens))
                else:
                    policy = {"slm": "local", "llm-hybrid": "cloud", "hybrid-confidence": "confidence"}[mode]
                    runs.append(run_hybrid(slm, cloud.address, policy, args.threshold, prompt, args.max_tokens))
            results[mode] = summarise(runs)

    print(f"{'mode':20} {'tok/s':>7} {'TTFT s':>7} {'cloud share':>11} {'cloud calls':>11}")
    for mode, row in results.items():
        print(
            f"{mode:20} {row['tokens_per_s']:7.1f} {row['ttft_s_median']:7.2f} "
            f"{row['cloud_share']:11.0%} {row['cloud_calls']:11d}"
        )
    path = write_result(
        args.name,
        {
            "benchmark": "throughput",
            "machine": machine_description(),
            "settings": {
                "slm": str(slm_path.name),
                "llm": str(llm_path.name),
                "prompts": args.prompts,
                "max_tokens": args.max_tokens,
                "threshold": args.threshold,
                "sampling": "greedy",
                "cache": "cold: SLM KV cleared and a new cloud session per prompt",
            },
            "results": results,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
