"""Edge speed on pinned cores: tokens/s of each decode mode as a ratio to SLM-only, against emulated RTT.

Why pinned: on a 2-core box an unpinned cloud server steals the SLM's CPU,
so the other benchmarks' hybrid tokens/s measure contention, not the decode
loop's design. Here each side gets one core of its own:

- the edge (this process: SLM, router, gRPC client, the decode loop's
  threads) runs on ``--edge-core`` with one llama.cpp thread;
- the cloud is ``taskset -c <cloud-core> citer-cloud serve --threads 1``;
- the network is the delay proxy in a process of its own, on the cloud's
  core (it stands for the wire, so it must not use the edge's CPU or GIL);
- the SLM-only baseline runs in this same process on the same single core,
  once in every RTT block, so each ratio divides by a baseline measured
  minutes apart, not at the start of a long run.

Both models' prompt prefill happens off the clock: before the timer starts,
the SLM and the cloud session both hold the prompt but its last token (one
session serves every mode, so the server prefills each prompt once). The
single-core "cloud" would otherwise spend seconds prefilling each prompt, a
cost of this box's hardware that a GPU server does not have, and the same for
every mode. The clock therefore covers decoding only, the part the modes change.

Modes (same prompts, greedy; the shipped router at ``--cloud-share``):
``slm-only``; ``blocking`` (each routed token waits for its round trip);
``overlap`` (decode-while-waiting); ``span`` (multi-token turns:
``tokens_per_call=--span-tokens``, ``span_below=--span-below``);
``lossless`` (the router decides when to verify, ``max_draft=--max-draft``);
``lossless+overlap``; ``draft-k`` (LocalPolicy, lossless, max_draft k:
classic speculative decoding). Per mode and RTT it records tokens/s and the
ratio to SLM-only, seconds the edge was blocked on the cloud per answer,
round trips per answer, cloud forward passes per generated token (GetStats
deltas), cloud share, and for lossless modes whether each answer equals the
LLM's own greedy answer (one cloud-only Decode call per prompt at RTT 0;
differences are counted as tie flips, never hidden).

    citer-bench edge-speed            # 4 prompts x 64 tokens, RTT 0/20/50/100 ms (about 20-25 min)
    citer-bench edge-speed --quick    # 2 prompts x 24 tokens, RTT 0/50 ms, to bench/results/edge-speed-quick.*
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from tqdm import tqdm

from citer_bench.humaneval import load_problems
from citer_bench.machine import RESULTS_DIR, machine_description, write_result
from citer_bench.plotting import saved_axes
from citer_edge.cloud.local import LocalCloud, terminate
from citer_edge.cloud.session import CloudSession
from citer_edge.decode import GenerationSummary, HybridGenerator
from citer_edge.models import DEFAULT_LLM, DEFAULT_SLM, resolve_model
from citer_edge.routing.policies import ConfidencePolicy, LocalPolicy, RoutingPolicy
from citer_edge.routing.router import default_policy
from citer_edge.slm import LocalModel
from citer_protocol import SamplingSettings, pb, pb_grpc

log = logging.getLogger(__name__)

GREEDY = SamplingSettings()
BASELINE = "slm-only"
PROXY_READY = "delay proxy ready on port"
PROXY_SET = "delay proxy rtt set to"
#: The delay proxy as a child process: the forwarding code of citer_bench.delay_proxy. Each line on its stdin is
#: a new RTT in ms, acknowledged once in force (one proxy, one connection, for the whole run); EOF ends it.
_PROXY_SCRIPT = (
    "import sys\n"
    "from citer_bench.delay_proxy import DelayProxy\n"
    "proxy = DelayProxy(int(sys.argv[1]), rtt_ms=0.0).start()\n"
    f"print({PROXY_READY!r}, proxy.port, flush=True)\n"
    "for line in sys.stdin:\n"
    "    proxy.delay(float(line) / 2000.0)\n"
    f"    print({PROXY_SET!r}, line.strip(), flush=True)\n"
)
_STAT_KEYS = ("forward_passes", "tokens_prefilled", "tokens_generated", "decode_requests")
QUICK = {"prompts": 2, "max_tokens": 24, "rtt_ms": [0.0, 50.0], "name": "edge-speed-quick"}
FULL = {"prompts": 4, "max_tokens": 64, "rtt_ms": [0.0, 20.0, 50.0, 100.0], "name": "edge-speed"}


# -- modes ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """One decode configuration: which policy routes and which HybridGenerator options are on."""

    name: str
    label: str  # for the table and the plot legend
    router: bool = True  # the shipped router; False: LocalPolicy (SLM-only, draft-k)
    cloud: bool = True
    lossless: bool = False
    overlap: bool = False
    max_draft: int = 16
    tokens_per_call: int = 1
    span_below: float = 0.0

    def generator_options(self) -> dict[str, object]:
        """Keyword arguments for HybridGenerator beyond the SLM, policy and cloud."""
        return {
            "lossless": self.lossless,
            "overlap": self.overlap,
            "max_draft": self.max_draft,
            "tokens_per_call": self.tokens_per_call,
            "span_below": self.span_below,
        }


def build_modes(span_tokens: int, span_below: float, max_draft: int, draft_ks: Sequence[int]) -> list[Mode]:
    """Every mode the benchmark knows, baseline first; the names are what ``--modes`` selects."""
    modes = [
        Mode(BASELINE, "SLM only (baseline)", router=False, cloud=False),
        Mode("blocking", "blocking"),
        Mode("overlap", "decode-while-waiting", overlap=True),
        Mode("span", f"multi-token (n={span_tokens}, τ={span_below:g})", tokens_per_call=span_tokens,
             span_below=span_below),
        Mode("lossless", f"lossless (router, max_draft {max_draft})", lossless=True, max_draft=max_draft),
        Mode("lossless+overlap", "lossless + decode-while-waiting", lossless=True, overlap=True, max_draft=max_draft),
    ]  # fmt: skip
    modes += [Mode(f"draft-{k}", f"draft-{k} speculative", router=False, lossless=True, max_draft=k) for k in draft_ks]
    return modes


def select_modes(modes: list[Mode], wanted: Sequence[str] | None) -> list[Mode]:
    """The modes asked for, in the benchmark's order; the baseline is always kept (every ratio needs it)."""
    if not wanted:
        return modes
    unknown = set(wanted) - {mode.name for mode in modes}
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {[m.name for m in modes]}")
    return [mode for mode in modes if mode.name == BASELINE or mode.name in wanted]


