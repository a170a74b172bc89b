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
- ``draft``: classic draft-k speculative decoding: the SLM drafts, the LLM
  verifies every ``--max-draft`` k drafts (``LocalPolicy`` in lossless mode),
  so the answer is the LLM's greedy one; one run per k, no share.

``--mode`` runs the token-level policies (and the router) in the decoder's
other modes (citer_edge/decode.py): ``lossless`` (SLM tokens are drafts the
LLM verifies at routed positions, every ``--max-draft`` drafts and at the end:
the LLM's greedy output), ``span`` (a cloud turn goes on for up to
``--tokens-per-call`` tokens while the LLM's own top-1 is below
``--span-below``), ``overlap`` (the SLM decodes while a call is in flight);
``lossless``, ``span`` and ``overlap`` combine. The run's name carries the mode
(``router-0.20-span8-tau0.90``, ``router-0.30-lossless``, ``draft-k4``), and
its rows carry ``mode``, ``round_trips``, the drafts accepted and rejected and
``equals_llm`` (the completion is the LLM-only run's, character for character).

Each run appends one JSON line per problem to ``<out>/<run>.jsonl``; an
interrupted sweep resumes where it stopped. A summary JSON, a Markdown report
(printed too), the Pareto plot and a mixing plot are written at the end.

Beyond pass@1 the report compares runs problem by problem: against the two
ends it counts what each hybrid broke (both ends right, hybrid wrong),
rescued (only the LLM right, hybrid right), lost (only the SLM right) and
gained (neither right), and it gives paired 95 % bootstrap CIs and exact
McNemar p-values for each hybrid vs each end and for policies at matched
achieved shares (citer_bench.paired).

    citer-bench quality --limit 20                 # a quick look
    citer-bench quality                            # the full sweep (hours on 2 cores)
    citer-bench quality --report                   # rebuild the report from the JSON lines; runs no model
    citer-bench quality --policies --router R.onnx --shares 0.2 --mode span --tokens-per-call 8 --span-below 0.9
    citer-bench quality --policies draft --max-draft 4 8 --limit 40
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from citer_bench import paired
from citer_bench.curves import apgr, cpt
from citer_bench.humaneval import Problem, check_completion, load_problems, truncate_at_stop
from citer_bench.machine import RESULTS_DIR, machine_description
from citer_bench.plotting import saved_axes
from citer_edge import CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_edge.cloud.local import LocalCloud
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, REGISTRY, resolve_model
from citer_edge.routing.calibration import share_below, threshold_for_share
from citer_edge.routing.policies import CloudPolicy, ConfidencePolicy, LocalPolicy, RandomPolicy, RoutingPolicy
from citer_edge.routing.router import RouterCard, RouterPolicy
from citer_export.corpus import CodePrompt, sample_prompts, stdlib_function_prompts
from citer_protocol import pb, pb_grpc

log = logging.getLogger("citer_bench.quality")

COMPARISON_SHARES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
PROBE_TOKENS = 16  # query-level routing looks at the SLM's first 16 tokens
TOKEN_POLICIES = ("random", "confidence")
MODES = ("blocking", "lossless", "span", "overlap")
DEFAULT_MAX_DRAFT = 16  # HybridGenerator's default


@dataclass(frozen=True)
class RunSpec:
    policy: str  # slm | llm | random | confidence | router | draft
    target_share: float | None
    threshold: float | None = None  # confidence cut, random probability or router P(critical) cut
    router: str | None = None  # router.onnx, for policy "router"
    label: str | None = None  # the curve's name where one policy is swept twice (two router rounds)
    # decode mode (HybridGenerator's arguments); the defaults are the plain per-token loop
    lossless: bool = False
    max_draft: int = DEFAULT_MAX_DRAFT
    overlap: bool = False
    span_below: float = 0.0
    tokens_per_call: int = 1

    @property
    def curve(self) -> str:
        return self.label or self.policy

    @property
    def name(self) -> str:
        """``router-0.30``, with the mode appended where it is not the plain loop: ``router-0.30-lossless``,
        ``router-0.20-span8-tau0.90``, ``draft-k4`` (draft is lossless by definition)."""
        if self.policy == "draft":
            base, parts = f"draft-k{self.max_draft}", []
        else:
            base = f"{self.curve}-{self.target_share:.2f}"
            bound = "" if self.max_draft == DEFAULT_MAX_DRAFT else str(self.max_draft)
            parts = [f"lossless{bound}"] if self.lossless else []
        if self.span_below > 0:
            parts.append(f"span{self.tokens_per_call}-tau{self.span_below:.2f}")
        elif self.tokens_per_call > 1:
            parts.append(f"n{self.tokens_per_call}")
        if self.overlap:
            parts.append("overlap")
        return "-".join([base, *parts])

    @property
    def decode_options(self) -> dict[str, object]:
        """HybridGenerator's mode arguments for this run."""
        return {"lossless": self.lossless or self.policy == "draft", "max_draft": self.max_draft,
                "overlap": self.overlap, "span_below": self.span_below,
                "tokens_per_call": self.tokens_per_call}  # fmt: skip

    def make_policy(self, hidden_size: int) -> RoutingPolicy:
        if self.policy in ("slm", "draft"):
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
    slm: LocalModel,
    prompt: str,
    policy: RoutingPolicy,
    cloud_address: str | None,
    max_tokens: int,
    decode_options: dict[str, object] | None = None,
) -> dict[str, object]:
    """Generate one raw completion until a stop sequence; report what it cost.

    ``decode_options`` are HybridGenerator's mode arguments (lossless, max_draft, overlap, span_below,
    tokens_per_call); none: the plain per-token loop.
    """
    slm.reset()  # every problem starts cold: results never depend on the order problems ran in
    cloud = CloudSession(cloud_address, slm.fingerprint, timeout_s=60) if cloud_address else None
    started = time.perf_counter()
    try:
        generator = HybridGenerator(slm, policy, cloud, **(decode_options or {}))  # type: ignore[arg-type]
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
        # the decode mode and what it did: every answered call is one network round trip
        "mode": summary.mode,
        "round_trips": summary.cloud_calls,
        "drafts_accepted": summary.drafts_accepted,
        "drafts_rejected": summary.drafts_rejected,
        "unverified_tokens": summary.unverified_tokens,
        "overlap_kept": summary.overlap_kept,
        "overlap_discarded": summary.overlap_discarded,
        "cloud_wait_s": round(summary.cloud_wait_s, 3),
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
        policy = spec.make_policy(_worker_slm.hidden_size)
        record = complete(_worker_slm, problem.prompt, policy, cloud_address, max_tokens, spec.decode_options)
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
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
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

    def run(
        self, spec: RunSpec, problems: list[Problem], cloud_address: str | None, llm: list[dict] | None = None
    ) -> list[dict]:
        """Solve the problems ``spec`` has not answered yet, appending each record; ``llm``: the LLM-only
        run's records, to mark each hybrid answer ``equals_llm``."""
        path = self.out / f"{spec.name}.jsonl"
        check_resumable(spec, path)
        todo = pending(problems, path)
        reference = {r["task_id"]: r["completion"] for r in llm or [] if "completion" in r}
        with path.open("a") as sink:
            for record in self.map(_solve, [(spec, p, cloud_address, self.args.max_tokens) for p in todo], spec.name):
                if record["task_id"] in reference:
                    record["equals_llm"] = record["completion"] == reference[record["task_id"]]
                sink.write(json.dumps(record) + "\n")
                sink.flush()
        wanted = {p.task_id for p in problems}
        return mark_equals_llm([r for r in read_jsonl(path) if r["task_id"] in wanted], llm or [])

    def close(self) -> None:
        self.pool.shutdown()


