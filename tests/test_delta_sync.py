"""Cloud work per call is O(new tokens): the server prefills each token the client sends exactly once."""

from __future__ import annotations

from citer_cloud.server import CloudServer
from citer_edge import CloudSession, HybridGenerator, LocalModel, RandomPolicy
from tests.conftest import CHAT_PROMPT


def test_prefill_counter_counts_distinct_tokens_not_context_lengths(
    smol_slm: LocalModel, smol_server: CloudServer
) -> None:
    prompt = smol_slm.tokenize(CHAT_PROMPT)
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint)
    stream = HybridGenerator(smol_slm, RandomPolicy(0.4, seed=3), cloud).stream(prompt, max_tokens=60)
    calls: list[int] = []  # context length at each cloud call
    for index, token in enumerate(stream):
        if token.source == "llm":
            calls.append(len(prompt) + index)
    assert len(calls) >= 10, "the test needs many cloud calls to mean anything"

    last_call = calls[-1] - len(prompt)
    slm_tokens_sent = sum(source == "slm" for source in stream.sources[:last_call])
    stats = smol_server.sessions.stats()
    assert stats.tokens_prefilled == len(prompt) + slm_tokens_sent
    assert stats.tokens_prefilled < sum(calls) / 4  # far below re-sending the whole context per call
    assert stats.tokens_generated == stream.summary.cloud_tokens
    assert stats.decode_requests == len(calls)


def test_new_turn_appends_only_its_new_tokens(smol_slm: LocalModel, smol_server: CloudServer) -> None:
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint)
    generator = HybridGenerator(smol_slm, RandomPolicy(1.0), cloud)
    first = smol_slm.tokenize(CHAT_PROMPT)
    reply = generator.generate(first, max_tokens=8)
    second = first + reply.token_ids + smol_slm.tokenize("<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n")
    before = smol_server.sessions.stats().tokens_prefilled
    generator.generate(second, max_tokens=2)
    after = smol_server.sessions.stats().tokens_prefilled
    # The server already holds the first turn and the 8 tokens it produced itself.
    assert after - before == len(second) - len(first) - len(reply.token_ids)
