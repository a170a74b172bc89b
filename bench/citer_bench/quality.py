"""Quality vs cloud share on HumanEval (greedy pass@1): every policy at equal shares, with resume.

Runs, for each policy and target cloud share, the hybrid decoder over the
HumanEval problems as raw completions and executes each completion against
the problem's tests in a subprocess. Thresholds are calibrated to the target
shares on standard-library prompts, never on HumanEval. Policies:

- ``slm`` / ``llm``: the two ends (policy local; the cloud's Generate stream).
- ``random``: each token to the cloud with probability = share.
- ``confidence``: route when the SLM's top-1 probability < calibrated cut.
- ``router``: a trained router (``--router``), cut from its card's calibration.
- ``query``: one model per problem, chosen by the SLM's mean top-1 probability
  over its first tokens (RouteLLM-style); computed exactly from the two end
  runs, since greedy answers from one model are what query routing returns.

Each run appends one JSON line per problem to ``<out>/<run>.jsonl``; an
interrupted sweep resumes where it stopped. A summary JSON, a table and the
Pareto plot are written at the end.

    citer-bench quality --limit 20                 # a quick look
    citer-bench quality                            # the full sweep (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from citer_bench.curves import apgr, cpt
from citer_bench.humaneval import Problem, check_completion, load_problems, truncate_at_stop
from citer_bench.machine import RESULTS_DIR, machine_description
from citer_bench.plotting import saved_axes
from citer_edge import CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_edge.routing.calibration import share_below, threshold_for_share
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_edge.routing.policies import CloudPolicy, ConfidencePolicy, LocalPolicy, RandomPolicy, RoutingPolicy
from citer_edge.routing.router import RouterCard, RouterPolicy
from citer_export.corpus import CodePrompt, sample_prompts, stdlib_function_prompts
from citer_protocol import pb, pb_grpc

log = logging.getLogger("citer_bench.quality")

COMPARISON_SHARES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
PROBE_TOKENS = 16  # query-level routing looks at the SLM's first 16 tokens
TOKEN_POLICIES = ("random", "confidence")


@dataclass(frozen=True)
class RunSpec:
    policy: str  # slm | llm | random | confidence | router
    target_share: float
    threshold: float | None = None  # confidence cut, random probability or router P(critical) cut
    router: str | None = None  # router.onnx, for policy "router"
    label: str | None = None  # the curve's name where one policy is swept twice (two router rounds)

    @property
    def curve(self) -> str:
        return self.label or self.policy

    @property
    def name(self) -> str:
        return f"{self.curve}-{self.target_share:.2f}"

    def make_policy(self, hidden_size: int) -> RoutingPolicy:
        if self.policy == "slm":
            return LocalPolicy()
        if self.policy == "llm":
            return CloudPolicy()
        if self.policy == "random":
            return RandomPolicy(self.target_share, seed=0)
        if self.policy == "confidence":
            assert self.threshold is not None
            return ConfidencePolicy(self.threshold)
        if self.policy == "router":
            assert self.router is not None and self.threshold is not None
            return RouterPolicy.load(self.router, hidden_size, threshold=self.threshold)
        raise ValueError(f"unknown policy {self.policy}")


# -- one completion (runs in a worker) -------------------------------------

_worker_slm: LocalModel | None = None


def _init_worker(slm_path: str, n_threads: int) -> None:
    global _worker_slm
    logging.getLogger("citer_edge").setLevel(logging.ERROR)
    _worker_slm = LocalModel(slm_path, n_ctx=2048, n_threads=n_threads)


def complete(
    slm: LocalModel, prompt: str, policy: RoutingPolicy, cloud_address: str | None, max_tokens: int
) -> dict[str, object]:
    """Generate one raw completion until a stop sequence; report what it cost."""
    slm.reset()  # every problem starts cold: results never depend on the order problems ran in
    cloud = CloudSession(cloud_address, slm.fingerprint, timeout_s=60) if cloud_address else None
    started = time.perf_counter()
    try:
        generator = HybridGenerator(slm, policy, cloud)
        stream = generator.stream(slm.tokenize(prompt), max_tokens=max_tokens, sampling=SamplingSettings())
        text, stopped, top1 = "", False, []
        for token in stream:
            text += token.text
            top1.append(token.slm_top1_prob)
            text, stopped = truncate_at_stop(text)
            if stopped:
                break
    finally:
        if cloud is not None:
            cloud.close()
    summary = stream.summary
    probe = top1[:PROBE_TOKENS]
    return {
        "completion": text,
        "stopped": stopped,
        "tokens": summary.tokens,
        "cloud_tokens": summary.cloud_tokens,
        "cloud_calls": summary.cloud_calls,
        "cloud_fallbacks": summary.cloud_fallbacks,
        "tokens_sent": cloud.tokens_sent if cloud else 0,
        "tokens_received": cloud.tokens_received if cloud else 0,
        "probe_top1_mean": sum(probe) / len(probe) if probe else 1.0,
        "top1": [round(p, 5) for p in top1],
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def complete_llm_only(slm: LocalModel, prompt: str, cloud_address: str, max_tokens: int) -> dict[str, object]:
    """The cloud-only baseline: the LLM's Generate stream, one call per answer, cancelled at a stop sequence.

    Greedy tokens equal the hybrid loop's under policy ``cloud`` (tests/test_decode_parity.py), but the
    cost is what a cloud-only deployment pays: one call and one prompt prefill per answer.
    """
    prompt_tokens = slm.tokenize(prompt)
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    started = time.perf_counter()
    text, stopped, tokens = "", False, 0
    with grpc.insecure_channel(cloud_address) as channel:
        call = pb_grpc.LlmServiceStub(channel).Generate(
            pb.GenerateRequest(prompt=prompt_tokens, max_tokens=max_tokens), timeout=3600
        )
        for reply in call:
            tokens += 1
            if slm.is_end(reply.token):
                break
            text, stopped = truncate_at_stop(text + utf8.decode(slm.token_bytes(reply.token)))
            if stopped:
                call.cancel()
                break
    return {"completion": text, "stopped": stopped, "tokens": tokens, "cloud_tokens": tokens, "cloud_calls": 1,
            "cloud_fallbacks": 0, "tokens_sent": len(prompt_tokens), "tokens_received": tokens,
            "probe_top1_mean": None, "top1": [], "elapsed_s": round(time.perf_counter() - started, 3)}  # fmt: skip


def _solve(spec: RunSpec, problem: Problem, cloud_address: str | None, max_tokens: int) -> dict[str, object]:
    assert _worker_slm is not None
    if spec.policy == "llm":
        assert cloud_address is not None
        record = complete_llm_only(_worker_slm, problem.prompt, cloud_address, max_tokens)
    else:
        record = complete(
            _worker_slm, problem.prompt, spec.make_policy(_worker_slm.hidden_size), cloud_address, max_tokens
        )
    outcome = check_completion(problem, str(record["completion"]))
    return {"task_id": problem.task_id, "run": spec.name, **asdict(spec), **record,
            "passed": outcome.passed, "reason": outcome.reason}  # fmt: skip


def _calibrate_one(prompt: CodePrompt, max_tokens: int) -> dict[str, object]:
    assert _worker_slm is not None
    record = complete(_worker_slm, prompt.prompt, LocalPolicy(), None, max_tokens)
    return {"prompt_id": prompt.prompt_id, "top1": record["top1"], "probe_top1_mean": record["probe_top1_mean"]}


# -- the sweep (runs in the parent) -----------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """Completed records; a torn last line from an interrupted run is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def pending(problems: list[Problem], path: Path) -> list[Problem]:
    done = {record["task_id"] for record in read_jsonl(path)}
    return [problem for problem in problems if problem.task_id not in done]


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.slm_path = resolve_model(args.slm)
        self.llm_path = resolve_model(args.llm)
        threads = max(1, (os.cpu_count() or 1) // args.workers)
        self.pool = ProcessPoolExecutor(
            max_workers=args.workers, initializer=_init_worker, initargs=(str(self.slm_path), threads)
        )

    def map(self, fn, items: Iterable, desc: str) -> Iterable:
        items = list(items)
        futures = [self.pool.submit(fn, *item) for item in items]
        for future in tqdm(futures, desc=desc, file=sys.stderr):
            yield future.result()

    def calibration(self) -> dict[str, object]:
        path = self.out / "calibration.json"
        settings = {"slm": self.slm_path.name, "prompts": self.args.calibration_prompts, "max_tokens": 128,
                    "source": "stdlib_function_prompts, seed 0"}  # fmt: skip
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("settings") == settings:
                return cached
        prompts = sample_prompts(stdlib_function_prompts(), self.args.calibration_prompts, seed=0)
        rows = list(self.map(_calibrate_one, [(p, 128) for p in prompts], "calibration"))
        calibration = {
            "settings": settings,
            "token_top1": [p for row in rows for p in row["top1"]],
            "probe_means": [row["probe_top1_mean"] for row in rows],
        }
        path.write_text(json.dumps(calibration))
        return calibration

    def run(self, spec: RunSpec, problems: list[Problem], cloud_address: str | None) -> list[dict]:
        path = self.out / f"{spec.name}.jsonl"
        todo = pending(problems, path)
        with path.open("a") as sink:
            for record in self.map(_solve, [(spec, p, cloud_address, self.args.max_tokens) for p in todo], spec.name):
                sink.write(json.dumps(record) + "\n")
                sink.flush()
        wanted = {p.task_id for p in problems}
        return [r for r in read_jsonl(path) if r["task_id"] in wanted]

    def close(self) -> None:
        self.pool.shutdown()


def summarise_run(name: str, policy: str, target: float, records: list[dict], threshold: float | None) -> dict:
    tokens = sum(r["tokens"] for r in records)
    return {
        "run": name,
        "policy": policy,
        "target_share": target,
        "threshold": threshold,
        "problems": len(records),
        "pass_at_1": sum(r["passed"] for r in records) / len(records) if records else 0.0,
        "cloud_share": sum(r["cloud_tokens"] for r in records) / tokens if tokens else 0.0,
        "cloud_calls_per_problem": sum(r["cloud_calls"] for r in records) / len(records) if records else 0.0,
        "prefill_per_token": sum(r["tokens_sent"] for r in records) / tokens if tokens else 0.0,
        "decode_steps_per_token": sum(r["tokens_received"] for r in records) / tokens if tokens else 0.0,
        "tokens": tokens,
    }


def query_level(slm_runs: list[dict], llm_runs: list[dict], cut: float, target: float) -> dict:
    """Per problem, the LLM's whole answer when the SLM's probe confidence is below ``cut``."""
    by_task = {r["task_id"]: r for r in llm_runs}
    chosen = []
    for slm_record in slm_runs:
        llm_record = by_task.get(slm_record["task_id"])
        if llm_record is None:
            continue
        to_cloud = slm_record["probe_top1_mean"] < cut
        chosen.append({**(llm_record if to_cloud else slm_record), "cloud_calls": int(to_cloud),
                       "tokens_sent": 0, "tokens_received": 0})  # fmt: skip
        if to_cloud:
            chosen[-1]["tokens_received"] = llm_record["tokens"]
    return summarise_run(f"query-{target:.2f}", "query", target, chosen, cut)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--limit", type=int, default=None, help="first N HumanEval problems (default: all 164)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5], help="target cloud shares")
    parser.add_argument("--policies", nargs="*", default=["random", "confidence", "query"],
                        choices=["random", "confidence", "query"], help="policies between the two ends")  # fmt: skip
    parser.add_argument("--router", help="a trained router.onnx to sweep too (its card's calibration sets the cuts)")
    parser.add_argument("--router-name", default="router", help="its curve's name, e.g. router-r1 for a first round")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--calibration-prompts", type=int, default=40, help="stdlib prompts to calibrate on")
    parser.add_argument("--workers", type=int, default=1, help="SLM processes (each gets cores/workers threads)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "humaneval"), help="folder for JSONL, JSON and PNG")
    parser.add_argument(
        "--report",
        action="store_true",
        help="generate nothing: summarise the runs on disk, "
        "complete ones in the curves, unfinished ones against the ends on the same problems",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    problems = load_problems(args.limit)
    sweep = Sweep(args)
    summaries: list[dict] = []
    partial: list[dict] = []
    if args.report:
        sweep.close()
        calibration = json.loads((Path(args.out) / "calibration.json").read_text())
        summaries, partial = summaries_from_disk(Path(args.out), problems, calibration, args.shares)
        return finish(summaries, partial, args, calibration, sweep)
    try:
        calibration = sweep.calibration()
        with LocalCloud(sweep.llm_path) as cloud:
            slm_runs = sweep.run(RunSpec("slm", 0.0), problems, None)
            llm_runs = sweep.run(RunSpec("llm", 1.0), problems, cloud.address)
            summaries += [summarise_run("slm-0.00", "slm", 0.0, slm_runs, None),
                          summarise_run("llm-1.00", "llm", 1.0, llm_runs, None)]  # fmt: skip
            for share in args.shares:
                for policy in args.policies:
                    if policy == "query":
                        cut = threshold_for_share(calibration["probe_means"], share)
                        summaries.append(query_level(slm_runs, llm_runs, cut, share))
                        continue
                    threshold = share if policy == "random" else threshold_for_share(calibration["token_top1"], share)
                    spec = RunSpec(policy, share, threshold)
                    records = sweep.run(spec, problems, cloud.address)
                    summaries.append(summarise_run(spec.name, policy, share, records, threshold))
                if args.router:
                    cut = RouterCard.load(Path(args.router).with_suffix(".json")).threshold_for_share(share)
                    router = str(Path(args.router).resolve())
                    spec = RunSpec("router", share, cut, router=router, label=args.router_name)
                    records = sweep.run(spec, problems, cloud.address)
                    summaries.append(summarise_run(spec.name, spec.curve, share, records, cut))
    finally:
        sweep.close()

    return finish(summaries, partial, args, calibration, sweep)


def finish(summaries: list[dict], partial: list[dict], args: argparse.Namespace, calibration: dict, sweep) -> int:
    report = build_report(summaries, args, calibration, sweep)
    report["unfinished_runs"] = partial
    (Path(args.out) / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    for row in partial:
        print(
            f"unfinished {row['run']:12} {row['problems']:3d} problems: pass@1 {row['pass_at_1']:.1%} at "
            f"{row['cloud_share']:.1%} cloud (SLM {row['slm_pass_at_1_same_problems']:.1%}, "
            f"LLM {row['llm_pass_at_1_same_problems']:.1%} on the same problems)"
        )
    plot(report, Path(args.out) / "pareto.png")
    return 0


def summaries_from_disk(
    out: Path, problems: list[Problem], calibration: dict, shares: list[float]
) -> tuple[list[dict], list[dict]]:
    """Summaries of finished runs, and of unfinished ones with the two ends on the same problems."""
    wanted = {p.task_id for p in problems}

    def records(name: str) -> list[dict]:
        return [r for r in read_jsonl(out / f"{name}.jsonl") if r["task_id"] in wanted]

    slm_runs, llm_runs = records("slm-0.00"), records("llm-1.00")
    if len(slm_runs) < len(wanted) or len(llm_runs) < len(wanted):
        raise SystemExit("citer-bench: error: the SLM-only and LLM-only runs must be complete to report")
    summaries = [summarise_run("slm-0.00", "slm", 0.0, slm_runs, None),
                 summarise_run("llm-1.00", "llm", 1.0, llm_runs, None)]  # fmt: skip
    partial = []
    for path in sorted(out.glob("*.jsonl")):
        run = records(path.stem)
        if path.stem in ("slm-0.00", "llm-1.00") or not run:
            continue
        first = run[0]
        curve = first.get("label") or first["policy"]
        summary = summarise_run(path.stem, curve, first["target_share"], run, first["threshold"])
        if len(run) == len(wanted):
            summaries.append(summary)
            continue
        done = {r["task_id"] for r in run}
        summary["slm_pass_at_1_same_problems"] = sum(r["passed"] for r in slm_runs if r["task_id"] in done) / len(done)
        summary["llm_pass_at_1_same_problems"] = sum(r["passed"] for r in llm_runs if r["task_id"] in done) / len(done)
        partial.append(summary)
    for share in shares:
        summaries.append(query_level(slm_runs, llm_runs, threshold_for_share(calibration["probe_means"], share), share))
    return summaries, partial


def build_report(summaries: list[dict], args: argparse.Namespace, calibration: dict, sweep: Sweep) -> dict:
    slm = next(s for s in summaries if s["policy"] == "slm")["pass_at_1"]
    llm = next(s for s in summaries if s["policy"] == "llm")["pass_at_1"]
    per_policy = {}
    for policy in sorted({s["policy"] for s in summaries} - {"slm", "llm"}):
        points = [(s["cloud_share"], s["pass_at_1"]) for s in summaries if s["policy"] == policy]
        per_policy[policy] = (
            {"apgr": apgr(points, slm, llm), "cpt50": cpt(points, slm, llm, 0.5), "cpt80": cpt(points, slm, llm, 0.8)}
            if llm != slm
            else {"note": "SLM-only and LLM-only tie on this subset: no gap to recover"}
        )
        per_policy[policy]["pass_at_share"] = pass_at_shares(points, slm, llm)
    return {
        "benchmark": "humaneval-quality-vs-share",
        "machine": machine_description(),
        "settings": {
            "slm": sweep.slm_path.name,
            "llm": sweep.llm_path.name,
            "problems": args.limit or 164,
            "max_tokens": args.max_tokens,
            "sampling": "greedy",
            "prompt_format": "raw completion",
            "calibration": calibration["settings"],
            "calibrated_token_share_check": {
                str(s["target_share"]): share_below(calibration["token_top1"], s["threshold"])
                for s in summaries
                if s["policy"] == "confidence"
            },
        },  # fmt: skip
        "runs": summaries,
        "policies": per_policy,
    }


def pass_at_shares(points: list[tuple[float, float]], slm: float, llm: float) -> dict[str, float]:
    """pass@1 read off the curve at fixed shares, linear between measured points (ends included).

    Achieved shares never land exactly on the targets, so comparing policies
    "at 20 % cloud" needs this reading rather than the runs' nominal targets.
    """
    curve = sorted([(0.0, slm), *points, (1.0, llm)])
    shares, passes = [x for x, _ in curve], [y for _, y in curve]
    return {f"{share:.2f}": float(np.interp(share, shares, passes)) for share in COMPARISON_SHARES}


def print_table(report: dict) -> None:
    print(f"{'run':18} {'pass@1':>7} {'share':>6} {'calls/prob':>10} {'prefill/tok':>11} {'steps/tok':>9}")
    for s in report["runs"]:
        print(
            f"{s['run']:18} {s['pass_at_1']:7.1%} {s['cloud_share']:6.1%} {s['cloud_calls_per_problem']:10.1f} "
            f"{s['prefill_per_token']:11.2f} {s['decode_steps_per_token']:9.2f}"
        )
    for policy, metrics in report["policies"].items():
        print(policy, json.dumps(metrics))


def plot(report: dict, path: Path) -> None:
    runs = report["runs"]
    slm = next(s for s in runs if s["policy"] == "slm")
    llm = next(s for s in runs if s["policy"] == "llm")
    settings = report["settings"]
    title = f"{settings['slm']} + {settings['llm']}\nHumanEval, {settings['problems']} problems, greedy"
    with saved_axes(path, "cloud share of generated tokens (%)", "HumanEval pass@1 (%)", title, (7, 4.5)) as ax:
        ax.axhline(100 * slm["pass_at_1"], color="grey", linestyle=":", label="SLM only")
        ax.axhline(100 * llm["pass_at_1"], color="black", linestyle="--", label="LLM only")
        for policy in report["policies"]:
            points = sorted((s["cloud_share"], s["pass_at_1"]) for s in runs if s["policy"] == policy)
            points = [(slm["cloud_share"], slm["pass_at_1"]), *points, (llm["cloud_share"], llm["pass_at_1"])]
            ax.plot([100 * x for x, _ in points], [100 * y for _, y in points], marker="o", label=policy)


if __name__ == "__main__":
    sys.exit(main())
