"""Continuous batching on the real llama.cpp backend: shared forward passes, isolation, chunking, the engine.

Numerical caveat (see docs/architecture.md, "Numerics"): llama.cpp picks its
matrix kernels by batch size, so a session batched with others is not
bit-identical to the same session run alone. What batching must guarantee
exactly is isolation: with the same batch shapes, a session's tokens do not
depend on what the other sessions in its batch hold. Against running alone it
is bounded by a tolerance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from citer_cloud.backend import SlotChunk
from citer_cloud.engine import Engine
from citer_cloud.llama_backend import LlamaCppBackend
from citer_cloud.sessions import DecodeCall, ErrorKind, RequestError, SessionManager
from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel
from citer_protocol import SamplingSettings, log_softmax

GREEDY = SamplingSettings()
QUESTIONS = (
    "Write a Python function that checks whether a number is prime.",
    "Explain quicksort in two sentences.",
    "Write fizzbuzz in Python.",
    "What is a linked list?",
)

# As many SmolLM2 tokens as the quicksort question's prompt, other content.
QUESTION_OF_THE_SAME_LENGTH = "<|im_start|>user\nExplain mergesort in two sentences.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def backend(smol_path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(smol_path, max_sessions=8, kv_tokens=4096)
    yield backend
    backend.close()


@pytest.fixture
def sessions(backend: LlamaCppBackend) -> Iterator[SessionManager]:
    manager = SessionManager(backend, max_request_tokens=1024)
    yield manager
    for slot in range(backend.info.n_slots):
        backend.truncate(slot, 0)


@pytest.fixture
def prompts(smol_slm: LocalModel) -> list[list[int]]:
    return [smol_slm.tokenize(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n") for q in QUESTIONS]


def _run_together(manager: SessionManager, jobs) -> None:
    while not all(job.done for job in jobs):
        manager.step(jobs)


def test_one_step_serves_many_sessions_in_one_forward_pass(sessions: SessionManager, prompts) -> None:
    jobs = [sessions.begin(DecodeCall(f"s{i}", 0, prompt, 1, GREEDY)) for i, prompt in enumerate(prompts)]
    sessions.step(jobs)
    assert all(job.done and len(job.tokens) == 1 for job in jobs)
    stats = sessions.stats()
    assert stats.forward_passes == 1
    assert stats.tokens_prefilled == sum(len(p) for p in prompts)


def test_sessions_in_a_batch_do_not_affect_each_other(sessions: SessionManager, prompts, smol_slm: LocalModel) -> None:
    """Same shapes, different neighbours: the batched session's tokens are bit-identical."""
    neighbour = prompts[1]  # "Explain quicksort in two sentences."
    other_neighbour = smol_slm.tokenize(QUESTION_OF_THE_SAME_LENGTH)
    assert len(other_neighbour) == len(neighbour) and other_neighbour != neighbour
    runs = []
    for tag, other in (("x", neighbour), ("y", other_neighbour)):
        job_a = sessions.begin(DecodeCall(f"a-{tag}", 0, prompts[0], 16, GREEDY))
        job_b = sessions.begin(DecodeCall(f"b-{tag}", 0, other, 16, GREEDY))
        _run_together(sessions, [job_a, job_b])
        assert not job_b.finished, "the neighbour must keep the batch shape for all 16 steps"
        runs.append((job_a.tokens, job_b.tokens))
        sessions.close(f"a-{tag}")
        sessions.close(f"b-{tag}")
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] != runs[1][1], "the neighbours really differed"


def test_batched_logits_match_alone_within_tolerance(backend: LlamaCppBackend, prompts) -> None:
    """Measured on SmolLM2 Q4_1, 4 sessions x 30 teacher-forced steps: max |dp| 0.079, KL 0.032; bounds ~2x."""
    n = len(prompts)
    alone = [backend.evaluate(n + i, 0, p) for i, p in enumerate(prompts)]
    together = backend.evaluate_batch([SlotChunk(i, 0, p, want_logits=True) for i, p in enumerate(prompts)])
    lengths = [len(p) for p in prompts]
    try:
        for _ in range(30):
            for lone, batched in zip(alone, together, strict=True):
                lp_alone, lp_batched = log_softmax(lone), log_softmax(batched)
                p_alone = np.exp(lp_alone)
                assert np.max(np.abs(np.exp(lp_batched) - p_alone)) < 0.15
                assert float((p_alone * (lp_alone - lp_batched)).sum()) < 0.07
            tokens = [int(np.argmax(logits)) for logits in alone]  # both runs follow the same text
            alone = [backend.evaluate(n + i, lengths[i], [t]) for i, t in enumerate(tokens)]
            together = backend.evaluate_batch(
                [SlotChunk(i, lengths[i], [t], want_logits=True) for i, t in enumerate(tokens)]
            )
            lengths = [length + 1 for length in lengths]
    finally:
        for slot in range(2 * n):
            backend.truncate(slot, 0)


