"""Verify-on-sync and multi-token spans on the server: drafts are judged against the LLM's greedy choice.

SessionManager on the real llama.cpp backend (SmolLM2), no gRPC: the reference
is the LLM's own greedy continuation, produced one token per request the way
the server produces them for a cloud-only client.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from citer_cloud.llama_backend import LlamaCppBackend
from citer_cloud.sessions import DecodeCall, ErrorKind, RequestError, SessionManager
from citer_edge import LocalModel
from citer_protocol import SamplingSettings, pb, pb_grpc
from tests.conftest import COUNTING_PROMPT, MIN_MARGIN, greedy_margins

GREEDY = SamplingSettings()
N = 12


@pytest.fixture(scope="module")
def backend(smol_path):
    backend = LlamaCppBackend(smol_path, max_sessions=4, kv_tokens=2048)
    yield backend
    backend.close()


@pytest.fixture
def sessions(backend) -> SessionManager:
    manager = SessionManager(backend, max_request_tokens=512)
    yield manager
    for session_id in ("ref", "a", "b", "c"):
        manager.close(session_id)


@pytest.fixture
def prompt(smol_slm: LocalModel) -> list[int]:
    return smol_slm.tokenize(COUNTING_PROMPT)


@pytest.fixture
def reference(sessions: SessionManager, prompt: list[int], smol_slm: LocalModel) -> list[int]:
    """The LLM's greedy continuation, one token per request; every step leads its runner-up clearly."""
    tokens: list[int] = []
    held, append = 0, list(prompt)
    while len(tokens) < N:
        result = sessions.decode(DecodeCall("ref", held, append, 1, GREEDY))
        tokens += result.tokens
        held, append = result.new_len, []
    assert min(greedy_margins(smol_slm, prompt, tokens)) > MIN_MARGIN
    return tokens


def _other(token: int) -> int:
    return token + 1 if token > 10 else token + 100


def test_matching_drafts_are_all_kept_and_the_llm_continues_after_them(
    sessions: SessionManager, prompt: list[int], reference: list[int]
) -> None:
    sessions.decode(DecodeCall("a", 0, prompt, 0, GREEDY))
    drafts = reference[:8]
    result = sessions.decode(DecodeCall("a", len(prompt), drafts, 2, GREEDY, verify_from=len(prompt)))
    assert result.verified and result.accepted == 8
    assert result.tokens == reference[8:10]
    assert result.new_len == len(prompt) + 10
    stats = sessions.stats()
    assert (stats.drafts_accepted, stats.drafts_rejected) == (8, 0)


@pytest.mark.parametrize("wrong_at", [0, 3, 7])
def test_first_wrong_draft_is_replaced_by_the_llm_token_and_the_rest_dropped(
    sessions: SessionManager, prompt: list[int], reference: list[int], wrong_at: int
) -> None:
    drafts = list(reference[:8])
    drafts[wrong_at] = _other(drafts[wrong_at])
    # The prompt travels in the same request: only positions >= verify_from are judged.
    result = sessions.decode(DecodeCall("a", 0, prompt + drafts, 1, GREEDY, verify_from=len(prompt)))
    assert result.accepted == wrong_at
    assert result.tokens == [reference[wrong_at]]
    assert result.new_len == len(prompt) + wrong_at + 1
    assert sessions.stats().drafts_rejected == 8 - wrong_at
    # The session's KV cache was cut at the disagreement: what follows is the LLM's own continuation.
    following = sessions.decode(DecodeCall("a", result.new_len, [], N - wrong_at - 1, GREEDY))
    assert result.tokens + following.tokens == reference[wrong_at:N]


def test_a_wrong_draft_judged_from_held_logits_is_replaced_without_evaluating_the_drafts(
    sessions: SessionManager, prompt: list[int], reference: list[int]
) -> None:
    sessions.decode(DecodeCall("a", 0, prompt + reference[:1], 0, GREEDY))  # sync only: the logits after it are held
    passes = sessions.stats().forward_passes
    drafts = [_other(reference[1]), *reference[2:6]]
    result = sessions.decode(DecodeCall("a", len(prompt) + 1, drafts, 1, GREEDY, verify_from=len(prompt) + 1))
    assert (result.accepted, result.tokens) == (0, [reference[1]])
    assert sessions.stats().forward_passes == passes  # judged from the logits the session already held


