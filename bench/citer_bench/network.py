"""Tokens/s and time to first token against network round-trip time, through a delaying TCP proxy.

Modes at each RTT: SLM-only (no network), hybrid with the confidence policy,
and cloud-only streaming (``Generate``). A hybrid pays one RTT per cloud call;
a stream pays it once. The plot shows tokens/s against RTT for each mode.

    citer-bench network --rtt-ms 0 20 50 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from citer_bench.delay_proxy import DelayProxy
from citer_bench.machine import RESULTS_DIR, machine_description, write_result
from citer_bench.plotting import saved_axes
from citer_bench.throughput import chat_prompts, run_generate, run_hybrid, summarise
from citer_edge import LocalModel
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_export.corpus import SPEED_PROMPTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench network", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0, 20, 50, 100])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threshold", type=float, default=0.6, help="confidence policy cut")
    parser.add_argument("--name", default="network", help="result file name under bench/results/")
    args = parser.parse_args(argv)

    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    rows: dict[str, dict[str, dict]] = {"slm": {}, "hybrid-confidence": {}, "llm-generate": {}}
    with LocalCloud(llm_path) as cloud, LocalModel(slm_path) as slm:
        prompts = chat_prompts(slm, SPEED_PROMPTS[: args.prompts])
        slm_runs = [run_hybrid(slm, "", "local", 0.0, p, args.max_tokens) for p in tqdm(prompts, desc="slm")]
        for rtt in args.rtt_ms:
            rows["slm"][str(rtt)] = summarise(slm_runs)  # no network in the loop: the same at every RTT
            with DelayProxy(cloud.port, rtt_ms=rtt) as proxy:
                hybrid = [run_hybrid(slm, proxy.address, "confidence", args.threshold, p, args.max_tokens)
                          for p in tqdm(prompts, desc=f"hybrid rtt={rtt:g}ms", file=sys.stderr)]  # fmt: skip
                stream = [run_generate(proxy.address, p, args.max_tokens)
                          for p in tqdm(prompts, desc=f"generate rtt={rtt:g}ms", file=sys.stderr)]  # fmt: skip
            rows["hybrid-confidence"][str(rtt)] = summarise(hybrid)
            rows["llm-generate"][str(rtt)] = summarise(stream)

    print(f"{'mode':18} " + " ".join(f"{f'{r:g} ms':>16}" for r in args.rtt_ms))
    for mode, by_rtt in rows.items():
        cells = [
            f"{by_rtt[str(r)]['tokens_per_s']:6.1f} t/s {by_rtt[str(r)]['ttft_s_median']:5.2f}s" for r in args.rtt_ms
        ]
        print(f"{mode:18} " + " ".join(f"{c:>16}" for c in cells))
    payload = {
        "benchmark": "network-rtt",
        "machine": machine_description(),
        "settings": {
            "slm": slm_path.name,
            "llm": llm_path.name,
            "rtt_ms": args.rtt_ms,
            "prompts": args.prompts,
            "max_tokens": args.max_tokens,
            "threshold": args.threshold,
            "emulation": "asyncio TCP proxy on loopback delaying each direction by rtt/2",
        },  # fmt: skip
        "results": {
            mode: {rtt: {k: v for k, v in row.items() if k != "runs"} for rtt, row in by_rtt.items()}
            for mode, by_rtt in rows.items()
        },  # fmt: skip
    }
    path = write_result(args.name, payload)
    plot(payload, RESULTS_DIR / f"{args.name}.png")
    print(f"wrote {path}")
    return 0


def plot(payload: dict, path: Path) -> None:
    title = f"{payload['settings']['slm']} + {payload['settings']['llm']}"
    with saved_axes(path, "round-trip time (ms)", "tokens/s", title) as ax:
        for mode, by_rtt in payload["results"].items():
            rtts = sorted(by_rtt, key=float)
            ax.plot([float(r) for r in rtts], [by_rtt[r]["tokens_per_s"] for r in rtts], marker="o", label=mode)


if __name__ == "__main__":
    sys.exit(main())