def test_long_prefill_is_chunked_behind_decode_steps(sessions: SessionManager, prompts) -> None:
    decoding = sessions.begin(DecodeCall("decoding", 0, prompts[1], 0, GREEDY))
    _run_together(sessions, [decoding])
    decoding = sessions.begin(DecodeCall("decoding", len(prompts[1]), [], 4, GREEDY))
    long_prompt = (prompts[0] * 20)[:300]
    assert len(long_prompt) == 300
    prefilling = sessions.begin(DecodeCall("prefilling", 0, long_prompt, 1, GREEDY))
    steps = 0
    while not decoding.done:
        sessions.step([prefilling, decoding], token_budget=32)
        steps += 1
    # The first of the 4 tokens came from logits already held; each of the other 3 took one shared pass.
    assert steps == 3, "one decode step per forward pass, never waiting for the prefill"
    assert not prefilling.done and prefilling.session.n_evaluated == 3 * 31
    _run_together(sessions, [prefilling])
    assert len(prefilling.tokens) == 1 and prefilling.session.n_evaluated == 300


def test_begin_refuses_a_second_request_for_a_running_session(sessions: SessionManager, prompts) -> None:
    sessions.begin(DecodeCall("busy", 0, prompts[0], 4, GREEDY))
    with pytest.raises(RequestError) as caught:
        sessions.begin(DecodeCall("busy", len(prompts[0]), [], 1, GREEDY))
    assert caught.value.kind is ErrorKind.FAILED_PRECONDITION and caught.value.reason == "SESSION_BUSY"


def test_a_new_session_is_refused_rather_than_killing_a_running_request(smol_path, prompts) -> None:
    backend = LlamaCppBackend(smol_path, max_sessions=2, kv_tokens=1024)
    try:
        manager = SessionManager(backend)
        first = manager.begin(DecodeCall("first", 0, prompts[0], 8, GREEDY))
        second = manager.begin(DecodeCall("second", 0, prompts[1], 8, GREEDY))
        with pytest.raises(RequestError) as caught:
            manager.begin(DecodeCall("third", 0, prompts[2], 8, GREEDY))  # both slots run requests
        assert caught.value.kind is ErrorKind.RESOURCE_EXHAUSTED and "slots are in use" in str(caught.value)
        assert manager.session_length("third") is None and manager.stats().sessions_created == 2
        _run_together(manager, [first, second])
        assert len(first.result().tokens) == 8 and len(second.result().tokens) == 8
    finally:
        backend.close()


def test_a_partial_prefill_leaves_no_stale_logits(sessions: SessionManager, prompts) -> None:
    """Cancelled after part of its prefill, a session must not answer from the logits of an earlier position."""
    prompt = prompts[0]
    sessions.decode(DecodeCall("x", 0, prompt[:3], 0, GREEDY))
    job = sessions.begin(DecodeCall("x", 3, prompt[3:10], 1, GREEDY))
    sessions.step([job], token_budget=4)  # 4 of the 7 appended tokens evaluated, no logits wanted
    sessions.cancel(job)
    resumed = sessions.decode(DecodeCall("x", 7, [], 1, GREEDY))
    fresh = sessions.decode(DecodeCall("y", 0, prompt[:7], 1, GREEDY))
    assert resumed.tokens == fresh.tokens


# -- the engine -----------------------------------------------------------


def _held(engine: Engine) -> threading.Event:
    """Occupy the engine thread until the returned event is set, so requests pile up and start together."""
    release = threading.Event()
    engine.call(release.wait)
    return release


