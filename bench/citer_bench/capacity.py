"""How many concurrent hybrid sessions one cloud server sustains, and at what call latency.

A bounded load generator on loopback: N client threads, each a hybrid
conversation that sends ``--append`` SLM tokens and asks for one LLM token per
call (what a token-level router does between critical tokens), ``--calls``
times. Reported per N: p50/p99 call latency, calls/s and prefilled tokens/s.

    citer-bench capacity --sessions 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc

from citer_bench.machine import RESULTS_DIR, machine_description, write_result
from citer_bench.plotting import saved_axes
from citer_edge import CloudSession, LocalModel, SamplingSettings
from citer_edge.local_cloud import LocalCloud
from citer_edge.models import DEFAULT_LLM, resolve_model
from citer_export.corpus import SPEED_PROMPTS
from citer_protocol import pb, pb_grpc

FILLER = (
    "    result = []\n    for item in items:\n        if item is not None and item > threshold:\n"
    "            result.append(transform(item))\n    return sorted(result, key=lambda value: -value)\n"
)


def one_session(address: str, fingerprint: str, prompt: list[int], filler: list[int], args, latencies: list[float]):
    cloud = CloudSession(address, fingerprint, timeout_s=600)
    context = list(prompt)
    try:
        for call in range(args.calls):
            context += filler[(call * args.append) % len(filler) :][: args.append] or filler[: args.append]
            started = time.perf_counter()
            reply = cloud.decode(context, 1, SamplingSettings())
            latencies.append(time.perf_counter() - started)
            if reply is None:
                raise RuntimeError("cloud call failed under load")
            context += reply.tokens
    finally:
        cloud.close()


def measure(address: str, fingerprint: str, prompts: list[list[int]], filler: list[int], n: int, args) -> dict:
    with grpc.insecure_channel(address) as channel:
        before = pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest())
    latencies: list[float] = []
    threads = [
        threading.Thread(target=one_session, args=(address, fingerprint, prompts[i % len(prompts)], filler, args,
                                                   latencies))
        for i in range(n)
    ]  # fmt: skip
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    with grpc.insecure_channel(address) as channel:
        after = pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest())
    ordered = sorted(latencies)
    return {
        "sessions": n,
        "calls": len(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[max(0, int(len(ordered) * 0.99) - 1)],
        "mean_ms": 1000 * statistics.fmean(ordered),
        "calls_per_s": len(ordered) / elapsed,
        "prefilled_tokens_per_s": (after.tokens_prefilled - before.tokens_prefilled) / elapsed,
        "evictions": after.sessions_evicted - before.sessions_evicted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench capacity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--calls", type=int, default=10, help="cloud calls per session")
    parser.add_argument("--append", type=int, default=8, help="SLM tokens appended before each call")
    parser.add_argument("--max-sessions", type=int, default=32, help="server's --max-sessions")
    parser.add_argument("--name", default="capacity", help="result file name under bench/results/")
    args = parser.parse_args(argv)

    llm_path = resolve_model(args.llm)
    with LocalModel(llm_path, n_ctx=512) as tokenizer:  # only for token ids and the fingerprint
        prompts = [
            tokenizer.tokenize(f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n") for p in SPEED_PROMPTS
        ]
        filler = tokenizer.tokenize(FILLER, add_bos=False)
        fingerprint = tokenizer.fingerprint
    rows = []
    with LocalCloud(llm_path, extra_args=["--max-sessions", str(args.max_sessions)]) as cloud:
        for n in args.sessions:
            rows.append(measure(cloud.address, fingerprint, prompts, filler, n, args))
            row = rows[-1]
            print(
                f"{n:3d} sessions: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                f"{row['calls_per_s']:6.2f} calls/s  {row['prefilled_tokens_per_s']:7.1f} prefilled tok/s"
            )
    payload = {
        "benchmark": "cloud-capacity",
        "machine": machine_description(),
        "settings": {
            "llm": llm_path.name,
            "calls": args.calls,
            "append": args.append,
            "max_sessions": args.max_sessions,
            "backend": "llama.cpp, requests served one at a time",
        },  # fmt: skip
        "results": rows,
    }
    path = write_result(args.name, payload)
    plot(payload, RESULTS_DIR / f"{args.name}.png")
    print(f"wrote {path}")
    return 0


def plot(payload: dict, path: Path) -> None:
    rows = payload["results"]
    settings = payload["settings"]
    title = f"{settings['llm']}: {settings['append']} tokens appended + 1 produced per call"
    with saved_axes(path, "concurrent sessions", "cloud call latency (ms)", title) as ax:
        ax.plot([r["sessions"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label="p50")
        ax.plot([r["sessions"] for r in rows], [r["p99_ms"] for r in rows], marker="o", label="p99")
        ax.set_xscale("log", base=2)


if __name__ == "__main__":
    sys.exit(main())
