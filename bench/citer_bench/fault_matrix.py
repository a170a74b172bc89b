"""The fault matrix: one greedy generation through each network or server fault, recorded token by token.

A real ``CloudSession`` talks to a real ``citer-cloud`` child process through a
``FaultProxy``; the generation asks the cloud for every token (policy
``cloud``), so every token shows whether the cloud served it. Faults are
injected and lifted between two tokens, so the record says exactly which
tokens were produced while the fault was in force. tests/test_faults.py asserts
on these records and ``citer-bench faults`` repeats and tabulates them: both
run this code, so the benchmark measures what the tests check.

Each fault is held until the client has failed twice under it (the call that
met it, then one probe after the backoff), so both the in-call stall and the
probe's stall are exercised, and lifted; the server being SIGKILLed is
repeated three times in one generation, each time restarted on its port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from citer_bench.fault_proxy import FaultProxy
from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_edge.cloud.local import LocalCloud
from citer_edge.cloud.session import DEFAULT_TIMEOUT_S, PREFILL_ALLOWANCE_TOKENS_PER_S

log = logging.getLogger(__name__)

#: Failures the client must have seen under a fault before it is lifted: the call that met it, and one probe.
HOLD_FAILURES = 2
#: LLM tokens between recovering from one injection and the next, when a fault repeats in one generation.
LLM_TOKENS_BETWEEN = 4


@dataclass(frozen=True)
class ClientSettings:
    """How the client under test is built; None keeps ``CloudSession``'s shipped default."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float | None = None
    backoff_s: tuple[float, float] | None = None

    def session(self, address: str, fingerprint: str) -> CloudSession:
        extra: dict[str, object] = {}
        if self.connect_timeout_s is not None:
            extra["connect_timeout_s"] = self.connect_timeout_s
        if self.backoff_s is not None:
            extra["backoff_s"] = self.backoff_s
        return CloudSession(address, fingerprint, timeout_s=self.timeout_s, **extra)  # type: ignore[arg-type]

    def deadline_s(self, appended_tokens: int) -> float:
        """A call's deadline when it sends ``appended_tokens`` (the client's own rule, cloud/session.py)."""
        return self.timeout_s + appended_tokens / PREFILL_ALLOWANCE_TOKENS_PER_S


class RestartableCloud:
    """A ``citer-cloud serve`` child that can be SIGKILLed and started again on the same port."""

    def __init__(self, model_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.model_path = model_path
        self.extra_args = list(extra_args)
        self.port = 0
        self.restarts = 0
        self._cloud: LocalCloud | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RestartableCloud:
        self._cloud = LocalCloud(self.model_path, port=self.port, extra_args=self.extra_args).start()
        assert self._cloud.port is not None
        self.port = self._cloud.port
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye on any stream, every session's KV cache gone."""
        if self._cloud is not None:
            self._cloud.kill()
            self._cloud = None

    def restart(self) -> None:
        """Start a fresh process on the same port (a supervisor restarting a crashed server)."""
        self.kill()
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self._cloud is not None:
            self._cloud.stop()
            self._cloud = None

    def __enter__(self) -> RestartableCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class FaultTarget:
    """What a fault acts on: the proxy in the path, the server behind it, and how long "too late" is."""

    proxy: FaultProxy
    server: RestartableCloud
    beyond_deadline_s: float  # a one-way delay that makes every call of the run miss its deadline


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    inject: Callable[[FaultTarget], None]
    lift: Callable[[FaultTarget], None]
    instant: bool = False  # nothing to hold (a reset): lifted the moment it is injected
    times: int = 1  # injections in one generation
    loses_sessions: bool = False  # the server forgets every session: one resync per injection


def _restore(target: FaultTarget) -> None:
    target.proxy.restore()


def _nothing(target: FaultTarget) -> None:
    return None


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("cut", "route cut: connections closed, new ones reset", lambda t: t.proxy.cut(), _restore),
        Fault("delay", "latency beyond the deadline", lambda t: t.proxy.delay(t.beyond_deadline_s), _restore),
        Fault(
            "black-hole", "black hole: nothing forwarded, connections open", lambda t: t.proxy.black_hole(), _restore
        ),
        Fault(
            "silent-decode",
            "Decode never answers: requests delivered, replies black-holed",
            lambda t: t.proxy.black_hole(requests=False),
            _restore,
        ),
        Fault("reset", "every connection reset (RST)", lambda t: t.proxy.reset(), _nothing, instant=True),
        Fault(
            "server-kill",
            "server SIGKILLed and restarted on its port, 3 times",
            lambda t: t.server.kill(),
            lambda t: t.server.restart(),
            times=3,
            loses_sessions=True,
        ),
    )
}