@pytest.mark.parametrize(("max_batch_sessions", "expected_passes"), [(None, 1), (1, 4)])
def test_engine_batches_requests_that_arrive_together(
    sessions: SessionManager, prompts, max_batch_sessions: int | None, expected_passes: int
) -> None:
    engine = Engine(sessions, max_batch_sessions=max_batch_sessions)
    try:
        release = _held(engine)
        tickets = [engine.decode(DecodeCall(f"e{i}", 0, prompt, 1, GREEDY)) for i, prompt in enumerate(prompts)]
        release.set()
        results = [ticket.future.result(timeout=60) for ticket in tickets]
        assert all(len(result.tokens) == 1 for result in results)
        assert engine.call(sessions.stats).result(timeout=60).forward_passes == expected_passes
    finally:
        engine.shutdown()


def test_close_after_a_decode_of_the_same_session_sees_it_and_ends_it(sessions: SessionManager, prompts) -> None:
    """Arrival order: the Decode starts first, so the Close finds the session and ends its request."""
    engine = Engine(sessions)
    try:
        release = _held(engine)
        ticket = engine.decode(DecodeCall("ordered", 0, prompts[0], 50, GREEDY))
        closed = engine.call(lambda: sessions.close("ordered"))
        release.set()
        assert closed.result(timeout=60) is True
        with pytest.raises(RequestError) as caught:
            ticket.future.result(timeout=60)
        assert caught.value.reason == "SESSION_CLOSED"
        assert sessions.session_length("ordered") is None
    finally:
        engine.shutdown()


def test_engine_runs_requests_for_one_session_in_arrival_order(sessions: SessionManager, prompts) -> None:
    whole = sessions.decode(DecodeCall("whole", 0, prompts[0], 5, GREEDY))
    engine = Engine(sessions)
    try:
        release = _held(engine)
        first = engine.decode(DecodeCall("split", 0, prompts[0], 3, GREEDY))
        second = engine.decode(DecodeCall("split", len(prompts[0]) + 3, [], 2, GREEDY))
        release.set()
        assert first.future.result(timeout=60).tokens + second.future.result(timeout=60).tokens == whole.tokens
        assert second.future.result().new_len == len(prompts[0]) + 5
    finally:
        engine.shutdown()


def test_cancelled_request_stops_at_the_next_step(sessions: SessionManager, prompts) -> None:
    engine = Engine(sessions)
    try:
        ticket = engine.decode(DecodeCall("long", 0, prompts[0], 900, GREEDY))
        deadline = time.monotonic() + 60
        while (ticket.job is None or len(ticket.job.tokens) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        ticket.cancel()
        with pytest.raises(RuntimeError, match="cancelled: the client went away"):
            ticket.future.result(timeout=60)
        generated = engine.call(sessions.stats).result(timeout=60).tokens_generated
        time.sleep(0.3)
        assert engine.call(sessions.stats).result(timeout=60).tokens_generated == generated < 900
    finally:
        engine.shutdown()


def test_concurrent_streams_share_forward_passes(smol_slm: LocalModel, smol_server, prompts) -> None:
    """Four hybrid clients at once through the real gRPC service: fewer forward passes than calls."""
    results = {}

    def client(index: int) -> None:
        with LocalModel(smol_slm.path, n_ctx=512) as slm:
            cloud = CloudSession(smol_server.address, slm.fingerprint)
            results[index] = HybridGenerator(slm, CloudPolicy(), cloud).generate(prompts[index], max_tokens=12)
            cloud.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = smol_server.sessions.stats()
    calls = sum(result.summary.cloud_calls for result in results.values())
    assert calls == stats.decode_requests == 4 * 12
    assert stats.forward_passes < calls


def test_engine_survives_a_call_whose_caller_stopped_waiting(sessions: SessionManager, prompts) -> None:
    """A CloseSession past its deadline cancels its future before the engine runs it; the engine must go on.

    Before the fix the engine thread raised InvalidStateError setting that future's result and lost the
    requests that had arrived with it: their clients waited forever.
    """
    engine = Engine(sessions)
    try:
        release = _held(engine)
        abandoned = engine.call(lambda: sessions.close("nobody"))
        assert abandoned.cancel()
        ticket = engine.decode(DecodeCall("after", 0, prompts[0], 2, GREEDY))
        release.set()
        assert len(ticket.future.result(timeout=60).tokens) == 2
        assert engine.call(lambda: "alive").result(timeout=60) == "alive"
    finally:
        engine.shutdown()
