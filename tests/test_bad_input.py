"""Bad requests get a precise gRPC status, and the session they named keeps working afterwards."""

from __future__ import annotations

import grpc
import pytest

from citer_cloud.server import CloudServer
from citer_protocol import REASON_KEY, SERVER_LEN_KEY, pb, pb_grpc

SESSION = "bad-input-session"
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 2114]


@pytest.fixture
def server(start_server, smol_path) -> CloudServer:
    return start_server(smol_path, kv_tokens=256, max_request_tokens=300)  # window 256


@pytest.fixture
def stub(server: CloudServer):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.LlmServiceStub(channel)


def decode(stub, **fields) -> pb.DecodeResponse:
    """One request on a fresh Decode stream (a rejected request ends its stream)."""
    fields.setdefault("session_id", SESSION)
    return next(iter(stub.Decode(iter([pb.DecodeRequest(**fields)]), timeout=30)))


def rejection(stub, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        decode(stub, **fields)
    return caught.value


def bad_requests(held: int, vocab: int, window: int = 256, limit: int = 300) -> dict[str, tuple[dict, str]]:
    """Each kind of bad request for a session holding ``held`` tokens, with its status.

    ``window`` is the server's context window, ``limit`` its max_request_tokens (at least ``window - held + 1``).
    """
    half = limit // 2 + 1
    return {
        "token outside vocabulary": (dict(known_len=held, append=[vocab], max_tokens=1), "INVALID_ARGUMENT"),
        "negative token": (dict(known_len=held, append=[-1], max_tokens=1), "INVALID_ARGUMENT"),
        "empty request": (dict(known_len=held, append=[], max_tokens=0), "INVALID_ARGUMENT"),
        "oversized request": (dict(known_len=held, append=[5] * half, max_tokens=half), "RESOURCE_EXHAUSTED"),
        "beyond the window": (dict(known_len=held, append=[5] * (window - held - 5), max_tokens=6), "OUT_OF_RANGE"),
        "bad temperature": (
            dict(known_len=held, append=[], max_tokens=1, sampling=pb.SamplingParams(temperature=-1)),
            "INVALID_ARGUMENT",
        ),
        "NaN temperature": (
            dict(known_len=held, append=[], max_tokens=1, sampling=pb.SamplingParams(temperature=float("nan"))),
            "INVALID_ARGUMENT",
        ),
        "infinite temperature": (
            dict(known_len=held, append=[], max_tokens=1, sampling=pb.SamplingParams(temperature=float("inf"))),
            "INVALID_ARGUMENT",
        ),
        "NaN top_p": (
            dict(known_len=held, append=[], max_tokens=1, sampling=pb.SamplingParams(top_p=float("nan"))),
            "INVALID_ARGUMENT",
        ),
        "known_len ahead": (dict(known_len=held + 5, append=[], max_tokens=1), "FAILED_PRECONDITION"),
        "empty session id": (dict(session_id="", known_len=0, append=PROMPT, max_tokens=1), "INVALID_ARGUMENT"),
    }


def test_each_bad_request_gets_its_status_and_the_session_survives(stub, server: CloudServer) -> None:
    first = decode(stub, known_len=0, append=PROMPT, max_tokens=1)
    held = first.new_len
    vocab = server.sessions.backend.info.vocab_size
    cases = bad_requests(held, vocab)
    for name, (fields, code) in cases.items():
        error = rejection(stub, **fields)
        assert error.code().name == code, f"{name}: {error.code()} {error.details()}"
        assert error.details(), name
        # The session is untouched: the same continuation request still gives the same next token.
        assert server.sessions.session_length(SESSION) == held, name

    # known_len < held rolls back; asking again from the same point reproduces the same token.
    again = decode(stub, known_len=held - 1, append=[], max_tokens=1)
    assert again.tokens == first.tokens
    assert again.new_len == held


def test_beyond_window_is_out_of_range_even_for_a_new_session(stub) -> None:
    error = rejection(stub, session_id="too-long", known_len=0, append=[5] * 260, max_tokens=1)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "window of 256" in error.details()


def test_sync_failures_carry_a_machine_readable_reason(stub, server: CloudServer) -> None:
    error = rejection(stub, session_id="never-seen", known_len=10, append=[5], max_tokens=1)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    metadata = dict(error.trailing_metadata())
    assert metadata[REASON_KEY] == "SESSION_UNKNOWN"
    assert metadata[SERVER_LEN_KEY] == "0"

    decode(stub, session_id="held", known_len=0, append=PROMPT, max_tokens=0)
    error = rejection(stub, session_id="held", known_len=len(PROMPT) + 3, append=[], max_tokens=1)
    metadata = dict(error.trailing_metadata())
    assert metadata[REASON_KEY] == "KNOWN_LEN_AHEAD"
    assert metadata[SERVER_LEN_KEY] == str(len(PROMPT))


def test_evicted_session_is_reported_as_evicted(start_server, smol_path) -> None:
    server = start_server(smol_path, max_sessions=1)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        decode(stub, session_id="a", known_len=0, append=PROMPT, max_tokens=1)
        decode(stub, session_id="b", known_len=0, append=PROMPT, max_tokens=1)  # evicts "a"
        error = rejection(stub, session_id="a", known_len=len(PROMPT) + 1, append=[], max_tokens=1)
    assert dict(error.trailing_metadata())[REASON_KEY] == "SESSION_EVICTED"
    assert server.sessions.stats().sessions_evicted == 1


def test_generate_rejects_an_empty_prompt(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(pb.GenerateRequest(prompt=[], max_tokens=3), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_message_is_refused_by_the_receive_limit(stub, server: CloudServer) -> None:
    """The limit follows max_request_tokens (300 here): ten times that many ids never reach the engine."""
    before = server.sessions.stats()
    error = rejection(stub, session_id="huge", known_len=0, append=[151000] * 3000, max_tokens=1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details(), "refused by the transport, before any servicer code"
    after = server.sessions.stats()
    assert after.decode_requests == before.decode_requests and after.live_sessions == before.live_sessions


def test_cloud_serve_on_a_taken_port_is_one_readable_line(smol_path, server: CloudServer) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "citer_cloud.cli", "serve", "--model", str(smol_path), "--port", str(server.port)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == f"citer-cloud: error: port {server.port} on 127.0.0.1 is already in use"