# -- pinning --------------------------------------------------------------------------------------------------


def taskset_prefix(core: int) -> list[str]:
    """``taskset`` pins a child before it starts, so its model load and every thread it spawns stay on ``core``."""
    return ["taskset", "--cpu-list", str(core)]


def pinned_cloud(model_path: str | os.PathLike[str], core: int, verbose: bool = False) -> LocalCloud:
    """``citer-cloud serve`` on one core with one llama.cpp thread, on a free loopback port, dying with us."""
    return LocalCloud(model_path, extra_args=["--threads", "1"], startup_timeout_s=300.0, verbose=verbose,
                      command_prefix=taskset_prefix(core))  # fmt: skip


def proxy_command(target_port: int, core: int, python: str = sys.executable) -> list[str]:
    """The delay proxy in its own process on ``core``: the emulated wire must not run on the edge's core."""
    return [*taskset_prefix(core), python, "-c", _PROXY_SCRIPT, str(target_port)]


def pin_process(pid: int, core: int) -> int:
    """Pin every existing thread of ``pid`` to ``core`` (threads created later inherit it); returns how many."""
    pinned = 0
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, {core})
            pinned += 1
        except ProcessLookupError:
            continue  # the thread ended meanwhile
    return pinned


def thread_affinity(pid: int) -> dict[str, int]:
    """How many of ``pid``'s threads may run on each CPU set, e.g. ``{"0": 14}``: the proof a run was pinned."""
    counts: dict[str, int] = {}
    for tid in _threads(pid):
        try:
            cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(tid)))
        except ProcessLookupError:
            continue
        counts[cpus] = counts.get(cpus, 0) + 1
    return counts