@dataclass
class FaultWindow:
    """One injection, by token index: ``tokens[injected_at:lifted_at]`` were produced while it was in force."""

    injected_at: int
    lifted_at: int = -1
    lifted_s: float = 0.0  # seconds after the generation started
    resumed_at: int | None = None  # the first token after the lift that the cloud produced
    resumed_after_s: float | None = None  # from the lift to that token


@dataclass
class FaultRun:
    fault: str
    prompt: list[int]
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)  # gaps_s[i]: time the generator took for token i + 1
    windows: list[FaultWindow] = field(default_factory=list)
    finish_reason: str = ""
    resyncs: int = 0
    failures: int = 0
    last_error: str | None = None  # why the client last marked the cloud down
    elapsed_s: float = 0.0

    @property
    def longest_gap_s(self) -> float:
        return max(self.gaps_s, default=0.0)

    def describe(self) -> str:
        """One line for a failed assertion or a progress log: origins (L/S), windows, gaps, client counters."""
        origins = "".join("L" if source == "llm" else "S" for source in self.sources)
        windows = [(w.injected_at, w.lifted_at, w.resumed_at) for w in self.windows]
        gaps = sorted(round(gap * 1000) for gap in self.gaps_s)[-3:]
        return (
            f"{self.fault}: {origins} windows (injected, lifted, resumed) {windows}, longest gaps {gaps} ms, "
            f"{self.failures} failures, {self.resyncs} resyncs, last error: {self.last_error}"
        )

    def to_dict(self) -> dict[str, object]:
        record = asdict(self)
        record["sources"] = "".join("L" if source == "llm" else "S" for source in self.sources)
        record["gaps_ms"] = [round(gap * 1000, 1) for gap in record.pop("gaps_s")]
        record["longest_gap_s"] = self.longest_gap_s
        return record