def test_sync_only_verify_returns_the_replacement_token_and_nothing_when_all_match(
    sessions: SessionManager, prompt: list[int], reference: list[int]
) -> None:
    ok = sessions.decode(DecodeCall("a", 0, prompt + reference[:5], 0, GREEDY, verify_from=len(prompt)))
    assert (ok.accepted, ok.tokens, ok.finished) == (5, [], False)
    drafts = [reference[5], _other(reference[6])]
    fixed = sessions.decode(DecodeCall("a", ok.new_len, drafts, 0, GREEDY, verify_from=ok.new_len))
    assert (fixed.accepted, fixed.tokens) == (1, [reference[6]])


def test_an_accepted_end_token_finishes_without_producing(
    sessions: SessionManager, backend: LlamaCppBackend, smol_slm: LocalModel
) -> None:
    prompt = smol_slm.tokenize("<|im_start|>user\nSay OK.<|im_end|>\n<|im_start|>assistant\n")
    answer: list[int] = []
    held, append = 0, list(prompt)
    while not answer or not backend.is_end(answer[-1]):
        result = sessions.decode(DecodeCall("ref", held, append, 1, GREEDY))
        answer += result.tokens
        held, append = result.new_len, []
        assert len(answer) < 40, "SmolLM2 should end this answer quickly"
    result = sessions.decode(DecodeCall("a", 0, prompt + answer, 4, GREEDY, verify_from=len(prompt)))
    assert (result.accepted, result.tokens, result.finished) == (len(answer), [], True)


def test_verify_requests_the_server_cannot_honour_are_refused_and_change_nothing(
    sessions: SessionManager, prompt: list[int], reference: list[int]
) -> None:
    sessions.decode(DecodeCall("a", 0, prompt, 0, GREEDY))
    hot = SamplingSettings(temperature=0.8)
    bad = [
        (DecodeCall("a", len(prompt), reference[:2], 1, hot, verify_from=len(prompt)), "greedy"),
        (DecodeCall("a", len(prompt), reference[:2], 1, GREEDY, verify_from=len(prompt) - 1), "must lie in"),
        (DecodeCall("a", len(prompt), reference[:2], 1, GREEDY, verify_from=len(prompt) + 3), "must lie in"),
        (DecodeCall("a", len(prompt), [], 1, GREEDY, span_below=1.5), "span_below"),
        (DecodeCall("a", len(prompt), [], 1, GREEDY, span_below=float("nan")), "span_below"),
    ]
    for call, words in bad:
        with pytest.raises(RequestError, match=words) as caught:
            sessions.decode(call)
        assert caught.value.kind == ErrorKind.INVALID_ARGUMENT
    assert sessions.session_length("a") == len(prompt)


def test_span_continues_while_the_llm_is_unsure_and_stops_when_it_is_sure(
    sessions: SessionManager, prompt: list[int], reference: list[int]
) -> None:
    sure_everywhere = sessions.decode(DecodeCall("a", 0, prompt, 6, GREEDY, span_below=1e-6))
    assert sure_everywhere.tokens == reference[:1]  # the first token always; then the LLM is "sure" (p >= 1e-6)
    unsure_everywhere = sessions.decode(DecodeCall("b", 0, prompt, 6, GREEDY, span_below=1.0))
    assert unsure_everywhere.tokens == reference[:6]  # top-1 < 1 at every position: the full max_tokens
    # A middle cut stops exactly where the LLM's top-1 probability first reaches it (greedy: the log-prob
    # of each produced token is the top-1 log-probability at its position).
    top1 = [float(np.exp(logprob)) for logprob in unsure_everywhere.logprobs]
    ranked = sorted(top1[1:])
    gaps = [(b - a, (a + b) / 2) for a, b in zip(ranked, ranked[1:], strict=False)]
    cut = max(gaps)[1]  # midway across the widest gap: no position sits near the cut
    expected = next((i for i in range(1, 6) if top1[i] >= cut), 6)
    middle = sessions.decode(DecodeCall("c", 0, prompt, 6, GREEDY, span_below=cut))
    assert middle.tokens == reference[:expected]
    # The turn ended on held logits: the next request produces from them without another pass.
    after = sessions.decode(DecodeCall("c", middle.new_len, [], 1, GREEDY))
    assert after.tokens == [reference[expected]]


def test_the_llama_cpp_service_advertises_verify_and_span(smol_server) -> None:
    with grpc.insecure_channel(smol_server.address) as channel:
        info = pb_grpc.LlmServiceStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
    assert list(info.features) == ["verify", "span"]