def _threads(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc: what the cloud spent per answer."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ChildService:
    """A pinned helper process that prints ``<ready> <port>`` once serving; closing its stdin stops it.

    The delay proxy's launcher: unlike the cloud (a ``LocalCloud`` with a
    ``taskset`` prefix), it takes commands on stdin and acknowledges each
    (a new RTT in force) on stdout.
    """

    def __init__(self, command: list[str], ready: str, name: str, verbose: bool = False) -> None:
        self.command = command
        self.ready = ready
        self.name = name
        self.verbose = verbose
        self.port: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ChildService:
        log.info("starting the %s: %s", self.name, " ".join(self.command[:5]))
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if self.verbose else subprocess.DEVNULL, text=True,
        )  # fmt: skip
        threading.Thread(target=self._watch, daemon=True).start()
        line = self.read_line(timeout_s=300.0)
        if not line.startswith(self.ready):
            self.__exit__()
            raise RuntimeError(f"the {self.name} did not start: {line!r} (--verbose shows its stderr)")
        self.port = int(line.split()[-1])
        return self

    def _watch(self) -> None:
        """Read the child's stdout to the end (a full pipe would block it), line by line into a queue."""
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(f"<exited with status {self._process.wait()}>")

    def read_line(self, timeout_s: float = 30.0) -> str:
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            return f"<no output within {timeout_s:g} s>"

    def request(self, line: str, expect: str) -> None:
        """Send one command line and wait for its acknowledgement (e.g. a new RTT in force)."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        reply = self.read_line()
        if not reply.startswith(expect):
            raise RuntimeError(f"the {self.name} answered {reply!r} to {line!r}")

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        terminate(self._process)
        self._process = None


# -- one answer -----------------------------------------------------------------------------------------------


def server_stats(stub: pb_grpc.LlmServiceStub) -> dict[str, int]:
    """The cloud's counters; asked directly (not through the proxy), between answers, off the clock."""
    reply = stub.GetStats(pb.StatsRequest(), timeout=30)
    return {key: int(getattr(reply, key)) for key in _STAT_KEYS}


def park_session(session: CloudSession, prompt: list[int]) -> None:
    """Leave the server holding the prompt but its last token, whatever the session held before (off the clock).

    The server refuses an empty sync-only request, so a call cannot merely
    roll back: it appends one filler token that differs from the prompt's
    last one, which the answer's first call then drops. The first time per
    prompt this is the prompt's prefill, in one batch; afterwards one token.
    Leaving an earlier answer's tokens on the server instead would make the
    next answer's drafts "known" to it, which the client cannot verify (see
    the README: lossless generation of a prompt the session already answered).
    """
    filler = 0 if prompt[-1] != 0 else 1
    if session.decode([*prompt[:-1], filler], 0, GREEDY) is None:
        raise RuntimeError(f"the cloud did not take the prompt: {session.last_error or session.routing_stopped}")


def prepare(slm: LocalModel, session: CloudSession | None, prompt: list[int]) -> None:
    """Bring both sides to the same state before each timed answer, off the clock (see the module docstring).

    Both hold the prompt but its last token: the SLM keeps the prompt's KV from
    the answer before (re-evaluating one token), and the decode loop's own
    ``sync`` evaluates the last prompt token; the cloud gets it with the first
    routed call, as it would after a fresh prompt.
    """
    slm.sync(prompt[:-1])
    if session is not None:
        park_session(session, prompt)


def run_answer(bench: Bench, mode: Mode, prompt: list[int]) -> dict[str, object]:
    """One timed greedy answer, with the decode loop's summary and the cloud's work for it."""
    generator = bench.generators[mode.name]
    session = bench.session if mode.cloud else None
    prepare(bench.slm, session, prompt)
    stats_before, cloud_cpu, edge_cpu = server_stats(bench.stub), process_cpu_s(bench.cloud.pid), time.process_time()
    result = generator.generate(prompt, max_tokens=bench.max_tokens, sampling=GREEDY)
    edge_cpu = time.process_time() - edge_cpu
    cloud_cpu = process_cpu_s(bench.cloud.pid) - cloud_cpu
    stats_after = server_stats(bench.stub)
    record = summary_record(result.summary)
    record.update({f"server_{key}": stats_after[key] - stats_before[key] for key in _STAT_KEYS})
    record.update(edge_cpu_s=edge_cpu, cloud_cpu_s=cloud_cpu, token_ids=result.token_ids)
    return record


