"""The client never trusts a reply that does not add up: bad token ids must not reach the SLM.

A real citer-cloud cannot be made to send such replies, so these tests run the
scripted fake of tests/fake_cloud.py (a real gRPC server on loopback).
"""

from __future__ import annotations

import pytest

from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_protocol import pb
from tests.conftest import CHAT_PROMPT
from tests.fake_cloud import Reply, length_after, start_scripted

BAD_REPLIES: dict[str, Reply] = {
    "id outside the vocabulary": lambda r, vocab: pb.DecodeResponse(
        tokens=[vocab + 7], logprobs=[0.0], new_len=length_after(r) + 1
    ),
    "more tokens than asked": lambda r, vocab: pb.DecodeResponse(
        tokens=[5] * (r.max_tokens + 3), logprobs=[0.0] * (r.max_tokens + 3), new_len=length_after(r) + r.max_tokens + 3
    ),
    "new_len that does not add up": lambda r, vocab: pb.DecodeResponse(
        tokens=[5], logprobs=[0.0], new_len=length_after(r) + 40
    ),
    "log-probs missing": lambda r, vocab: pb.DecodeResponse(tokens=[5], logprobs=[], new_len=length_after(r) + 1),
}


@pytest.fixture
def scripted_server(smol_slm: LocalModel):
    servers = []

    def start(reply: Reply) -> str:
        server, _, address = start_scripted(smol_slm.fingerprint, smol_slm.n_vocab, reply)
        servers.append(server)
        return address

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_invalid_reply_is_refused_and_generation_stays_local(scripted_server, smol_slm: LocalModel, case) -> None:
    address = scripted_server(BAD_REPLIES[case])
    cloud = CloudSession(address, smol_slm.fingerprint, backoff_s=(60.0, 60.0))
    result = HybridGenerator(smol_slm, CloudPolicy(), cloud).generate(smol_slm.tokenize(CHAT_PROMPT), max_tokens=6)
    assert cloud.last_error is not None and "sent an invalid reply" in cloud.last_error, cloud.last_error
    assert set(result.sources) == {"slm"}, "nothing the server sent entered the conversation"
    assert all(0 <= token < smol_slm.n_vocab for token in result.token_ids)
    cloud.close()


def test_a_reply_that_adds_up_is_taken(scripted_server, smol_slm: LocalModel) -> None:
    address = scripted_server(
        lambda r, vocab: pb.DecodeResponse(tokens=[5], logprobs=[-0.1], new_len=length_after(r) + 1)
    )
    cloud = CloudSession(address, smol_slm.fingerprint)
    reply = cloud.decode(smol_slm.tokenize(CHAT_PROMPT), 1, SamplingSettings())
    assert reply is not None and reply.tokens == [5]
    cloud.close()


def test_a_generation_ending_inside_a_character_does_not_drop_it(scripted_server, smol_slm: LocalModel) -> None:
    """The last token is the first byte of a 2-byte character ("é" is C3 A9): it shows as U+FFFD, not nothing.

    The scripted cloud is used only to make the generation end on that token, which no real model does on demand.
    """
    lead_byte = next(t for t in range(smol_slm.n_vocab) if smol_slm.token_bytes(t) == b"\xc3")
    address = scripted_server(
        lambda r, vocab: pb.DecodeResponse(tokens=[lead_byte], logprobs=[-0.1], new_len=length_after(r) + 1)
    )
    cloud = CloudSession(address, smol_slm.fingerprint)
    result = HybridGenerator(smol_slm, CloudPolicy(), cloud).generate(smol_slm.tokenize(CHAT_PROMPT), max_tokens=1)
    assert result.token_ids == [lead_byte]
    assert result.text == "\ufffd"
    cloud.close()