def check_resumable(spec: RunSpec, path: Path) -> None:
    """Refuse to append to a run file whose rows were made with other settings (a resumed run must be one run)."""
    rows = read_jsonl(path)
    if not rows:
        return
    wanted = asdict(spec)
    differing = {key: (rows[0].get(key), value) for key, value in wanted.items()
                 if key in rows[0] and rows[0][key] != value and key != "router"}  # fmt: skip
    if differing:
        raise SystemExit(f"citer-bench: error: {path} holds a run with other settings (row vs now): {differing}")


def summarise_run(name: str, policy: str, target: float | None, records: list[dict], threshold: float | None) -> dict:
    """Pass@1, achieved cloud share and what the cloud was asked to do, per generated token and per answer."""
    tokens = sum(r["tokens"] for r in records)
    answers = len(records)
    return {
        "run": name,
        "policy": policy,
        "target_share": target,
        "threshold": threshold,
        "problems": answers,
        "pass_at_1": sum(r["passed"] for r in records) / answers if answers else 0.0,
        "cloud_share": sum(r["cloud_tokens"] for r in records) / tokens if tokens else 0.0,
        "cloud_calls_per_problem": sum(r["cloud_calls"] for r in records) / answers if answers else 0.0,
        "round_trips_per_answer": sum(round_trips(r) for r in records) / answers if answers else 0.0,
        "prefill_per_token": sum(r["tokens_sent"] for r in records) / tokens if tokens else 0.0,
        "decode_steps_per_token": sum(r["tokens_received"] for r in records) / tokens if tokens else 0.0,
        "tokens": tokens,
        **mode_summary(records),
    }


def mode_summary(records: list[dict]) -> dict:
    """The decode mode of a run's rows and what it did: drafts, the cloud tokens per round trip, equals_llm."""
    first = records[0] if records else {}
    trips = sum(round_trips(r) for r in records)
    accepted = sum(int(r.get("drafts_accepted") or 0) for r in records)
    rejected = sum(int(r.get("drafts_rejected") or 0) for r in records)
    equal = [r["equals_llm"] for r in records if r.get("equals_llm") is not None]
    return {
        "mode": mode_label(first.get("mode")),
        "settings": {key: first[key] for key in ("max_draft", "tokens_per_call", "span_below") if key in first},
        "cloud_tokens_per_round_trip": sum(r["cloud_tokens"] for r in records) / trips if trips else 0.0,
        "drafts_accepted": accepted,
        "drafts_rejected": rejected,
        "draft_acceptance": accepted / (accepted + rejected) if accepted + rejected else None,
        "equals_llm": sum(bool(e) for e in equal) if equal else None,
        "equals_llm_of": len(equal),
    }


def mode_label(mode: str | None) -> str:
    """A row's decode mode without the plain loop's name: "blocking+span" -> "span", "blocking" -> ""."""
    return "+".join(part for part in (mode or "").split("+") if part not in DEFAULT_MODES)


def round_trips(record: dict) -> int:
    """Network round trips one answer waited for: decode modes that batch or overlap calls record
    ``round_trips``; until they did, every cloud call was one."""
    value = record.get("round_trips")
    return int(record["cloud_calls"] if value is None else value)