def summary_record(summary: GenerationSummary) -> dict[str, object]:
    """The fields of a GenerationSummary this benchmark reports."""
    keys = ("tokens", "cloud_tokens", "cloud_calls", "cloud_fallbacks", "cloud_wait_s", "elapsed_s", "finish_reason",
            "drafts_accepted", "drafts_rejected", "unverified_tokens", "overlap_kept", "overlap_discarded")  # fmt: skip
    return {key: getattr(summary, key) for key in keys}


def reference_answer(session: CloudSession, prompt: list[int], max_tokens: int) -> dict[str, object]:
    """The LLM's own greedy answer, cloud only at RTT 0: what lossless modes must reproduce.

    One Decode call producing every token, on the session the answers use
    (parked by ``park_session``), so the prompt's KV is the one they start from. The answers evaluate the
    last prompt token in a batch with the SLM's tokens, this call alone, and
    batch shapes change llama.cpp's numerics (docs/architecture.md, "Numerics"):
    a lossless answer can differ where two candidates nearly tie.
    """
    started = time.perf_counter()
    reply = session.decode(prompt, max_tokens, GREEDY)
    elapsed = time.perf_counter() - started
    if reply is None:
        raise RuntimeError(f"the cloud did not answer the reference call: {session.last_error}")
    return {"token_ids": list(reply.tokens), "elapsed_s": elapsed, "tokens_per_s": len(reply.tokens) / elapsed}


def compare_to_reference(token_ids: Sequence[int], reference: Sequence[int]) -> int | None:
    """None when the answer is the LLM's greedy answer; else the first position where they differ."""
    if list(token_ids) == list(reference):
        return None
    return next((i for i, (a, b) in enumerate(zip(token_ids, reference, strict=False)) if a != b),
                min(len(token_ids), len(reference)))  # fmt: skip


# -- results --------------------------------------------------------------------------------------------------


def summarise_cell(records: list[dict], lossless: bool) -> dict[str, object]:
    """One mode at one RTT over all prompts: rates from totals (so long answers weigh more), costs per answer."""
    answers, tokens = len(records), sum(r["tokens"] for r in records)
    elapsed = sum(r["elapsed_s"] for r in records)

    def total(key: str) -> float:
        return sum(r[key] for r in records)

    cell: dict[str, object] = {
        "answers": answers,
        "tokens": tokens,
        "elapsed_s": elapsed,
        "tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "blocked_s_per_answer": total("cloud_wait_s") / answers if answers else 0.0,
        "round_trips_per_answer": total("cloud_calls") / answers if answers else 0.0,
        "server_requests_per_answer": total("server_decode_requests") / answers if answers else 0.0,
        "forward_passes_per_token": total("server_forward_passes") / tokens if tokens else 0.0,
        "prefilled_per_token": total("server_tokens_prefilled") / tokens if tokens else 0.0,
        "cloud_share": total("cloud_tokens") / tokens if tokens else 0.0,
        "edge_cpu_s_per_answer": total("edge_cpu_s") / answers if answers else 0.0,
        # The edge's CPU time over the time it was not blocked on the cloud: near 100 % when nothing else takes its
        # core (the SLM is CPU-bound whenever it is not waiting); lower means other load took part of it.
        "edge_core_share": total("edge_cpu_s") / (elapsed - total("cloud_wait_s")) if elapsed else 0.0,
        "cloud_cpu_s_per_answer": total("cloud_cpu_s") / answers if answers else 0.0,
        "cloud_fallbacks": int(total("cloud_fallbacks")),
        "unverified_tokens": int(total("unverified_tokens")),
        "drafts_accepted": int(total("drafts_accepted")),
        "drafts_rejected": int(total("drafts_rejected")),
        "overlap_kept": int(total("overlap_kept")),
        "overlap_discarded": int(total("overlap_discarded")),
    }
    if lossless:
        flips = [r for r in records if r.get("first_difference") is not None]
        cell["equal_llm"] = answers - len(flips)
        cell["tie_flips"] = len(flips)
        cell["first_differences"] = [r["first_difference"] for r in flips]
    return cell


