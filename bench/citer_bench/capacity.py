"""How many concurrent hybrid sessions one cloud server sustains, and what each call costs it.

A bounded load generator on loopback: N client threads, each a hybrid
conversation that appends ``--append`` SLM tokens and asks for one LLM token
per call (what a token-level router does between critical tokens), ``--calls``
times. Each server configuration (``--configs``) is a fresh ``citer-cloud``
process: ``serial`` serves one request per forward pass
(``--max-batch-sessions 1``), ``batched`` lets every running request share
each pass, ``vllm`` serves the same model through vLLM (``--vllm-model``: the
LLM as a Hugging Face folder, e.g. made by ``citer-bench gguf-to-hf``).
Reported per configuration and N: calls/s, p50/p95/p99 call latency, forward
passes and prefilled tokens per call (for vLLM: the tokens it computed, i.e.
not found in its prefix cache), and the server's CPU-seconds per produced
token (from /proc, the server's whole process tree: vLLM computes in a child).
A session that fails fails the run: a shrinking sample would flatter the
numbers.

The load generator runs on the same machine as the server, so on a small box
the figures include its contention for the cores.

    citer-bench capacity --sessions 1 2 4 8 16 32 64 --configs serial batched
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc

from citer_bench.machine import RESULTS_DIR, machine_description, write_result
from citer_bench.plotting import saved_axes
from citer_edge import CloudSession, LocalModel, SamplingSettings
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, resolve_model
from citer_export.corpus import SPEED_PROMPTS
from citer_protocol import pb, pb_grpc

FILLER = (
    "    result = []\n    for item in items:\n        if item is not None and item > threshold:\n"
    "            result.append(transform(item))\n    return sorted(result, key=lambda value: -value)\n"
)
CONFIGS = {"serial": ["--max-batch-sessions", "1"], "batched": [], "vllm": ["--backend", "vllm"]}


def one_session(address: str, fingerprint: str, prompt: list[int], filler: list[int], args, latencies: list[float]):
    cloud = CloudSession(address, fingerprint, timeout_s=600)
    context = list(prompt)
    try:
        for call in range(args.calls):
            context += filler[(call * args.append) % len(filler) :][: args.append] or filler[: args.append]
            started = time.perf_counter()
            reply = cloud.decode(context, 1, SamplingSettings())
            if reply is None:
                raise RuntimeError(f"cloud call failed under load: {cloud.last_error}")
            latencies.append(time.perf_counter() - started)
            context += reply.tokens
    finally:
        cloud.close()


def percentile_ms(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least ``q`` of the samples at or below it."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return 1000 * ordered[int(rank) - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and all its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        ticks[child] = int(fields[11]) + int(fields[12])
    tree = {pid}
    grew = True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    return sum(ticks.get(member, 0) for member in tree) / os.sysconf("SC_CLK_TCK")


def run_sessions(address: str, fingerprint: str, prompts: list[list[int]], filler: list[int], n: int, args):
    """N concurrent sessions; every call's latency, or RuntimeError if any session failed."""
    latencies: list[float] = []
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            one_session(address, fingerprint, prompts[index % len(prompts)], filler, args, latencies)
        except BaseException as error:  # re-raised below: any failed session fails the run
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} sessions failed; first: {errors[0]!r}")
    return latencies


