"""SessionManager rules tested without gRPC, on the real llama.cpp backend."""

from __future__ import annotations

import grpc
import pytest

from citer_cloud.llama_backend import LlamaCppBackend
from citer_cloud.sessions import DecodeCall, ErrorKind, RequestError, SessionManager
from citer_protocol import SamplingSettings, pb, pb_grpc
from tests.conftest import CHAT_PROMPT

GREEDY = SamplingSettings()


@pytest.fixture(scope="module")
def backend(smol_path):
    backend = LlamaCppBackend(smol_path, max_sessions=2, kv_tokens=1024)
    yield backend
    backend.close()


@pytest.fixture
def sessions(backend) -> SessionManager:
    manager = SessionManager(backend, max_request_tokens=512)
    yield manager
    for session_id in ("a", "b", "c"):
        manager.close(session_id)


@pytest.fixture
def prompt(smol_slm) -> list[int]:
    return smol_slm.tokenize(CHAT_PROMPT)


def test_tokens_in_one_call_equal_tokens_over_many_calls(sessions: SessionManager, prompt: list[int]) -> None:
    whole = sessions.decode(DecodeCall("a", 0, prompt, 12, GREEDY))
    held = len(prompt)
    pieces: list[int] = []
    sessions.decode(DecodeCall("b", 0, prompt, 0, GREEDY))
    while len(pieces) < 12:
        result = sessions.decode(DecodeCall("b", held, [], 3, GREEDY))
        pieces += result.tokens
        held = result.new_len
    assert pieces == whole.tokens
    assert whole.new_len == len(prompt) + 12


def test_rollback_recomputes_the_last_position(sessions: SessionManager, prompt: list[int]) -> None:
    first = sessions.decode(DecodeCall("a", 0, prompt, 5, GREEDY))
    again = sessions.decode(DecodeCall("a", len(prompt), [], 5, GREEDY))  # drop the 5 tokens and redo them
    assert again.tokens == first.tokens


def test_lru_eviction_when_slots_run_out(sessions: SessionManager, prompt: list[int]) -> None:
    sessions.decode(DecodeCall("a", 0, prompt, 1, GREEDY))
    sessions.decode(DecodeCall("b", 0, prompt, 1, GREEDY))
    sessions.decode(DecodeCall("a", len(prompt) + 1, [], 1, GREEDY))  # "a" is now the most recently used
    sessions.decode(DecodeCall("c", 0, prompt, 1, GREEDY))  # needs a slot: evicts "b"
    assert sessions.session_length("b") is None
    assert sessions.session_length("a") == len(prompt) + 2
    with pytest.raises(RequestError) as caught:
        sessions.decode(DecodeCall("b", len(prompt) + 1, [], 1, GREEDY))
    assert caught.value.kind is ErrorKind.FAILED_PRECONDITION and caught.value.reason == "SESSION_EVICTED"
    assert sessions.stats().sessions_evicted == 1


def test_kv_full_evicts_the_least_recent_idle_session_and_nothing_else(smol_path, prompt: list[int]) -> None:
    backend = LlamaCppBackend(smol_path, max_sessions=4, kv_tokens=256)
    try:
        manager = SessionManager(backend, max_request_tokens=256)
        filler = (prompt * 10)[:120]
        manager.decode(DecodeCall("a", 0, filler, 0, GREEDY))
        manager.decode(DecodeCall("b", 0, filler, 0, GREEDY))
        manager.decode(DecodeCall("c", 0, filler, 0, GREEDY))  # 360 cells wanted of 256: "a" must go
        assert manager.session_length("a") is None
        assert manager.session_length("b") == 120, "only as much room as needed is made"
        assert manager.session_length("c") == 120
        assert manager.stats().sessions_evicted == 1
        assert manager.stats().kv_tokens_used <= 256
    finally:
        backend.close()


def test_generate_rpc_equals_decode_of_the_same_prompt(smol_server, prompt: list[int]) -> None:
    with grpc.insecure_channel(smol_server.address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        streamed = [r.token for r in stub.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=10), timeout=60)]
        decoded = next(
            iter(
                stub.Decode(
                    iter([pb.DecodeRequest(session_id="x", known_len=0, append=prompt, max_tokens=10)]), timeout=60
                )
            )
        )
        stats = stub.GetStats(pb.StatsRequest())
    assert streamed == list(decoded.tokens)
    assert stats.live_sessions == 1  # Generate's temporary session is gone, Decode's stays
    assert stats.tokens_generated == 20