def add_ratios(results: dict[str, dict[str, dict]]) -> None:
    """Each cell's tokens/s over the SLM-only baseline of the same RTT block."""
    for by_rtt in results.values():
        for rtt, cell in by_rtt.items():
            base = results[BASELINE][rtt]["tokens_per_s"]
            cell["ratio_to_slm"] = cell["tokens_per_s"] / base if base else 0.0


def rtt_key(rtt_ms: float) -> str:
    return f"{rtt_ms:g}"


def ratio_table(results: dict[str, dict[str, dict]], labels: dict[str, str], rtts: Sequence[float]) -> str:
    """Markdown: tokens/s as a ratio to SLM-only, mode by RTT (the headline)."""
    head = "| mode | " + " | ".join(f"{rtt_key(r)} ms" for r in rtts) + " |"
    rows = [head, "|---|" + "---:|" * len(rtts)]
    for mode, by_rtt in results.items():
        cells = [f"{by_rtt[rtt_key(r)]['ratio_to_slm']:.2f}× ({by_rtt[rtt_key(r)]['tokens_per_s']:.1f})" for r in rtts]
        rows.append(f"| {labels.get(mode, mode)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def detail_table(results: dict[str, dict[str, dict]], labels: dict[str, str], rtts: Sequence[float]) -> str:
    """Markdown: every measured cost per mode and RTT."""
    rows = [
        "| mode | RTT ms | tok/s | × SLM | blocked s/answer | round trips/answer | cloud passes/token "
        "| cloud share | edge core share | = LLM greedy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode, by_rtt in results.items():
        for rtt in rtts:
            c = by_rtt[rtt_key(rtt)]
            same = f"{c['equal_llm']}/{c['answers']}" if "equal_llm" in c else "–"
            rows.append(
                f"| {labels.get(mode, mode)} | {rtt_key(rtt)} | {c['tokens_per_s']:.1f} | {c['ratio_to_slm']:.2f} "
                f"| {c['blocked_s_per_answer']:.2f} | {c['round_trips_per_answer']:.1f} "
                f"| {c['forward_passes_per_token']:.2f} | {c['cloud_share']:.1%} | {c['edge_core_share']:.0%} "
                f"| {same} |"
            )
    return "\n".join(rows)


def target_verdict(results: dict[str, dict[str, dict]], rtt_ms: float = 50.0, goal: float = 0.9) -> str:
    """The issue's target, stated plainly whether met or not."""
    key = rtt_key(rtt_ms)
    if key not in results.get("overlap", {}) or key not in results.get("blocking", {}):
        return f"target not evaluated: needs the overlap and blocking modes at {key} ms"
    overlap, blocking = results["overlap"][key]["ratio_to_slm"], results["blocking"][key]["ratio_to_slm"]
    met = overlap >= goal and blocking < overlap
    return (
        f"target {'MET' if met else 'NOT MET'}: decode-while-waiting at {key} ms RTT runs at {overlap:.2f}× SLM-only "
        f"(goal ≥ {goal:g}×); blocking calls {blocking:.2f}×"
    )


def anomalies(results: dict[str, dict[str, dict]]) -> list[str]:
    """Cells where the cloud was not used as the mode intends (a fallback, unverified text): their rates mislead."""
    found = []
    for mode, by_rtt in results.items():
        for rtt, cell in by_rtt.items():
            if cell["cloud_fallbacks"] or cell["unverified_tokens"]:
                found.append(f"{mode} at {rtt} ms: {cell['cloud_fallbacks']} fallbacks to the SLM, "
                             f"{cell['unverified_tokens']} unverified tokens")  # fmt: skip
    return found


def plot(payload: dict, path: Path) -> None:
    """Tokens/s ratio to SLM-only against RTT, one line per mode."""
    settings = payload["settings"]
    edge, cloud = short_name(settings["slm"]), short_name(settings["llm"])
    title = (f"edge {edge} on core {settings['edge_core']}, cloud {cloud} on core {settings['cloud_core']}; "
             f"{settings['prompts']} prompts × {settings['max_tokens']} tokens")  # fmt: skip
    highest = 1.0
    with saved_axes(path, "round-trip time (ms)", "tokens/s ÷ SLM-only", title, size=(7, 5)) as ax:
        ax.axhline(1.0, color="grey", linewidth=1, label="SLM only")
        ax.axhline(0.9, color="grey", linewidth=1, linestyle=":", label="target 0.9× (decode-while-waiting)")
        for mode, by_rtt in payload["results"].items():
            if mode == BASELINE:
                continue
            rtts = sorted(by_rtt, key=float)
            ratios = [by_rtt[r]["ratio_to_slm"] for r in rtts]
            highest = max(highest, *ratios)
            style = "--" if mode.startswith("draft-") else "-"
            ax.plot([float(r) for r in rtts], ratios, style, marker="o", label=payload["labels"].get(mode, mode))
        ax.set_ylim(0, highest + 0.6)  # room above the lines for the legend


def short_name(model_file: str) -> str:
    """``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`` -> ``qwen2.5-coder-0.5b``, for a title that fits."""
    return model_file.split("-instruct")[0].removesuffix(".gguf")


# -- the run --------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every answer needs: the models, the cloud process, one cloud session and one generator per mode.

    One session serves every mode (never two at once): the server keeps each
    prompt's KV, so the single-core cloud prefills a prompt once, not once per
    mode and RTT, and every answer starts from the same server state.
    """

    slm: LocalModel
    cloud: LocalCloud
    proxy: ChildService
    stub: pb_grpc.LlmServiceStub
    session: CloudSession
    generators: dict[str, HybridGenerator]
    max_tokens: int

    @classmethod
    def open(cls, slm: LocalModel, cloud: LocalCloud, proxy: ChildService, modes: list[Mode], router: RoutingPolicy,
             max_tokens: int) -> Bench:  # fmt: skip
        stub = pb_grpc.LlmServiceStub(grpc.insecure_channel(cloud.address))
        # A generous deadline: a single-core cloud verifying 16 drafts must never be cut short into a fallback.
        session = CloudSession(proxy.address, slm.fingerprint, timeout_s=120.0)
        generators = {
            mode.name: HybridGenerator(slm, router if mode.router else LocalPolicy(), session if mode.cloud else None,
                                       **mode.generator_options())
            for mode in modes
        }  # fmt: skip
        return cls(slm, cloud, proxy, stub, session, generators, max_tokens)

    def set_rtt(self, rtt_ms: float) -> None:
        self.proxy.request(f"{rtt_ms:g}", PROXY_SET)


def rtt_order(rtts: Sequence[float], prompt_index: int) -> list[float]:
    """RTTs in order for even prompts and reversed for odd ones, so slow drift in background load spreads evenly."""
    return list(rtts) if prompt_index % 2 == 0 else list(reversed(rtts))


def run_prompt(bench: Bench, modes: list[Mode], prompt_id: str, prompt: list[int], rtts: list[float],
               bar: tqdm) -> tuple[list[dict], dict[str, object]]:  # fmt: skip
    """Every mode at every RTT on one prompt (modes interleaved, so load drift hits them alike)."""
    bench.set_rtt(0.0)
    park_session(bench.session, prompt)  # the prompt's one prefill on the cloud
    cloud_cpu = process_cpu_s(bench.cloud.pid)
    reference = reference_answer(bench.session, prompt, bench.max_tokens)
    # The CPU-bound cloud's share of its core while it decoded alone: 100 % means no other load took any of it.
    reference["cloud_core_share"] = (process_cpu_s(bench.cloud.pid) - cloud_cpu) / reference["elapsed_s"]
    records = []
    for rtt in rtts:
        bench.set_rtt(rtt)
        for mode in modes:
            bar.set_description(f"{prompt_id}, rtt {rtt_key(rtt)} ms, {mode.name}")
            record = run_answer(bench, mode, prompt)
            record.update(mode=mode.name, rtt_ms=rtt, prompt=prompt_id)
            if mode.lossless:  # token ids kept where a difference may need explaining
                record["first_difference"] = compare_to_reference(record["token_ids"], reference["token_ids"])
            else:
                del record["token_ids"]
            log.debug("%s", record)
            records.append(record)
            bar.update()
    return records, {"prompt": prompt_id, **reference}


def group(records: list[dict], modes: list[Mode], rtts: Sequence[float]) -> dict[str, dict[str, dict]]:
    """Per-answer records into one summary per mode and RTT, with ratios to the same RTT's SLM-only runs."""
    results = {
        mode.name: {
            rtt_key(rtt): summarise_cell(
                [r for r in records if r["mode"] == mode.name and r["rtt_ms"] == rtt], mode.lossless
            )
            for rtt in rtts
        }
        for mode in modes
    }
    add_ratios(results)
    return results


def load_prompts(slm: LocalModel, count: int) -> list[tuple[str, list[int]]]:
    """The first HumanEval problems as raw-completion prompts (short code prompts, fixed across runs)."""
    return [(problem.task_id, slm.tokenize(problem.prompt)) for problem in load_problems(count)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="citer-bench edge-speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slm", default=DEFAULT_SLM, help="SLM alias or GGUF path (the edge)")
    parser.add_argument("--llm", default=DEFAULT_LLM, help="LLM alias or GGUF path (the cloud, on loopback)")
    parser.add_argument("--quick", action="store_true", help="2 prompts x 24 tokens at RTT 0 and 50 ms")
    parser.add_argument("--rtt-ms", type=float, nargs="+", help=f"round-trip times (default {FULL['rtt_ms']})")
    parser.add_argument("--prompts", type=int, help=f"HumanEval prompts (default {FULL['prompts']})")
    parser.add_argument("--max-tokens", type=int, help=f"tokens per answer (default {FULL['max_tokens']})")
    parser.add_argument("--cloud-share", type=float, default=0.2, help="the shipped router's target cloud share")
    parser.add_argument("--span-tokens", type=int, default=4, help="span mode: tokens_per_call")
    parser.add_argument("--span-below", type=float, default=0.5, help="span mode: continue while LLM top-1 < this")
    parser.add_argument("--max-draft", type=int, default=16, help="lossless modes with the router: max_draft")
    parser.add_argument("--draft-k", type=int, nargs="*", default=[2, 4, 8], help="draft-k speculative decoding")
    parser.add_argument("--modes", nargs="+", help="run only these modes (slm-only is always run)")
    parser.add_argument("--edge-core", type=int, default=0, help="CPU for this process (SLM, router, client)")
    parser.add_argument("--cloud-core", type=int, default=1, help="CPU for the cloud server and the delay proxy")
    parser.add_argument("--name", help="result file name under bench/results/ (default edge-speed[-quick])")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and the children's stderr")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.edge_core == args.cloud_core:
        parser.error("--edge-core and --cloud-core must differ: the point is that they do not share a core")
    return args


def check_cores(*cores: int) -> None:
    """Refuse to run where the cores asked for are not ours to use (a cpuset, a smaller machine)."""
    allowed = os.sched_getaffinity(0)
    missing = [core for core in cores if core not in allowed]
    if missing:
        raise SystemExit(f"cores {missing} are not available to this process (allowed: {sorted(allowed)})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    check_cores(args.edge_core, args.cloud_core)
    load_before = os.getloadavg()
    pin_process(os.getpid(), args.edge_core)  # before our threads start: every later one inherits it
    modes = select_modes(build_modes(args.span_tokens, args.span_below, args.max_draft, args.draft_k), args.modes)
    slm_path, llm_path = resolve_model(args.slm), resolve_model(args.llm)
    cloud_service = pinned_cloud(llm_path, args.cloud_core, verbose=args.verbose)
    command = cloud_service.command
    records, references = [], []
    with (
        cloud_service as cloud,
        ChildService(proxy_command(cloud.port or 0, args.cloud_core), PROXY_READY, "delay proxy") as proxy,
        LocalModel(slm_path, n_threads=1) as slm,
    ):
        router = default_policy(slm_path.name, slm.hidden_size, args.cloud_share, ConfidencePolicy(0.6))
        bench = Bench.open(slm, cloud, proxy, modes, router, args.max_tokens)
        prompts = load_prompts(slm, args.prompts)
        log.info("policy %s; %d prompts x %d tokens; RTT %s ms; modes %s", router.describe(), len(prompts),
                 args.max_tokens, args.rtt_ms, ", ".join(m.name for m in modes))  # fmt: skip
        total = len(prompts) * len(args.rtt_ms) * len(modes)
        with tqdm(total=total, desc="answers", file=sys.stderr) as bar:
            for index, (prompt_id, prompt) in enumerate(prompts):
                got, reference = run_prompt(bench, modes, prompt_id, prompt, rtt_order(args.rtt_ms, index), bar)
                records += got
                references.append(reference)
        affinity = {name: thread_affinity(pid) for name, pid in
                    (("edge", os.getpid()), ("cloud", cloud.pid), ("proxy", proxy.pid))}  # fmt: skip
        bench.session.close()
    results = group(records, modes, args.rtt_ms)
    payload = build_payload(args, modes, results, records, references, affinity, slm_path, llm_path, router, command,
                            load_before)  # fmt: skip
    path = write_result(args.name, payload)  # first: a failure below must not lose the run
    report(payload, args.rtt_ms)
    plot(payload, RESULTS_DIR / f"{args.name}.png")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def build_payload(
    args: argparse.Namespace,
    modes: list[Mode],
    results: dict[str, dict[str, dict]],
    records: list[dict],
    references: list[dict],
    affinity: dict[str, dict[str, int]],
    slm_path: Path,
    llm_path: Path,
    router: RoutingPolicy,
    command: list[str],
    load_before: tuple[float, float, float],
) -> dict[str, object]:
    """The JSON result: settings, machine, per-cell summaries, per-answer records and the pinning proof."""
    rates = [r["tokens_per_s"] for r in references]
    cloud_shares = [r["cloud_core_share"] for r in references]
    return {
        "benchmark": "edge-speed",
        "machine": machine_description(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "settings": {
            "slm": slm_path.name,
            "llm": llm_path.name,
            "policy": router.describe(),
            "cloud_share": args.cloud_share,
            "prompts": args.prompts,
            "prompt_source": "HumanEval (first N problems, raw completion)",
            "max_tokens": args.max_tokens,
            "rtt_ms": args.rtt_ms,
            "sampling": "greedy",
            "edge_core": args.edge_core,
            "cloud_core": args.cloud_core,
            "slm_threads": 1,
            "llm_threads": 1,
            "cloud_command": command,
            "proxy": "citer_bench.delay_proxy in its own process on the cloud core",
            "clock": "decoding only: both sides hold the prompt (but its last token) before the timer starts",
            "reference": "LLM greedy: one Decode call of max_tokens on the same session, RTT 0",
            "modes": {
                mode.name: {"label": mode.label, "router": mode.router, "cloud": mode.cloud, **mode.generator_options()}
                for mode in modes
            },
        },  # fmt: skip
        "labels": {mode.name: mode.label for mode in modes},
        "llm_only_tokens_per_s": statistics.fmean(rates) if rates else None,
        "slm_only_tokens_per_s_by_rtt": {rtt: cell["tokens_per_s"] for rtt, cell in results[BASELINE].items()},
        "core_share": {
            "edge_slm_only": statistics.fmean(cell["edge_core_share"] for cell in results[BASELINE].values()),
            "cloud_llm_only": statistics.fmean(cloud_shares) if cloud_shares else None,
        },
        "target": target_verdict(results),
        "anomalies": anomalies(results),
        "affinity": affinity,
        "results": results,
        "references": references,
        "answers": records,
    }


def report(payload: dict, rtts: Iterable[float]) -> None:
    """Print the headline table, the details and the target verdict."""
    rtts = list(rtts)
    print(ratio_table(payload["results"], payload["labels"], rtts))
    print()
    print(detail_table(payload["results"], payload["labels"], rtts))
    print()
    base = payload["slm_only_tokens_per_s_by_rtt"]
    print(
        f"SLM-only tok/s by RTT: {', '.join(f'{k} ms {v:.1f}' for k, v in base.items())}; "
        f"LLM only (one Decode call per answer, RTT 0): {payload['llm_only_tokens_per_s']:.1f} tok/s"
    )
    print(f"threads per CPU set: {payload['affinity']}")
    share = payload["core_share"]
    print(f"share of its core each side got while running alone (100 % = no interference from other load): "
          f"edge (SLM only) {share['edge_slm_only']:.0%}, cloud (LLM only) {share['cloud_llm_only']:.0%}")  # fmt: skip
    print(payload["target"])
    for line in payload["anomalies"]:
        print(f"WARNING {line}")
    print(f"load average before {payload['load_average']['before']}, after {payload['load_average']['after']}")


if __name__ == "__main__":
    sys.exit(main())
