"""Reliability under faults: the fault matrix of tests/test_faults.py, repeated, as a table.

A real client generates through a fault proxy to a real ``citer-cloud`` child,
with every token asked of the cloud (policy ``cloud``, greedy, a counting
prompt), while the network or the server fails: the route is cut, latency
goes beyond the deadline, a black hole swallows everything, Decode never
answers, connections are reset, the server is SIGKILLed and restarted three
times. Per fault: the longest wait between two tokens (p50 and max over the
repeats), tokens lost, how long after the fault was lifted the cloud produced
a token again, resyncs, and tokens that differ from the replay (each token's
greedy choice by the model that produced it, given the transcript before it).

    citer-bench faults --repeats 5
    citer-bench faults --slm qwen2.5-coder-0.5b --llm qwen2.5-coder-1.5b

The default pair is SmolLM2-135M on both sides: the faults, not the models,
are measured, and a small model keeps a run short.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys

from citer_bench.fault_matrix import (
    FAULTS,
    ClientSettings,
    FaultRun,
    FaultTarget,
    RestartableCloud,
    replay_origins,
    run_fault,
)
from citer_bench.fault_proxy import FaultProxy
from citer_bench.machine import RESULTS_DIR, machine_description, write_result
from citer_edge import LocalModel
from citer_edge.cloud.session import DEFAULT_TIMEOUT_S
from citer_edge.models import resolve_model

#: The same counting prompt as tests/conftest.py: greedy's choice is clear at every step, so a token the
#: replay disagrees with is a lost or garbled context, not numerics.
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
MIN_MARGIN = 1.0  # logits; as tests/conftest.py: below it, cloud and local numerics may pick differently


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default="smollm2-135m")
    parser.add_argument("--llm", default="smollm2-135m")
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--repeats", type=int, default=3, help="generations per fault")
    parser.add_argument("--max-tokens", type=int, default=160, help="tokens per generation")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="the client's call deadline")
    parser.add_argument(
        "--backoff-s",
        type=float,
        nargs=2,
        default=(0.5, 4.0),
        metavar=("FIRST", "MAX"),
        help="the client's circuit backoff (shipped: 5 120; shorter, so that a generation spans fault and recovery)",
    )
    parser.add_argument("--name", default="faults", help="result file name under bench/results/")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    settings = ClientSettings(timeout_s=args.timeout_s, backoff_s=tuple(args.backoff_s))
    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    runs: dict[str, list[dict[str, object]]] = {}
    with LocalModel(slm_path) as slm, RestartableCloud(llm_path) as server:
        llm = slm if llm_path == slm_path else LocalModel(llm_path)
        prompt = slm.tokenize(PROMPT)
        try:
            for name in args.faults:
                runs[name] = []
                for repeat in range(args.repeats):
                    run = _one_run(name, slm, server, settings, prompt, args.max_tokens)
                    replay = replay_origins({"slm": slm, "llm": llm}, prompt, run.tokens, run.sources)
                    mismatches = replay.mismatches(run.tokens, MIN_MARGIN)
                    runs[name].append(
                        run.to_dict()
                        | {
                            "replay_mismatches": mismatches,
                            "replay_near_ties": replay.near_ties(MIN_MARGIN),
                            "llm_tokens_under_fault": _llm_under_fault(run),
                        }
                    )
                    print(f"#{repeat + 1} {run.describe()}; {len(mismatches)} != replay", file=sys.stderr)
        finally:
            if llm is not slm:
                llm.close()

    summary = {name: summarise(records, args.max_tokens) for name, records in runs.items()}
    payload = {
        "benchmark": "faults",
        "machine": machine_description(),
        "settings": {
            "slm": slm_path.name,
            "llm": llm_path.name,
            "prompt": PROMPT,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "policy": "cloud (every token asked of the cloud), greedy",
            "client": {
                "timeout_s": settings.timeout_s,
                "connect_timeout_s": "shipped default",
                "backoff_s": list(settings.backoff_s or ()),
            },
            "max_deadline_s": settings.deadline_s(len(prompt) + args.max_tokens),
            "faults": {name: FAULTS[name].description for name in args.faults},
            "min_margin_logits": MIN_MARGIN,
        },
        "summary": summary,
        "runs": runs,
    }
    path = write_result(args.name, payload)
    table = markdown_table(summary)
    print(table)
    markdown = RESULTS_DIR / f"{args.name}.md"
    markdown.write_text(report(payload, table))
    print(f"wrote {path} and {markdown}")
    return 0


def _one_run(
    name: str, slm: LocalModel, server: RestartableCloud, settings: ClientSettings, prompt: list[int], max_tokens: int
) -> FaultRun:
    with FaultProxy(server.port) as proxy:
        target = FaultTarget(proxy, server, beyond_deadline_s=settings.deadline_s(len(prompt) + max_tokens))
        return run_fault(FAULTS[name], slm, target, settings, prompt, max_tokens)


def _llm_under_fault(run: FaultRun) -> int:
    """Tokens labelled as the cloud's although the cloud was unreachable when they were produced (must be 0)."""
    return sum(source == "llm" for w in run.windows for source in run.sources[w.injected_at : w.lifted_at])


