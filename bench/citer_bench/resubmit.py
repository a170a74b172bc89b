"""What one hybrid call costs the server as a conversation grows: vLLM resubmits, llama.cpp extends in place.

llama.cpp keeps each session's sequence in its KV cache and appends the delta.
vLLM is handed the whole sequence on every call and finds the cached part by
prefix matching, allocating blocks as it goes; the 2026 TokenRouter paper
found that this per-call overhead grows with context. For each context length
(``--contexts``), one session is prefilled to that length, then makes
``--calls`` calls shaped like the hybrid's (append ``--append`` tokens,
produce 1). Reported per backend and length: p50/p95 call latency, tokens
the server computed per call (vLLM: appended + the recomputed partial block)
and server CPU-seconds per call (the whole process tree).

    citer-bench resubmit --vllm-model DIR --contexts 256 1024 2048 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import grpc

from citer_bench.capacity import CONFIGS, FILLER, cpu_seconds, describe_config, percentile_ms
from citer_bench.machine import RESULTS_DIR, machine_description, write_result
from citer_bench.plotting import saved_axes
from citer_edge import CloudSession, LocalModel, SamplingSettings
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, resolve_model
from citer_protocol import pb, pb_grpc


def stats(address: str) -> pb.StatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest())


def measure(cloud: LocalCloud, fingerprint: str, filler: list[int], context_len: int, args) -> dict:
    """One session at ``context_len`` tokens, then ``args.calls`` append-and-produce calls."""
    context = (filler * (context_len // len(filler) + 1))[:context_len]
    session = CloudSession(cloud.address, fingerprint, timeout_s=600)
    try:
        first = session.decode(context, 1, SamplingSettings())  # the prefill, not measured
        if first is None:
            raise RuntimeError(f"prefill failed: {session.last_error}")
        context += first.tokens
        before, cpu_before = stats(cloud.address), cpu_seconds(cloud.pid)
        latencies = []
        for call in range(args.calls):
            context += filler[(call * args.append) % len(filler) :][: args.append] or filler[: args.append]
            started = time.perf_counter()
            reply = session.decode(context, 1, SamplingSettings())
            latencies.append(time.perf_counter() - started)
            if reply is None:
                raise RuntimeError(f"call failed: {session.last_error}")
            context += reply.tokens
        cpu = cpu_seconds(cloud.pid) - cpu_before
        after = stats(cloud.address)
    finally:
        session.close()
    ordered = sorted(latencies)
    return {
        "context": context_len,
        "calls": args.calls,
        "p50_ms": percentile_ms(ordered, 0.5),
        "p95_ms": percentile_ms(ordered, 0.95),
        "mean_ms": 1000 * statistics.fmean(ordered),
        "computed_tokens_per_call": (after.tokens_prefilled - before.tokens_prefilled) / args.calls,
        "server_cpu_ms_per_call": 1000 * cpu / args.calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench resubmit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", default=DEFAULT_LLM, help="the GGUF (llama.cpp, and the token ids for both)")
    parser.add_argument("--vllm-model", type=Path, help="the LLM as a Hugging Face folder (citer-export hf-folder)")
    parser.add_argument("--configs", nargs="+", default=["batched", "vllm"], choices=list(CONFIGS))
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--append", type=int, default=8)
    parser.add_argument("--vllm-args", default="--gpu-memory-utilization 0.1 --max-context 8192")
    parser.add_argument("--name", default="resubmit")
    args = parser.parse_args(argv)
    if "vllm" in args.configs and args.vllm_model is None:
        parser.error("the vllm config needs --vllm-model (a Hugging Face folder; see citer-export hf-folder)")
    llm_path = resolve_model(args.llm)
    with LocalModel(llm_path, n_ctx=512) as tokenizer:
        filler = tokenizer.tokenize(FILLER, add_bos=False)
        fingerprint = tokenizer.fingerprint
    results: dict[str, list[dict]] = {}
    for config in args.configs:
        model, server_args = llm_path, ["--kv-tokens", str(max(args.contexts) + 1024), *CONFIGS[config]]
        if config == "vllm":
            model, server_args = args.vllm_model, server_args + args.vllm_args.split()
        rows = results[config] = []
        with LocalCloud(model, extra_args=server_args, startup_timeout_s=900) as cloud:
            for context_len in args.contexts:
                row = measure(cloud, fingerprint, filler, context_len, args)
                rows.append(row)
                print(
                    f"{config:8} context {context_len:5d}: p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                    f"{row['computed_tokens_per_call']:6.1f} computed/call  "
                    f"{row['server_cpu_ms_per_call']:7.1f} server CPU-ms/call",
                    flush=True,
                )
    payload = {
        "benchmark": "resubmit-overhead",
        "machine": machine_description(),
        "settings": {
            "llm": llm_path.name,
            "vllm_model": str(args.vllm_model) if args.vllm_model else None,
            "calls": args.calls,
            "append": args.append,
            "configs": {config: describe_config(config, args) for config in args.configs},
            "note": "one session at a time; client and server share this machine's cores",
        },
        "results": results,
    }
    path = write_result(args.name, payload)
    with saved_axes(
        RESULTS_DIR / f"{args.name}.png",
        "context length (tokens)",
        "p50 call latency (ms)",
        f"{llm_path.name}: append {args.append} + produce 1 per call",
    ) as ax:
        for config, rows in results.items():
            ax.plot([r["context"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=config)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