def run_fault(
    fault: Fault,
    slm: LocalModel,
    target: FaultTarget,
    settings: ClientSettings,
    prompt: Sequence[int],
    max_tokens: int,
    fault_at: int = 8,
) -> FaultRun:
    """Generate ``max_tokens`` greedy tokens with every token asked of the cloud, injecting ``fault`` on the way.

    The first injection happens before token ``fault_at``; a fault is lifted once the client has failed
    ``HOLD_FAILURES`` times under it (at once for an instant one); a repeated fault is injected again
    ``LLM_TOKENS_BETWEEN`` cloud tokens after routing resumed. ``gaps_s`` times only the generator (what a
    user waits for); injecting and lifting (a server restart) happen between tokens and are not counted.
    The target is always left healthy, even when the generation fails.
    """
    cloud = settings.session(target.proxy.address, slm.fingerprint)
    run = FaultRun(fault.name, list(prompt), max_tokens)
    stream = HybridGenerator(slm, CloudPolicy(), cloud).stream(prompt, max_tokens, SamplingSettings())
    steps = iter(stream)
    started = time.monotonic()
    window: FaultWindow | None = None
    next_injection = fault_at
    failures_before = 0
    try:
        while True:
            asked = time.monotonic()
            try:
                token = next(steps)
            except StopIteration:
                break
            now = time.monotonic()
            if run.tokens:
                run.gaps_s.append(now - asked)
            run.tokens.append(token.token_id)
            run.sources.append(token.source)
            produced = len(run.tokens)
            if window is not None and window.lifted_at < 0:
                if cloud.failures - failures_before >= HOLD_FAILURES:
                    _lift(fault, target, window, produced, started)
            elif window is not None and window.resumed_at is None:
                if token.source == "llm":
                    window.resumed_at = produced - 1
                    window.resumed_after_s = now - started - window.lifted_s
                    next_injection = produced + LLM_TOKENS_BETWEEN
            elif len(run.windows) < fault.times and produced >= next_injection:
                failures_before = cloud.failures
                window = FaultWindow(injected_at=produced)
                run.windows.append(window)
                log.info("%s: injecting before token %d", fault.name, produced)
                fault.inject(target)
                if fault.instant:
                    _lift(fault, target, window, produced, started)
    finally:
        if window is not None and window.lifted_at < 0:
            _lift(fault, target, window, len(run.tokens), started)
        run.elapsed_s = time.monotonic() - started
        run.finish_reason = stream.summary.finish_reason
        run.resyncs, run.failures, run.last_error = cloud.resyncs, cloud.failures, cloud.last_error
        cloud.close()
    return run


def _lift(fault: Fault, target: FaultTarget, window: FaultWindow, produced: int, started: float) -> None:
    fault.lift(target)
    window.lifted_at = produced
    window.lifted_s = time.monotonic() - started
    log.info("%s: lifted before token %d", fault.name, produced)


# -- the reference ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """Per position: the greedy token of the model that produced it, given everything before, and its lead.

    ``expected[i]`` is the argmax of ``models[sources[i]]``'s logits after the
    prompt and ``tokens[:i]`` (the transcript itself, teacher-forced); ``margins[i]``
    is that model's top-1 minus top-2 logit there. A generation that lost,
    repeated or reordered a token, or whose server computed on a context other
    than the transcript, disagrees with it. The cloud's numerics differ from a
    local context's (batch shapes, docs/architecture.md), so agreement is only
    promised where the margin is clear.
    """

    expected: list[int]
    margins: list[float]

    def mismatches(self, tokens: Sequence[int], min_margin: float) -> list[int]:
        """Positions whose token is not the replay's, among those with a clear greedy choice."""
        return [i for i, token in enumerate(tokens) if self.margins[i] > min_margin and token != self.expected[i]]

    def near_ties(self, min_margin: float) -> list[int]:
        return [i for i, margin in enumerate(self.margins) if margin <= min_margin]


def replay_origins(
    models: Mapping[str, LocalModel], prompt: Sequence[int], tokens: Sequence[int], sources: Sequence[str]
) -> Replay:
    """The reference for a transcript: each token's greedy choice by its origin's model (``"slm"``/``"llm"``)."""
    walks: dict[int, tuple[list[int], list[float]]] = {}
    for origin in sorted(set(sources)):
        model = models[origin]
        if id(model) not in walks:
            walks[id(model)] = _greedy_along(model, prompt, tokens)
    expected, margins = [], []
    for i, origin in enumerate(sources):
        best, margin = walks[id(models[origin])]
        expected.append(best[i])
        margins.append(margin[i])
    return Replay(expected, margins)


def _greedy_along(model: LocalModel, prompt: Sequence[int], tokens: Sequence[int]) -> tuple[list[int], list[float]]:
    """The model's argmax and top-1 lead at each step of ``tokens``, fed one token at a time as the SLM is."""
    model.sync(prompt)
    best, margins = [], []
    for token in tokens:
        logits = model.logits
        runner_up, top = np.partition(logits, -2)[-2:]
        best.append(int(np.argmax(logits)))
        margins.append(float(top - runner_up))
        model.eval([token])
    return best, margins
