"""Edge overhead per token: the SLM step, feature extraction and the routing decision, timed apart.

The router must be cheap next to the SLM step it rides on (target: ≤ 2 % of
the SLM's per-token time). Timings are taken on a real decode of a fixed
prompt, one token at a time, with the SLM's KV cache cleared first.

Policies timed include the router shipped for the SLM (and any ``--router``);
``route()`` is what the decode loop calls, so the ONNX session run and the
feature-row copy are both inside the number.

    citer-bench overhead --slm qwen2.5-coder-0.5b --tokens 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from citer_bench.machine import machine_description, write_result
from citer_edge import LocalModel, SamplingSettings
from citer_edge.chat.conversation import Conversation
from citer_edge.models import DEFAULT_SLM, resolve_model
from citer_edge.routing.features import extract_features
from citer_edge.routing.policies import ConfidencePolicy, RandomPolicy, RoutingPolicy
from citer_edge.routing.router import RouterPolicy, shipped_router
from citer_export.corpus import SPEED_PROMPTS
from citer_protocol import sample_token


def _stats_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "mean_ms": 1000 * statistics.fmean(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p95_ms": 1000 * ordered[int(len(ordered) * 0.95) - 1],
    }


def measure(slm: LocalModel, policies: dict[str, RoutingPolicy], n_tokens: int) -> dict[str, object]:
    conversation = Conversation(slm)
    conversation.add_user(SPEED_PROMPTS[0])
    slm.reset()
    slm.eval(conversation.prompt_tokens())
    rng = np.random.default_rng(0)
    step, features_t, sample_t = [], [], []
    policy_t: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(n_tokens):
        t0 = time.perf_counter()
        features = extract_features(slm.logits, slm.hidden)
        t1 = time.perf_counter()
        for name, policy in policies.items():
            start = time.perf_counter()
            policy.route(features)
            policy_t[name].append(time.perf_counter() - start)
        t2 = time.perf_counter()
        token = sample_token(slm.logits, SamplingSettings(), rng)
        t3 = time.perf_counter()
        if slm.is_end(token):
            token = slm.tokenize(" the", add_bos=False)[0]  # keep decoding: we time steps, not answers
        slm.eval([token])
        t4 = time.perf_counter()
        features_t.append(t1 - t0)
        sample_t.append(t3 - t2)
        step.append(t4 - t3)
    slm_mean = statistics.fmean(step)
    return {
        "slm_step": _stats_ms(step),
        "feature_extraction": _stats_ms(features_t),
        "sampling": _stats_ms(sample_t),
        "policies": {
            name: {**_stats_ms(times), "share_of_slm_step": statistics.fmean(times) / slm_mean}
            for name, times in policy_t.items()
        },
        "features_share_of_slm_step": statistics.fmean(features_t) / slm_mean,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--tokens", type=int, default=200, help="decode steps to time")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--router", action="append", default=[],
                        help="another router.onnx to time (repeatable; the shipped one is always timed)")  # fmt: skip
    parser.add_argument("--name", default="overhead", help="result file name under bench/results/")
    args = parser.parse_args(argv)
    slm_path = resolve_model(args.slm)
    policies: dict[str, RoutingPolicy] = {"confidence": ConfidencePolicy(0.6), "random": RandomPolicy(0.2)}
    with LocalModel(slm_path, n_threads=args.threads) as slm:
        shipped = shipped_router(slm_path.name, slm.hidden_size)
        for path in [*([shipped] if shipped else []), *map(Path, args.router)]:
            name = "router" if path == shipped else f"router:{path.stem}"
            policies[name] = RouterPolicy.load(path, slm.hidden_size, cloud_share=0.2)
        result = measure(slm, policies, args.tokens)
    print(f"SLM step          {result['slm_step']['mean_ms']:8.3f} ms/token")
    print(f"features          {result['feature_extraction']['mean_ms']:8.3f} ms "
          f"({result['features_share_of_slm_step']:.2%} of the SLM step)")  # fmt: skip
    print(f"sampling          {result['sampling']['mean_ms']:8.3f} ms")
    for name, row in result["policies"].items():
        print(f"policy {name:10} {row['mean_ms']:8.4f} ms ({row['share_of_slm_step']:.3%} of the SLM step)")
    path = write_result(
        args.name,
        {"benchmark": "edge-overhead", "machine": machine_description(),
         "settings": {"slm": slm_path.name, "tokens": args.tokens, "threads": args.threads}, "results": result},
    )  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