def query_records(slm_runs: list[dict], llm_runs: list[dict], cut: float) -> list[dict]:
    """Per problem, the LLM's record (answer and cost) when the SLM's probe confidence is below ``cut``, else the SLM's.

    Query routing sends the prompt to the LLM and lets it write the whole
    answer, so a problem routed there costs exactly what the LLM-only run
    paid for it: its prompt prefill (``tokens_sent``) and every decode step.
    """
    by_task = {r["task_id"]: r for r in llm_runs}
    chosen = []
    for slm_record in slm_runs:
        llm_record = by_task.get(slm_record["task_id"])
        if llm_record is None:
            continue
        to_cloud = slm_record["probe_top1_mean"] < cut
        chosen.append({**(llm_record if to_cloud else slm_record), "policy": "query", "threshold": cut,
                       "routed_to": "llm" if to_cloud else "slm"})  # fmt: skip
    return chosen


def query_level(slm_runs: list[dict], llm_runs: list[dict], cut: float, target: float) -> dict:
    """Summary of query-level routing at ``cut``, computed exactly from the two end runs."""
    return summarise_run(f"query-{target:.2f}", "query", target, query_records(slm_runs, llm_runs, cut), cut)


@dataclass
class Results:
    """What a report is built from: finished runs' summaries, every run's per-problem outcomes, unfinished runs."""

    summaries: list[dict] = field(default_factory=list)
    outcomes: dict[str, dict[str, bool]] = field(default_factory=dict)  # run -> task_id -> passed
    unfinished: list[dict] = field(default_factory=list)
    costs: dict[str, dict[str, dict]] = field(default_factory=dict)  # run -> task_id -> round trips, drafts, ...

    def add(self, summary: dict, records: list[dict], finished: bool = True) -> None:
        (self.summaries if finished else self.unfinished).append(summary)
        self.outcomes[summary["run"]] = {r["task_id"]: bool(r["passed"]) for r in records}
        self.costs[summary["run"]] = {
            r["task_id"]: {"round_trips": round_trips(r), "equals_llm": r.get("equals_llm"), "tokens": r["tokens"],
                           "cloud_tokens": r["cloud_tokens"], "drafts_rejected": int(r.get("drafts_rejected") or 0),
                           "tokens_sent": r.get("tokens_sent") or 0}
            for r in records
        }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="citer-bench quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--limit", type=int, default=None, help="first N HumanEval problems (default: all 164)")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first K of those problems (runs only): --limit 82 and --skip 82 "
                             "split one run over two invocations (give the second its own --out, with copies of "
                             "the end runs and calibration.json, and append its lines afterwards)")  # fmt: skip
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5], help="target cloud shares")
    parser.add_argument("--policies", nargs="*", default=["random", "confidence", "query"],
                        choices=["random", "confidence", "query", "draft"],
                        help="policies between the two ends (draft: draft-k speculative decoding, one run per "
                             "--max-draft k, lossless by definition)")  # fmt: skip
    parser.add_argument("--router", help="a trained router.onnx to sweep too (its card's calibration sets the cuts)")
    parser.add_argument("--router-name", default="router", help="its curve's name, e.g. router-r1 for a first round")
    parser.add_argument("--mode", nargs="+", default=["blocking"], choices=MODES,
                        help="decode mode of the random, confidence and router runs (draft runs add it to lossless): "
                             "blocking (one round trip per routed token), lossless (LLM-verified drafts: the LLM's "
                             "greedy output), span (multi-token cloud turns), overlap (decode while waiting); "
                             "lossless, span and overlap combine")  # fmt: skip
    parser.add_argument(
        "--max-draft",
        type=int,
        nargs="+",
        default=[DEFAULT_MAX_DRAFT],
        help="lossless: at most this many unverified drafts (draft-k's k); several: one run each",
    )
    parser.add_argument("--tokens-per-call", type=int, default=None,
                        help="the most tokens one cloud turn returns (span mode: default 8; without span every "
                             "call returns this many)")  # fmt: skip
    parser.add_argument("--span-below", type=float, default=None,
                        help="span mode: the cloud goes on while its own top-1 probability is below this "
                             "(default 0.5)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--calibration-prompts", type=int, default=40, help="stdlib prompts to calibrate on")
    parser.add_argument("--workers", type=int, default=1, help="SLM processes (each gets cores/workers threads)")
    parser.add_argument("--threads", type=int, default=None,
                        help="SLM threads per worker (default cores/workers; 1 helps on a machine busy with other "
                             "work, where spinning llama.cpp threads wait for each other; the local cloud's own "
                             "count is CITER_CLOUD_THREADS)")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS_DIR / "humaneval"), help="folder for JSONL, JSON, MD and PNG")
    parser.add_argument(
        "--report",
        "--report-only",
        action="store_true",
        help="run no model: rebuild summary.json, report.md and the plots from every run's JSON lines in --out "
        "(complete runs in the curves, unfinished ones against the ends on the same problems)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    modes = decode_modes(parser, args)

    problems = load_problems(args.limit)
    out = Path(args.out)
    if args.skip and not args.report:
        problems = problems[args.skip :]
    if args.report:
        calibration = json.loads((out / "calibration.json").read_text())
        results = results_from_disk(out, problems, calibration, args.shares)
        return finish(results, args, calibration, machine_of_runs(out))

    results = Results()
    sweep = Sweep(args)
    try:
        calibration = sweep.calibration()
        with LocalCloud(sweep.llm_path) as cloud:
            slm_runs = sweep.run(RunSpec("slm", 0.0), problems, None)
            llm_runs = sweep.run(RunSpec("llm", 1.0), problems, cloud.address)
            results.add(summarise_run("slm-0.00", "slm", 0.0, slm_runs, None), slm_runs)
            results.add(summarise_run("llm-1.00", "llm", 1.0, llm_runs, None), llm_runs)
            for share in args.shares:
                for policy in args.policies:
                    if policy == "query":
                        cut = threshold_for_share(calibration["probe_means"], share)
                        records = query_records(slm_runs, llm_runs, cut)
                        results.add(summarise_run(f"query-{share:.2f}", "query", share, records, cut), records)
                        continue
                    if policy == "draft":
                        continue  # no share: run once per k below
                    threshold = share if policy == "random" else threshold_for_share(calibration["token_top1"], share)
                    for mode in modes:
                        spec = RunSpec(policy, share, threshold, **mode)
                        records = sweep.run(spec, problems, cloud.address, llm_runs)
                        results.add(summarise_run(spec.name, curve_of(records[0], spec.name), share, records,
                                                  threshold), records)  # fmt: skip
                if args.router:
                    cut = RouterCard.load(Path(args.router).with_suffix(".json")).threshold_for_share(share)
                    router = str(Path(args.router).resolve())
                    for mode in modes:
                        spec = RunSpec("router", share, cut, router=router, label=args.router_name, **mode)
                        records = sweep.run(spec, problems, cloud.address, llm_runs)
                        results.add(summarise_run(spec.name, curve_of(records[0], spec.name), share, records,
                                                  cut), records)  # fmt: skip
            if "draft" in args.policies:
                for k in args.max_draft:
                    draft_mode = {**modes[0], "lossless": True, "max_draft": k}
                    spec = RunSpec("draft", None, **draft_mode)
                    records = sweep.run(spec, problems, cloud.address, llm_runs)
                    results.add(summarise_run(spec.name, curve_of(records[0], spec.name), None, records, None),
                                records)  # fmt: skip
    finally:
        sweep.close()

    return finish(results, args, calibration, machine_description())


def decode_modes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[dict[str, object]]:
    """RunSpec's mode fields from --mode, --max-draft, --tokens-per-call and --span-below: one per max_draft
    where the mode is lossless, else one."""
    chosen = set(args.mode)
    if "blocking" in chosen and "lossless" in chosen:
        parser.error("--mode blocking and lossless exclude each other (lossless verifies; blocking does not)")
    if any(k < 1 for k in args.max_draft):
        parser.error("--max-draft must be at least 1")
    span = "span" in chosen
    if not span and args.span_below is not None:
        parser.error("--span-below needs --mode span")
    tokens_per_call = args.tokens_per_call if args.tokens_per_call is not None else (8 if span else 1)
    span_below = args.span_below if args.span_below is not None else (0.5 if span else 0.0)
    if tokens_per_call < 1:
        parser.error("--tokens-per-call must be at least 1")
    if span and not 0.0 < span_below <= 1.0:
        parser.error("--span-below must lie in (0, 1]")
    common = {"overlap": "overlap" in chosen, "span_below": span_below, "tokens_per_call": tokens_per_call}
    if "lossless" in chosen:
        return [{**common, "lossless": True, "max_draft": k} for k in args.max_draft]
    if len(args.max_draft) > 1 or args.max_draft[0] != DEFAULT_MAX_DRAFT:
        if "draft" not in args.policies:
            parser.error("--max-draft needs --mode lossless or --policies draft")
    return [common]


def finish(results: Results, args: argparse.Namespace, calibration: dict, machine: dict) -> int:
    """Write summary.json, report.md and the two plots; print the report."""
    out = Path(args.out)
    report = build_report(results, report_settings(args, calibration, results.summaries), machine)
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = markdown_report(report)
    (out / "report.md").write_text(markdown)
    print(markdown, end="")
    plot(report, out / "pareto.png")
    plot_mixing(report, out / "mixing.png")
    plot_lossless(report, out / "lossless.png")
    return 0


def machine_of_runs(out: Path) -> dict:
    """The machine the last sweep recorded, kept when a report is rebuilt elsewhere, plus where it was rebuilt.

    A rebuilt report runs no model, so describing the rebuilding machine as the
    one that produced the numbers would misattribute them.
    """
    here = machine_description()
    rebuilt = {key: here.get(key) for key in ("cpu", "git_commit", "date_utc")}
    try:
        previous = json.loads((out / "summary.json").read_text())["machine"]
    except (OSError, ValueError, KeyError):
        log.info("no earlier summary.json with a machine in %s: recording this one", out)
        return {**here, "report_rebuilt": rebuilt}
    return {**{k: v for k, v in previous.items() if k != "report_rebuilt"}, "report_rebuilt": rebuilt}


def results_from_disk(out: Path, problems: list[Problem], calibration: dict, shares: list[float]) -> Results:
    """Every run's JSON lines in ``out``: the two ends, then any other file as a hybrid run, then query routing.

    Any run file but the two ends is a hybrid run whose curve its rows name
    (``curve_of``), so runs of decode modes this module does not know, with
    extra fields such as ``mode`` or ``round_trips``, are reported like any other.
    """
    wanted = {p.task_id for p in problems}

    def records(path: Path) -> list[dict]:
        return [r for r in read_jsonl(path) if r.get("task_id") in wanted]

    slm_runs, llm_runs = records(out / "slm-0.00.jsonl"), records(out / "llm-1.00.jsonl")
    if len(slm_runs) < len(wanted) or len(llm_runs) < len(wanted):
        raise SystemExit("citer-bench: error: the SLM-only and LLM-only runs must be complete to report")
    results = Results()
    results.add(summarise_run("slm-0.00", "slm", 0.0, slm_runs, None), slm_runs)
    results.add(summarise_run("llm-1.00", "llm", 1.0, llm_runs, None), llm_runs)
    for path in sorted(out.glob("*.jsonl")):
        run = records(path)
        if path.stem in ("slm-0.00", "llm-1.00") or not run:
            continue
        run = mark_equals_llm(run, llm_runs)
        first = run[0]
        summary = summarise_run(path.stem, curve_of(first, path.stem), target_of(first, path.stem), run,
                                first.get("threshold"))  # fmt: skip
        done = {r["task_id"] for r in run}
        if len(done) < len(wanted):
            summary["slm_pass_at_1_same_problems"] = pass_rate_on(slm_runs, done)
            summary["llm_pass_at_1_same_problems"] = pass_rate_on(llm_runs, done)
        results.add(summary, run, finished=len(done) == len(wanted))
    for share in shares:
        cut = threshold_for_share(calibration["probe_means"], share)
        chosen = mark_equals_llm(query_records(slm_runs, llm_runs, cut), llm_runs)
        results.add(summarise_run(f"query-{share:.2f}", "query", share, chosen, cut), chosen)
    return results


def pass_rate_on(records: list[dict], tasks: set[str]) -> float:
    """Pass@1 of a run restricted to ``tasks``: an unfinished run's fair baseline."""
    return sum(r["passed"] for r in records if r["task_id"] in tasks) / len(tasks)


def summaries_from_disk(
    out: Path, problems: list[Problem], calibration: dict, shares: list[float]
) -> tuple[list[dict], list[dict]]:
    """Summaries of finished runs, and of unfinished ones with the two ends on the same problems."""
    results = results_from_disk(out, problems, calibration, shares)
    return results.summaries, results.unfinished


#: Decode modes that are the plain per-token loop: runs in them join their policy's curve. "blocking" is
#: HybridGenerator's name for it (GenerationSummary.mode); "blocking+span" is the span mode.
DEFAULT_MODES = ("", "default", "blocking")


def curve_of(record: dict, run_name: str) -> str:
    """The curve a run belongs to: its label, else its policy (else its file name without the share),
    with a non-default decode ``mode`` appended so that, e.g., a lossless router run is its own curve
    (``router/lossless``, ``router/span``)."""
    curve = record.get("label") or record.get("policy") or re.sub(r"-\d+(\.\d+)?$", "", run_name)
    mode = mode_label(record.get("mode"))
    return f"{curve}/{mode}" if mode else curve


def mark_equals_llm(records: list[dict], llm_runs: list[dict]) -> list[dict]:
    """Rows with ``equals_llm`` filled in where they lack it (runs made before the field existed), from the
    completions: the same answer, character for character, as the LLM-only run's."""
    reference = {r["task_id"]: r["completion"] for r in llm_runs if "completion" in r}
    known = [r.get("equals_llm") is not None or "completion" not in r or r["task_id"] not in reference for r in records]
    return [
        r if done else {**r, "equals_llm": r["completion"] == reference[r["task_id"]]}
        for r, done in zip(records, known, strict=True)
    ]


def target_of(record: dict, run_name: str) -> float | None:
    """The run's target share from its rows, else from its file name's ``-0.30`` suffix, else unknown."""
    if record.get("target_share") is not None:
        return float(record["target_share"])
    match = re.search(r"-(\d+(\.\d+)?)$", run_name)
    return float(match.group(1)) if match else None


def model_file_name(name: str) -> str:
    """A model's file name from its alias or path, without downloading it: a report needs no model."""
    return REGISTRY[name].filename if name in REGISTRY else Path(name).name


def report_settings(args: argparse.Namespace, calibration: dict, summaries: list[dict]) -> dict:
    return {
        "slm": model_file_name(args.slm),
        "llm": model_file_name(args.llm),
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
    }


#: Curves in the order tables list them; curves not named here come after these, by name, before "query".
CURVE_ORDER: tuple[str, ...] = ("slm", "llm", "router", "confidence", "random")


def curve_rank(curve: str) -> tuple[int, str]:
    """A mode's curve (``router/span``) right after its policy's (``router``)."""
    base = curve.split("/", 1)[0]
    if base in CURVE_ORDER:
        return (CURVE_ORDER.index(base), "" if curve == base else curve)
    return (len(CURVE_ORDER) + (curve == "query"), curve)


def run_rank(summary: dict) -> tuple:
    return (*curve_rank(summary["policy"]), summary["cloud_share"], summary["run"])


def build_report(results: Results, settings: dict, machine: dict) -> dict:
    """summary.json: per-run summaries, per-curve metrics, and the paired per-problem analysis."""
    summaries = sorted(results.summaries, key=run_rank)
    slm = next(s for s in summaries if s["policy"] == "slm")["pass_at_1"]
    llm = next(s for s in summaries if s["policy"] == "llm")["pass_at_1"]
    per_policy = {}
    for policy in sorted({s["policy"] for s in summaries} - {"slm", "llm"}, key=curve_rank):
        points = [(s["cloud_share"], s["pass_at_1"]) for s in summaries if s["policy"] == policy]
        per_policy[policy] = (
            {"apgr": apgr(points, slm, llm), "cpt50": cpt(points, slm, llm, 0.5), "cpt80": cpt(points, slm, llm, 0.8)}
            if llm != slm
            else {"note": "SLM-only and LLM-only tie on this subset: no gap to recover"}
        )
        per_policy[policy]["pass_at_share"] = pass_at_shares(points, slm, llm)
    return {
        "benchmark": "humaneval-quality-vs-share",
        "machine": machine,
        "settings": settings,
        "runs": summaries,
        "policies": per_policy,
        **paired_analysis(summaries, results),
        "unfinished_runs": sorted(results.unfinished, key=run_rank),
        "lossless_at_equal_output": lossless_comparison([*summaries, *results.unfinished], results),
    }


def is_lossless(summary: dict) -> bool:
    return "lossless" in summary.get("mode", "").split("+")


def lossless_comparison(summaries: list[dict], results: Results) -> dict | None:
    """Lossless runs (draft-k, the router's lossless mode) on the problems all of them answered.

    Their answers are the LLM's greedy ones (but for near-tie flips), so what
    tells them apart is what the output cost. Round trips alone do not rank
    them: draft-k with ever larger k approaches one round trip per wrong draft
    plus one, paid for in SLM tokens decoded and thrown away. So each run is
    placed on both axes (round trips, discarded drafts per answer) and a run
    *dominates* another when it is no worse on both and better on one.
    """
    runs = [s["run"] for s in sorted(summaries, key=run_rank) if is_lossless(s)]
    if not runs:
        return None
    shared = set.intersection(*(set(results.costs[run]) for run in runs)) & set(results.outcomes["llm-1.00"])
    rows = []
    for run in runs:
        costs = [results.costs[run][t] for t in shared]
        tokens = sum(c["tokens"] for c in costs)
        answers = len(costs) or 1
        rows.append({
            "run": run,
            "round_trips_per_answer": sum(c["round_trips"] for c in costs) / answers,
            "discarded_drafts_per_answer": sum(c["drafts_rejected"] for c in costs) / answers,
            "prefill_per_token": sum(c["tokens_sent"] for c in costs) / tokens if tokens else 0.0,
            "cloud_share": sum(c["cloud_tokens"] for c in costs) / tokens if tokens else 0.0,
            "equals_llm": sum(bool(c["equals_llm"]) for c in costs),
            "pass_at_1": sum(results.outcomes[run][t] for t in shared) / len(shared) if shared else 0.0,
        })  # fmt: skip
    for row in rows:
        row["dominates"] = [other["run"] for other in rows if dominates(row, other)]
    return {
        "problems": len(shared),
        "tasks": sorted(shared, key=paired.task_order),
        "llm_pass_at_1": sum(results.outcomes["llm-1.00"][t] for t in shared) / len(shared) if shared else 0.0,
        "runs": rows,
    }


def dominates(a: dict, b: dict) -> bool:
    """a is no worse than b in round trips and in discarded drafts per answer, and better in one."""
    keys = ("round_trips_per_answer", "discarded_drafts_per_answer")
    return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)