def summarise(records: list[dict[str, object]], max_tokens: int) -> dict[str, object]:
    """Per fault: the longest gap's p50 and max over the runs, tokens lost, recovery times, resyncs, mismatches."""
    gaps = sorted(float(r["longest_gap_s"]) for r in records)  # type: ignore[arg-type]
    resumed = [w["resumed_after_s"] for r in records for w in r["windows"]]  # type: ignore[union-attr]
    measured = sorted(float(x) for x in resumed if x is not None)
    return {
        "runs": len(records),
        "longest_gap_ms_p50": round(1000 * statistics.median(gaps), 1),
        "longest_gap_ms_max": round(1000 * gaps[-1], 1),
        "tokens_lost": sum(max_tokens - len(r["tokens"]) for r in records),  # type: ignore[arg-type]
        "resumed_after_s_p50": round(statistics.median(measured), 2) if measured else None,
        "resumed_after_s_max": round(measured[-1], 2) if measured else None,
        "never_resumed": sum(x is None for x in resumed),
        "resyncs": [r["resyncs"] for r in records],
        "replay_mismatches": sum(len(r["replay_mismatches"]) for r in records),  # type: ignore[arg-type]
        "llm_tokens_under_fault": sum(r["llm_tokens_under_fault"] for r in records),  # type: ignore[misc]
    }


def markdown_table(summary: dict[str, dict[str, object]]) -> str:
    lines = [
        "| fault | stall p50 / max (ms) | tokens lost | routing resumed after (s), p50 / max | resyncs | ≠ replay |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        resumed = (
            f"{row['resumed_after_s_p50']:.2f} / {row['resumed_after_s_max']:.2f}"
            if row["resumed_after_s_p50"] is not None
            else "never"
        )
        if row["never_resumed"] and row["resumed_after_s_p50"] is not None:
            resumed += f" ({row['never_resumed']} never)"
        lines.append(
            f"| {FAULTS[name].description} | {row['longest_gap_ms_p50']:.0f} / {row['longest_gap_ms_max']:.0f} | "
            f"{row['tokens_lost']} | {resumed} | {_span(row['resyncs'])} | {row['replay_mismatches']} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"


def _span(values: list[int]) -> str:
    """``3`` when every run agrees, ``0–1`` when they do not."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def report(payload: dict[str, object], table: str) -> str:
    settings = payload["settings"]
    machine = payload["machine"]
    assert isinstance(settings, dict) and isinstance(machine, dict)
    client = settings["client"]
    return (
        "# Reliability under faults\n\n"
        f"`citer-bench faults --repeats {settings['repeats']}`: {settings['repeats']} generations per fault of "
        f"{settings['max_tokens']} greedy tokens, every token asked of the cloud; {settings['slm']} on the edge, "
        f"{settings['llm']} in the cloud; {machine['cpu']}, {machine['cores']} cores, {machine['date_utc']}. "
        f"Client: deadline {client['timeout_s']:g} s plus 10 ms per token sent, shipped connect timeout, backoff "
        f"{client['backoff_s'][0]:g}–{client['backoff_s'][1]:g} s (shipped: 5–120 s). Raw runs in `faults.json`.\n\n"
        + table
        + "\n"
        "- **stall**: the longest time the generator took for one token (the first excluded), per generation; "
        "p50 and max over the generations.\n"
        "- **tokens lost**: tokens asked for minus tokens delivered, over all generations.\n"
        "- **routing resumed after**: from the fault being lifted (the proxy restored, the restarted server "
        "ready) to the next token the cloud produced; mostly the rest of the client's backoff.\n"
        "- **resyncs**: full-context resends per generation (only a server that lost the session needs one).\n"
        "- **≠ replay**: tokens that differ from their origin model's greedy choice given the transcript before "
        f"them, where that choice leads by more than {settings['min_margin_logits']:g} logits.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
