"""Does ``--cloud-share`` hold? Realised vs target cloud share, fixed calibration vs the adaptive controller.

For each prompt set (standard-library functions, chat messages, HumanEval),
target share and control, the default pair decodes every prompt in turn with
the shipped router and a real cloud (``LocalCloud``), greedy:

- ``fixed``: the router's cut from its card's calibration table (fitted on the
  router's own standard-library trajectories), what ``--cloud-share`` does by
  default;
- ``adaptive``: ``ShareController`` around the same router (``--share-control
  adaptive``), starting cold from the card (no learned state) and carrying its
  state from prompt to prompt within the run, as it would across one user's
  conversations.

Realised share is cloud tokens over generated tokens. HumanEval answers are
also run against their tests (pass@1). The fixed router's committed HumanEval
runs (``bench/results/humaneval/router-*.jsonl``, ``--reuse-fixed``) can stand
in for fixed-calibration runs at the same settings, restricted to the same
problems; the controller's pass@1 is compared with the fixed curve
interpolated at the controller's realised share (SLM-only and LLM-only runs
on the same problems as the ends).

Standard-library prompts come from a slice of the shuffled corpus that no
router training round used (offset 1000). Each run is written to
``<out>/<set>-<control>-<target>.json`` when it completes; a rerun skips
runs completed with the same prompts and token limit.

    citer-bench share --limit-humaneval 60 --limit-stdlib 8 --limit-chat 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from citer_bench.humaneval import check_completion, load_problems, truncate_at_stop
from citer_bench.machine import RESULTS_DIR, machine_description
from citer_edge import CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_edge.chat.conversation import Conversation
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_edge.routing.controller import ShareController, card_prior
from citer_edge.routing.policies import RoutingPolicy
from citer_edge.routing.router import RouterPolicy, shipped_router
from citer_export.corpus import shuffled_prompts, stdlib_function_prompts

log = logging.getLogger("citer_bench.share")

#: Short, varied chat messages (not code completion, not HumanEval): what a chat user sends.
CHAT_PROMPTS: tuple[str, ...] = (
    "What is the difference between a list and a tuple in Python?",
    "Explain recursion to a ten-year-old.",
    "Write a haiku about autumn rain.",
    "How do I reverse a string in JavaScript?",
    "Give me three tips for writing clear commit messages.",
    "What does HTTP status 418 mean?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Write a SQL query that counts orders per customer.",
    "Why is the sky blue?",
    "Suggest a name for a cat that likes to sleep in boxes.",
    "How can I make my Python script run faster?",
    "Translate 'good morning, how are you?' into French.",
    "What is a race condition? Give a short example.",
    "Write a bash one-liner that finds the ten largest files in a folder.",
    "What are the pros and cons of working from home?",
    "Explain what a hash table is.",
    "Write a short apology email for missing a meeting.",
    "How do I center a div with CSS?",
    "What is the capital of Australia, and why is it not Sydney?",
    "Write a Python function that checks whether a year is a leap year.",
)
STDLIB_OFFSET = 1000  # router training rounds used the shuffled corpus's first 660 prompts
FIXED_RUNS = RESULTS_DIR / "humaneval"


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    kind: str  # "raw" (complete the text as is) or "chat" (the SLM's chat template)
    problem: object | None = None  # HumanEval's Problem, to score the answer


def prompt_sets(args: argparse.Namespace) -> dict[str, list[Prompt]]:
    sets: dict[str, list[Prompt]] = {}
    if "stdlib" in args.sets:
        corpus = shuffled_prompts(stdlib_function_prompts(), 0)[STDLIB_OFFSET : STDLIB_OFFSET + args.limit_stdlib]
        sets["stdlib"] = [Prompt(p.prompt_id, p.prompt, "raw") for p in corpus]
    if "chat" in args.sets:
        sets["chat"] = [Prompt(f"chat/{i}", text, "chat") for i, text in enumerate(CHAT_PROMPTS[: args.limit_chat])]
    if "humaneval" in args.sets:
        problems = load_problems(args.limit_humaneval)
        sets["humaneval"] = [Prompt(p.task_id, p.prompt, "raw", p) for p in problems]
    return sets


def warmup_sets(args: argparse.Namespace) -> dict[str, list[Prompt]]:
    """For ``warm``: as many further prompts of each set, never measured, that the controller learns on first."""
    sets: dict[str, list[Prompt]] = {}
    if "stdlib" in args.sets:
        start = STDLIB_OFFSET + args.limit_stdlib
        corpus = shuffled_prompts(stdlib_function_prompts(), 0)[start : start + args.limit_stdlib]
        sets["stdlib"] = [Prompt(p.prompt_id, p.prompt, "raw") for p in corpus]
    if "chat" in args.sets:
        chosen = list(enumerate(CHAT_PROMPTS))[args.limit_chat : 2 * args.limit_chat]
        sets["chat"] = [Prompt(f"chat/{i}", text, "chat") for i, text in chosen]
    if "humaneval" in args.sets:
        problems = load_problems(2 * args.limit_humaneval)[args.limit_humaneval :]
        sets["humaneval"] = [Prompt(p.task_id, p.prompt, "raw", p) for p in problems]
    return sets


def make_policy(control: str, target: float, router_path: Path, hidden_size: int) -> RoutingPolicy:
    router = RouterPolicy.load(router_path, hidden_size, cloud_share=target)
    if control == "fixed":
        return router
    card = router.router.card
    return ShareController(
        router, target, initial_cut=card.threshold_for_share(target), prior_scores=card_prior(card.calibration)
    )


def decode_one(slm: LocalModel, prompt: Prompt, policy: RoutingPolicy, address: str, max_tokens: int) -> dict:
    """One answer with the hybrid loop; HumanEval-style prompts stop at the Codex stop sequences."""
    slm.reset()  # every prompt starts cold: only the controller carries anything from one prompt to the next
    if prompt.kind == "chat":
        conversation = Conversation(slm)
        conversation.add_user(prompt.text)
        tokens = conversation.prompt_tokens()
    else:
        tokens = slm.tokenize(prompt.text)
    cloud = CloudSession(address, slm.fingerprint, timeout_s=60)  # a loaded machine must not fall back
    started = time.perf_counter()
    try:
        stream = HybridGenerator(slm, policy, cloud).stream(tokens, max_tokens=max_tokens, sampling=SamplingSettings())
        text, stopped = "", False
        for token in stream:
            text += token.text
            if prompt.kind == "raw" and prompt.problem is not None:
                text, stopped = truncate_at_stop(text)
                if stopped:
                    break
    finally:
        cloud.close()
    summary = stream.summary
    record = {
        "prompt_id": prompt.prompt_id,
        "tokens": summary.tokens,
        "cloud_tokens": summary.cloud_tokens,
        "cloud_calls": summary.cloud_calls,
        "cloud_fallbacks": summary.cloud_fallbacks,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    if prompt.problem is not None:
        record["passed"] = check_completion(prompt.problem, text).passed  # type: ignore[arg-type]
    if isinstance(policy, ShareController):
        record["cut_after"] = round(policy.cut, 4)
    return record


def summarise(records: list[dict], target: float) -> dict:
    tokens = sum(r["tokens"] for r in records)
    cloud = sum(r["cloud_tokens"] for r in records)
    half = len(records) // 2
    later = records[half:]
    later_tokens = sum(r["tokens"] for r in later)
    summary = {
        "prompts": len(records),
        "tokens": tokens,
        "target_share": target,
        "realised_share": cloud / tokens if tokens else 0.0,
        "realised_share_second_half": sum(r["cloud_tokens"] for r in later) / later_tokens if later_tokens else 0.0,
        "fallbacks": sum(r["cloud_fallbacks"] for r in records),
    }
    if records and "passed" in records[0]:
        summary["pass_at_1"] = sum(r["passed"] for r in records) / len(records)
    return summary


def fixed_humaneval_from_disk(task_ids: list[str], folder: Path) -> list[dict]:
    """Committed fixed-calibration router runs (and the two ends) on exactly these problems."""
    runs = []
    wanted = set(task_ids)
    for path in sorted(folder.glob("*.jsonl")):
        if not (path.stem.startswith("router-") or path.stem in ("slm-0.00", "llm-1.00")):
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["task_id"] in wanted and not r.get("mode")]
        if len({r["task_id"] for r in rows}) != len(wanted):
            continue
        tokens = sum(r["tokens"] for r in rows)
        runs.append({
            "run": path.stem, "target_share": rows[0]["target_share"], "problems": len(rows),
            "realised_share": sum(r["cloud_tokens"] for r in rows) / tokens,
            "pass_at_1": sum(r["passed"] for r in rows) / len(rows), "source": str(path.relative_to(RESULTS_DIR)),
        })  # fmt: skip
    return runs


def fixed_curve_at(points: list[tuple[float, float]], share: float) -> float:
    """pass@1 of the fixed-calibration curve at ``share``, linear between measured points."""
    points = sorted(points)
    return float(np.interp(share, [s for s, _ in points], [p for _, p in points]))


def markdown(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [
        "# Realised vs target cloud share: fixed calibration vs adaptive controller\n",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; {machine['date_utc']}; "
        f"commit {machine['git_commit']}. SLM {settings['slm']} with the shipped router, LLM {settings['llm']} "
        "(LocalCloud), greedy.\n",
        "| prompts | target | fixed: realised | adaptive: realised (2nd half) | adaptive, warmed up | "
        "fixed pass@1 | adaptive pass@1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows: dict[tuple[str, float], dict[str, dict]] = {}
    for run in report["runs"]:
        rows.setdefault((run["set"], run["target_share"]), {})[run["control"]] = run
    for (name, target), pair in sorted(rows.items()):
        fixed, adaptive, warm = pair.get("fixed"), pair.get("adaptive"), pair.get("warm")

        def share(run: dict | None, second: bool = False) -> str:
            if run is None:
                return "–"
            text = f"{run['realised_share']:.1%}"
            return text + (f" ({run['realised_share_second_half']:.1%})" if second else "")

        def passed(run: dict | None) -> str:
            return f"{run['pass_at_1']:.1%}" if run and "pass_at_1" in run else "–"

        n = next((run.get("prompts") or run.get("problems") for run in (adaptive, fixed, warm) if run), 0)
        lines.append(
            f"| {name} ({n}) | {target:.0%} | {share(fixed)}{' *' if fixed and fixed.get('source') else ''} | "
            f"{share(adaptive, True)} | {share(warm)} | {passed(fixed)} | {passed(adaptive)} |"
        )
    comparison = report.get("humaneval_comparison")
    if comparison:
        lines += ["", "HumanEval pass@1 at equal realised share (fixed curve interpolated over the fixed-calibration "
                  "runs on the same problems, SLM-only and LLM-only as its ends):", "",
                  "| target | adaptive realised | adaptive pass@1 | fixed curve at that share | difference |",
                  "|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in comparison["rows"]:
            lines.append(
                f"| {row['target_share']:.0%} | {row['realised_share']:.1%} | {row['pass_at_1']:.1%} | "
                f"{row['fixed_pass_at_1_at_share']:.1%} | {row['difference']:+.1%} |"
            )
        points = ", ".join(
            f"{p['run']} {p['realised_share']:.1%} → {p['pass_at_1']:.1%}" for p in comparison["fixed_points"]
        )
        lines += ["", f"Fixed-calibration points: {points}."]
    lines.append("\n\\* committed fixed-calibration run (`bench/results/humaneval/`), same problems and settings.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench share", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="target cloud shares")
    parser.add_argument(
        "--controls",
        nargs="+",
        default=["fixed", "adaptive"],
        choices=["fixed", "adaptive", "warm"],
        help="warm: the controller first learns on as many further prompts of the set (what a returning user's "
        "stored state gives), then is measured on the same prompts as the others",
    )
    parser.add_argument("--sets", nargs="+", default=["stdlib", "chat", "humaneval"],
                        choices=["stdlib", "chat", "humaneval"])  # fmt: skip
    parser.add_argument("--limit-stdlib", type=int, default=8, help="standard-library prompts")
    parser.add_argument("--limit-chat", type=int, default=8, help=f"chat prompts (at most {len(CHAT_PROMPTS)})")
    parser.add_argument("--limit-humaneval", type=int, default=60, help="first N HumanEval problems")
    parser.add_argument("--max-tokens", type=int, default=128, help="per stdlib or chat answer")
    parser.add_argument("--humaneval-max-tokens", type=int, default=384, help="per HumanEval answer (as quality)")
    parser.add_argument(
        "--reuse-fixed",
        action="store_true",
        help="for HumanEval, take fixed-calibration runs from bench/results/humaneval where one exists at the "
        "target and run only the missing ones",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="SLM threads; the LLM server gets as many")
    parser.add_argument("--out", default=str(RESULTS_DIR / "share"), help="folder for per-run JSON and the report")
    parser.add_argument("--report", action="store_true", help="run nothing: rebuild the report from the runs in --out")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    logging.getLogger("citer_edge").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    if args.report:
        return report_from_disk(args, out, slm_path.name, llm_path.name)
    sets = prompt_sets(args)
    warmups = warmup_sets(args) if "warm" in args.controls else {}
    committed = (
        fixed_humaneval_from_disk([p.prompt_id for p in sets["humaneval"]], FIXED_RUNS) if "humaneval" in sets else []
    )
    server_args = ["--threads", str(args.threads)]
    with (
        LocalModel(slm_path, n_ctx=2048, n_threads=args.threads) as slm,
        LocalCloud(llm_path, extra_args=server_args) as cloud,
    ):
        router_path = shipped_router(slm_path.name, slm.hidden_size)
        if router_path is None:
            raise SystemExit(f"citer-bench: error: no shipped router for {slm_path.name}")
        for name, prompts in sets.items():
            for target in args.shares:
                for control in args.controls:
                    path = out / f"{name}-{control}-{target:.2f}.json"
                    reused = next((r for r in committed if r["run"] == f"router-{target:.2f}"), None)
                    if name == "humaneval" and control == "fixed" and args.reuse_fixed and reused:
                        continue  # the report takes it from bench/results/humaneval
                    max_tokens = args.humaneval_max_tokens if name == "humaneval" else args.max_tokens
                    warmup = warmups[name] if control == "warm" else []
                    settings = {"prompts": [p.prompt_id for p in prompts], "max_tokens": max_tokens}
                    if warmup:
                        settings["warmup"] = [p.prompt_id for p in warmup]
                    done = json.loads(path.read_text()) if path.exists() else None
                    if done and done.get("settings") == settings:
                        continue
                    policy = make_policy(control, target, router_path, slm.hidden_size)
                    started = time.perf_counter()
                    for prompt in warmup:
                        decode_one(slm, prompt, policy, cloud.address, max_tokens)
                    records = []
                    for prompt in prompts:
                        records.append(decode_one(slm, prompt, policy, cloud.address, max_tokens))
                    summary = {"set": name, "control": control, **summarise(records, target),
                               "minutes": round((time.perf_counter() - started) / 60, 1)}  # fmt: skip
                    path.write_text(json.dumps({"summary": summary, "settings": settings, "records": records}) + "\n")
                    print(
                        f"{name:9} {control:8} target {target:.0%}: realised {summary['realised_share']:.1%} "
                        f"(2nd half {summary['realised_share_second_half']:.1%})"
                        + (f", pass@1 {summary['pass_at_1']:.1%}" if "pass_at_1" in summary else "")
                        + f", {summary['minutes']} min",
                        flush=True,
                    )

    return report_from_disk(args, out, slm_path.name, llm_path.name)


def report_from_disk(args: argparse.Namespace, out: Path, slm: str, llm: str) -> int:
    """The report over every completed run in ``out`` (this invocation's and earlier ones')."""
    report = {
        "benchmark": "cloud-share-control",
        "machine": machine_description(),
        "settings": {
            "slm": slm,
            "llm": llm,
            "router": "the shipped router (client/citer_edge/routing/routers/)",
            "sampling": "greedy",
            "max_tokens": args.max_tokens,
            "humaneval_max_tokens": args.humaneval_max_tokens,
            "threads": args.threads,
            "stdlib_prompts": f"shuffled_prompts(seed 0)[{STDLIB_OFFSET}:{STDLIB_OFFSET + args.limit_stdlib}]",
            "chat_prompts": args.limit_chat,
            "humaneval_problems": args.limit_humaneval,
            "adaptive": "ShareController, cold start from the card, state carried across the run's prompts",
            "warm": "the same controller after learning on as many further prompts of the set",
        },  # fmt: skip
    }
    runs, committed = runs_on_disk(out, args.reuse_fixed)
    report["runs"] = runs
    report["humaneval_comparison"] = humaneval_comparison(runs, committed)
    return write_report(report, out)


def runs_on_disk(out: Path, reuse_fixed: bool) -> tuple[list[dict], list[dict]]:
    """Every completed run in ``out`` (any invocation), plus committed fixed HumanEval runs on the same problems."""
    runs, tasks = [], None
    for path in sorted(out.glob("*-*-*.json")):
        data = json.loads(path.read_text())
        runs.append(data["summary"])
        if data["summary"]["set"] == "humaneval":
            tasks = data["settings"]["prompts"]
    committed = fixed_humaneval_from_disk(tasks, FIXED_RUNS) if tasks else []
    if reuse_fixed:
        measured = {round(r["target_share"], 2) for r in runs if r["set"] == "humaneval" and r["control"] == "fixed"}
        for run in committed:
            if run["run"].startswith("router-") and round(run["target_share"], 2) not in measured:
                runs.append({"set": "humaneval", "control": "fixed", **run})
    return runs, committed


def write_report(report: dict, out: Path) -> int:
    """``summary.json`` and ``summary.md`` in ``out``; the table is printed too."""
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def humaneval_comparison(runs: list[dict], committed: list[dict]) -> dict | None:
    """The controller's pass@1 against the fixed curve read at the controller's realised share."""
    ends = {r["run"]: r for r in committed if r["run"] in ("slm-0.00", "llm-1.00")}
    adaptive = [r for r in runs if r["set"] == "humaneval" and r["control"] == "adaptive"]
    if len(ends) < 2 or not adaptive:
        return None
    fixed = {round(r["target_share"], 2): r for r in committed if r["run"].startswith("router-")}
    for run in runs:  # fixed runs made here take precedence over committed ones at the same target
        if run["set"] == "humaneval" and run["control"] == "fixed":
            fixed[round(run["target_share"], 2)] = {**run, "run": f"router-{run['target_share']:.2f}"}
    points = [(0.0, ends["slm-0.00"]["pass_at_1"]), (1.0, ends["llm-1.00"]["pass_at_1"])]
    points += [(r["realised_share"], r["pass_at_1"]) for r in fixed.values()]
    rows = []
    for run in adaptive:
        at_share = fixed_curve_at(points, run["realised_share"])
        rows.append({"target_share": run["target_share"], "realised_share": run["realised_share"],
                     "pass_at_1": run["pass_at_1"], "fixed_pass_at_1_at_share": at_share,
                     "difference": run["pass_at_1"] - at_share})  # fmt: skip
    fixed_points = [{"run": "slm-0.00", "realised_share": 0.0, "pass_at_1": ends["slm-0.00"]["pass_at_1"]}]
    fixed_points += sorted(
        ({"run": r["run"], "realised_share": r["realised_share"], "pass_at_1": r["pass_at_1"]} for r in fixed.values()),
        key=lambda p: p["realised_share"],
    )
    fixed_points.append({"run": "llm-1.00", "realised_share": 1.0, "pass_at_1": ends["llm-1.00"]["pass_at_1"]})
    return {"rows": rows, "fixed_points": fixed_points}


if __name__ == "__main__":
    sys.exit(main())