def paired_analysis(summaries: list[dict], results: Results) -> dict:
    """End categories, each hybrid run's broken/rescued/lost/gained problems, and paired comparisons.

    Pass@1 alone hides how a hybrid gets there: a run can rescue LLM wins
    while breaking problems both models solve alone (the mixing failure), and
    HumanEval's 164 problems put ±4 points of noise on any single pass rate.
    """
    outcomes = results.outcomes
    slm, llm = outcomes["slm-0.00"], outcomes["llm-1.00"]
    categories = paired.categorise(slm, llm)
    hybrids = [s for s in [*summaries, *results.unfinished] if s["policy"] not in ("slm", "llm")]
    mixing = {s["run"]: paired.transitions(categories, outcomes[s["run"]]) for s in hybrids}
    comparisons = [
        paired.compare(s["run"], outcomes[s["run"]], end, outcomes[end], kind)
        for s in summaries
        if s["policy"] not in ("slm", "llm")
        for end, kind in (("slm-0.00", "vs_slm"), ("llm-1.00", "vs_llm"))
    ]
    comparisons += [
        paired.compare(a, outcomes[a], b, outcomes[b], "matched_share") for a, b in matched_share_pairs(summaries)
    ]
    return {
        "end_categories": {
            **paired.category_sizes(categories),
            "tasks": paired.tasks_by_category(categories),
        },
        "mixing": mixing,
        "paired_comparisons": [c.as_dict() for c in comparisons],
        "paired_method": {
            "ci": f"paired bootstrap over problems, percentile {paired.CONFIDENCE:.0%}",
            "resamples": paired.BOOTSTRAP_RESAMPLES,
            "seed": paired.BOOTSTRAP_SEED,
            "test": "exact McNemar: two-sided binomial(0.5) on the problems only one run solves",
            "matched_share": "each token-level run against the run of every other token-level curve "
            "nearest in achieved cloud share",
        },
    }