def measure(cloud: LocalCloud, fingerprint: str, prompts: list[list[int]], filler: list[int], n: int, args) -> dict:
    with grpc.insecure_channel(cloud.address) as channel:
        before = pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest())
    cpu_before = cpu_seconds(cloud.pid)
    started = time.perf_counter()
    latencies = run_sessions(cloud.address, fingerprint, prompts, filler, n, args)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(cloud.pid) - cpu_before
    with grpc.insecure_channel(cloud.address) as channel:
        after = pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest())
    calls = len(latencies)
    assert calls == n * args.calls
    produced = after.tokens_generated - before.tokens_generated
    ordered = sorted(latencies)
    return {
        "sessions": n,
        "calls": calls,
        "p50_ms": percentile_ms(ordered, 0.50),
        "p95_ms": percentile_ms(ordered, 0.95),
        "p99_ms": percentile_ms(ordered, 0.99),
        "mean_ms": 1000 * statistics.fmean(ordered),
        "calls_per_s": calls / elapsed,
        "forward_passes_per_call": (after.forward_passes - before.forward_passes) / calls,
        "prefilled_tokens_per_call": (after.tokens_prefilled - before.tokens_prefilled) / calls,
        "server_cpu_s_per_token": cpu / produced,
        "evictions": after.sessions_evicted - before.sessions_evicted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench capacity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--calls", type=int, default=10, help="cloud calls per session")
    parser.add_argument("--append", type=int, default=8, help="SLM tokens appended before each call")
    parser.add_argument("--max-sessions", type=int, default=64, help="server's --max-sessions")
    parser.add_argument("--kv-tokens", type=int, default=16384, help="server's --kv-tokens")
    parser.add_argument("--name", default="capacity", help="result file name under bench/results/")
    parser.add_argument("--vllm-model", type=Path, help="the LLM as a Hugging Face folder, for the vllm config")
    parser.add_argument(
        "--vllm-args",
        default="--gpu-memory-utilization 0.1 --max-context 4096",
        help="more citer-cloud flags for the vllm config (default: %(default)s, for vLLM's CPU build)",
    )
    args = parser.parse_args(argv)
    if "vllm" in args.configs and args.vllm_model is None:
        parser.error("the vllm config needs --vllm-model (a Hugging Face folder; see citer-bench gguf-to-hf)")

    llm_path = resolve_model(args.llm)
    with LocalModel(llm_path, n_ctx=512) as tokenizer:  # only for token ids and the fingerprint
        prompts = [
            tokenizer.tokenize(f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n") for p in SPEED_PROMPTS
        ]
        filler = tokenizer.tokenize(FILLER, add_bos=False)
        fingerprint = tokenizer.fingerprint
    results: dict[str, list[dict]] = {}
    for config in args.configs:
        server_args = ["--max-sessions", str(args.max_sessions), "--kv-tokens", str(args.kv_tokens), *CONFIGS[config]]
        model = llm_path
        if config == "vllm":
            model = args.vllm_model
            server_args += args.vllm_args.split()
        rows = results[config] = []
        with LocalCloud(model, extra_args=server_args, startup_timeout_s=900) as cloud:
            for n in args.sessions:
                row = measure(cloud, fingerprint, prompts, filler, n, args)
                rows.append(row)
                print(
                    f"{config:8} {n:3d} sessions: {row['calls_per_s']:6.2f} calls/s  p50 {row['p50_ms']:7.1f}  "
                    f"p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
                    f"{row['forward_passes_per_call']:.2f} passes/call  "
                    f"{row['prefilled_tokens_per_call']:.1f} prefilled/call  "
                    f"{row['server_cpu_s_per_token']:.3f} CPU-s/token",
                    flush=True,
                )
    payload = {
        "benchmark": "cloud-capacity",
        "machine": machine_description(),
        "settings": {
            "llm": llm_path.name,
            "calls": args.calls,
            "append": args.append,
            "max_sessions": args.max_sessions,
            "kv_tokens": args.kv_tokens,
            "configs": {config: describe_config(config, args) for config in args.configs},
            "vllm_model": str(args.vllm_model) if "vllm" in args.configs else None,
            "note": "load generator and server share this machine's cores",
        },
        "results": results,
    }
    path = write_result(args.name, payload)
    plot(payload, RESULTS_DIR / f"{args.name}.png")
    print(f"wrote {path}")
    return 0


def describe_config(config: str, args: argparse.Namespace) -> str:
    if config == "vllm":
        return f"vLLM {' '.join(CONFIGS[config])} {args.vllm_args} (prefix caching on)"
    return "llama.cpp " + (" ".join(CONFIGS[config]) or "batched")


def plot(payload: dict, path: Path) -> None:
    settings = payload["settings"]
    title = f"{settings['llm']}: {settings['append']} tokens appended + 1 produced per call"
    with saved_axes(path, "concurrent sessions", "calls/s (solid)", title) as ax:
        latency = ax.twinx()  # its own scale: p99 grows to tens of seconds while calls/s stays in single digits
        latency.set_ylabel("p99 call latency, s (dashed)")
        for config, rows in payload["results"].items():
            sessions = [r["sessions"] for r in rows]
            line = ax.plot(sessions, [r["calls_per_s"] for r in rows], marker="o", label=f"{config} calls/s")[0]
            latency.plot(sessions, [r["p99_ms"] / 1000 for r in rows], marker="x", linestyle="--",
                         color=line.get_color(), label=f"{config} p99")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        latency.set_ylim(bottom=0)


if __name__ == "__main__":
    sys.exit(main())