def matched_share_pairs(summaries: list[dict]) -> list[tuple[str, str]]:
    """Token-level curves against each other at the nearest achieved share (query routing is per problem)."""
    curves: dict[str, list[tuple[str, float]]] = {}
    for s in summaries:
        if s["policy"] not in ("slm", "llm", "query"):
            curves.setdefault(s["policy"], []).append((s["run"], s["cloud_share"]))
    return paired.nearest_share_pairs({curve: curves[curve] for curve in sorted(curves, key=curve_rank)})


def pass_at_shares(points: list[tuple[float, float]], slm: float, llm: float) -> dict[str, float]:
    """pass@1 read off the curve at fixed shares, linear between measured points (ends included).

    Achieved shares never land exactly on the targets, so comparing policies
    "at 20 % cloud" needs this reading rather than the runs' nominal targets.
    """
    curve = sorted([(0.0, slm), *points, (1.0, llm)])
    shares, passes = [x for x, _ in curve], [y for _, y in curve]
    return {f"{share:.2f}": float(np.interp(share, shares, passes)) for share in COMPARISON_SHARES}


# -- the printed report (report.md) ------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _p_value(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_report(report: dict) -> str:
    """The report as Markdown: runs with their mixing counts, paired comparisons, curve metrics."""
    settings, sizes = report["settings"], report["end_categories"]
    lines = [
        "# HumanEval quality vs cloud share",
        "",
        f"{settings['slm']} + {settings['llm']}; {settings['problems']} problems, greedy, raw completion.",
        f"Ends: both right {sizes['both_right']}, only LLM right {sizes['only_llm_right']}, "
        f"only SLM right {sizes['only_slm_right']}, both wrong {sizes['both_wrong']}.",
        "",
        *_runs_table(report["runs"], report["mixing"], sizes),
        "",
        "broken: both ends right, hybrid wrong. rescued: only the LLM right, hybrid right. lost SLM wins: only the "
        "SLM right, hybrid wrong. gained: both ends wrong, hybrid right. Round trips: `round_trips` where a run "
        "records it, else cloud calls.",
        "",
        "## Paired comparisons",
        "",
        f"Δ = pass@1(a) − pass@1(b) in points; 95 % CI from a paired bootstrap over problems "
        f"({report['paired_method']['resamples']:,} resamples, seed {report['paired_method']['seed']}); "
        "p: exact McNemar on the problems only one run solves.",
        "",
        *_comparisons_table(report["runs"], report["paired_comparisons"]),
        "",
        "## Curves",
        "",
        *_curves_table(report["policies"]),
    ]
    modes = _modes_table(report["runs"], report["unfinished_runs"])
    if modes:
        lines += [
            "",
            "## Decode modes",
            "",
            "lossless: SLM tokens are drafts the LLM verifies (the LLM's greedy output); span: a cloud turn goes on "
            "while the LLM's own top-1 is below the cut; overlap: the SLM decodes during a call. = LLM: answers "
            "identical to the LLM-only run's. Drafts: SLM tokens the LLM verified / rolled back.",
            "",
            *modes,
        ]
        lossless = _lossless_lines(report.get("lossless_at_equal_output"))
        if lossless:
            lines += ["", "### Lossless at equal output", "", *lossless]
    if report["unfinished_runs"]:
        lines += ["", "## Unfinished runs", "", *_unfinished_lines(report["unfinished_runs"], report["mixing"])]
    return "\n".join(lines) + "\n"


def _runs_table(runs: list[dict], mixing: dict, sizes: dict) -> list[str]:
    header = (
        f"| run | target share | cloud share | pass@1 | broken (of {sizes['both_right']}) "
        f"| rescued (of {sizes['only_llm_right']}) | lost SLM wins (of {sizes['only_slm_right']}) "
        f"| gained (of {sizes['both_wrong']}) | round trips / answer | prefill tok / generated tok "
        "| decode steps / generated tok | = LLM |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in runs:
        m = mixing.get(s["run"])
        counts = [str(m[k]) for k in ("broken", "rescued", "lost_slm_wins", "gained")] if m else ["–"] * 4
        lines.append(
            f"| {s['run']} | {_pct(s['target_share'], 0)} | {_pct(s['cloud_share'])} | {_pct(s['pass_at_1'])} | "
            f"{' | '.join(counts)} | {s['round_trips_per_answer']:.1f} | {s['prefill_per_token']:.2f} | "
            f"{s['decode_steps_per_token']:.2f} | {_equals(s)} |"
        )
    return lines


def _equals(summary: dict) -> str:
    """Answers identical to the LLM-only run's, of those compared."""
    value = summary.get("equals_llm")
    return "–" if value is None or summary["policy"] in ("slm", "llm") else f"{value}/{summary['equals_llm_of']}"


def _mode_settings(summary: dict) -> str:
    mode, settings = summary.get("mode", ""), summary.get("settings", {})
    parts = []
    if "lossless" in mode.split("+"):
        parts.append(f"max_draft {settings.get('max_draft')}")
    if "span" in mode.split("+"):
        parts.append(f"span below {settings.get('span_below')}, ≤{settings.get('tokens_per_call')} tok/call")
    elif (settings.get("tokens_per_call") or 1) > 1:
        parts.append(f"{settings['tokens_per_call']} tok/call")
    return ", ".join(parts) or "–"


def _modes_table(runs: list[dict], unfinished: list[dict]) -> list[str]:
    """Runs in a decode mode other than the plain loop, finished or not, with what the mode did."""
    rows = [s for s in [*runs, *unfinished] if s.get("mode")]
    if not rows:
        return []
    lines = [
        "| run | mode | settings | problems | cloud share | pass@1 | round trips / answer | cloud tok / round trip "
        "| drafts accepted / rejected | = LLM |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows:
        acceptance = "" if s["draft_acceptance"] is None else f" ({_pct(s['draft_acceptance'], 0)})"
        drafts = f"{s['drafts_accepted']} / {s['drafts_rejected']}{acceptance}" if is_lossless(s) else "–"
        lines.append(
            f"| {s['run']} | {s['mode']} | {_mode_settings(s)} | {s['problems']} | {_pct(s['cloud_share'])} | "
            f"{_pct(s['pass_at_1'])} | {s['round_trips_per_answer']:.1f} | {s['cloud_tokens_per_round_trip']:.2f} | "
            f"{drafts} | {_equals(s)} |"
        )
    return lines


def _lossless_lines(comparison: dict | None) -> list[str]:
    if not comparison or not comparison["runs"]:
        return []
    lines = [
        f"On the {comparison['problems']} problems every lossless run answered (LLM-only pass@1 there "
        f"{_pct(comparison['llm_pass_at_1'])}); the output is the LLM's, so the cost is what differs. Discarded "
        "drafts: SLM tokens decoded, then rolled back (edge work thrown away, also prefilled by the cloud); "
        "dominates: no worse in round trips and discarded drafts, better in one (`lossless.png`).",
        "",
        "| run | round trips / answer | discarded drafts / answer | prefill tok / generated tok | cloud share "
        "| = LLM | pass@1 | dominates |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in comparison["runs"]:
        lines.append(
            f"| {row['run']} | {row['round_trips_per_answer']:.2f} | {row['discarded_drafts_per_answer']:.1f} | "
            f"{row['prefill_per_token']:.2f} | {_pct(row['cloud_share'])} | "
            f"{row['equals_llm']}/{comparison['problems']} | {_pct(row['pass_at_1'])} | "
            f"{', '.join(row['dominates']) or '–'} |"
        )
    return lines


def _comparisons_table(runs: list[dict], comparisons: list[dict]) -> list[str]:
    share = {s["run"]: s["cloud_share"] for s in runs}
    lines = [
        "| a | b | cloud share a / b | pass@1 a / b | Δ | 95 % CI | only a right | only b right | McNemar p |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for c in comparisons:
        low, high = c["ci95"]
        lines.append(
            f"| {c['a']} | {c['b']} | {_pct(share[c['a']])} / {_pct(share[c['b']])} | "
            f"{_pct(c['pass_at_1_a'])} / {_pct(c['pass_at_1_b'])} | {_points(c['difference'])} | "
            f"[{_points(low)}, {_points(high)}] | {c['only_a_right']} | {c['only_b_right']} | "
            f"{_p_value(c['mcnemar_p'])} |"
        )
    return lines


def _curves_table(policies: dict) -> list[str]:
    shares = " / ".join(f"{100 * s:.0f}" for s in COMPARISON_SHARES)
    lines = [f"| policy | APGR | CPT(50 %) | CPT(80 %) | pass@1 at {shares} % cloud |", "|---|---:|---:|---:|---|"]
    for policy, metrics in policies.items():
        at = " / ".join(_pct(v) for v in metrics["pass_at_share"].values())
        if "apgr" not in metrics:
            lines.append(f"| {policy} | – | – | – | {at} |")
            continue
        lines.append(
            f"| {policy} | {metrics['apgr']:.2f} | {_pct(metrics['cpt50'])} | {_pct(metrics['cpt80'])} | {at} |"
        )
    return lines


def _unfinished_lines(unfinished: list[dict], mixing: dict) -> list[str]:
    lines = []
    for row in unfinished:
        m = mixing[row["run"]]
        lines.append(
            f"- {row['run']}: {row['problems']} problems, pass@1 {_pct(row['pass_at_1'])} at "
            f"{_pct(row['cloud_share'])} cloud (SLM {_pct(row['slm_pass_at_1_same_problems'])}, LLM "
            f"{_pct(row['llm_pass_at_1_same_problems'])} on the same problems); broken {m['broken']}, "
            f"rescued {m['rescued']}, lost SLM wins {m['lost_slm_wins']}, gained {m['gained']}; "
            f"{row['round_trips_per_answer']:.1f} round trips / answer"
            + ("" if row.get("equals_llm") is None else f"; = LLM {row['equals_llm']}/{row['equals_llm_of']}")
        )
    return lines


# -- plots ---------------------------------------------------------------------


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


#: The mixing plot's bars: (count, sign, colour, legend). Wins of the mix point up, its losses down.
MIXING_BARS: tuple[tuple[str, int, str, str], ...] = (
    ("rescued", 1, "tab:green", "rescued (only LLM right → right)"),
    ("gained", 1, "yellowgreen", "gained (both wrong → right)"),
    ("broken", -1, "tab:red", "broken (both right → wrong)"),
    ("lost_slm_wins", -1, "tab:orange", "lost SLM wins (only SLM right → wrong)"),
)


def plot_mixing(report: dict, path: Path) -> None:
    """Per hybrid run, problems the mix won (up) and lost (down) against the two models alone."""
    runs = [s for s in report["runs"] if s["run"] in report["mixing"]]
    if not runs:
        return
    sizes = report["end_categories"]
    title = (f"What mixing does per problem (ends: {sizes['only_llm_right']} only-LLM wins, "
             f"{sizes['only_slm_right']} only-SLM wins, {sizes['both_right']} both right)")  # fmt: skip
    x = np.arange(len(runs))
    with saved_axes(path, "run (achieved cloud share)", "problems", title, (max(7, 0.55 * len(runs)), 4.5)) as ax:
        bottoms = {1: np.zeros(len(runs)), -1: np.zeros(len(runs))}
        for key, sign, colour, label in MIXING_BARS:
            heights = sign * np.array([report["mixing"][s["run"]][key] for s in runs], dtype=float)
            ax.bar(x, heights, bottom=bottoms[sign], color=colour, label=label, width=0.7)
            bottoms[sign] = bottoms[sign] + heights
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, [f"{s['run']}\n({100 * s['cloud_share']:.1f}%)" for s in runs], rotation=60, fontsize=7)


def plot_lossless(report: dict, path: Path) -> None:
    """Lossless runs on two cost axes: round trips against SLM drafts thrown away, per answer."""
    comparison = report.get("lossless_at_equal_output")
    if not comparison or not comparison["runs"]:
        return
    title = f"Lossless decoding: what the LLM's output cost ({comparison['problems']} HumanEval problems)"
    with saved_axes(path, "round trips per answer", "discarded SLM drafts per answer", title, (7, 4.5)) as ax:
        draft = sorted((r for r in comparison["runs"] if r["run"].startswith("draft-")),
                       key=lambda r: r["round_trips_per_answer"])  # fmt: skip
        if draft:
            ax.plot([r["round_trips_per_answer"] for r in draft], [r["discarded_drafts_per_answer"] for r in draft],
                    marker="s", color="grey", label="draft-k")  # fmt: skip
            for r in draft:
                where = (r["round_trips_per_answer"], r["discarded_drafts_per_answer"])
                ax.annotate(
                    r["run"].removeprefix("draft-"), where, fontsize=7, xytext=(4, 4), textcoords="offset pixels"
                )
        for r in comparison["runs"]:
            if r in draft:
                continue
            ax.scatter(r["round_trips_per_answer"], r["discarded_drafts_per_answer"], marker="o", zorder=3,
                       label=r["run"])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
