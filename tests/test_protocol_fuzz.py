"""Property-based fuzzing of the Decode protocol against a real server on loopback.

Random interleavings of Decode and CloseSession requests over a few session
ids (random known_len positions, token ids in and out of the vocabulary,
max_tokens, sampling values including NaN) are checked against a reference
model of the protocol: every reply is the status the model predicts, an
accepted reply adds up, a rejected request changes nothing, and every session
holds exactly what the model says. The server must keep serving throughout.
"""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from citer_cloud.server import CloudServer, ServerConfig
from citer_protocol import pb, pb_grpc

VOCAB = 49152  # SmolLM2
EXAMPLES = 40
STEPS = 15


@pytest.fixture(scope="module")
def fuzz_server(smol_path):
    server = CloudServer(ServerConfig(model_path=smol_path, port=0, max_sessions=16, kv_tokens=4096)).start()
    yield server
    server.stop()


class ProtocolModel(RuleBasedStateMachine):
    """What the server must hold for each of a few session ids, and what it must answer."""

    server: CloudServer

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:8]
        self.held: dict[str, int] = {}  # session -> tokens the server holds
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = pb_grpc.LlmServiceStub(self.channel)

    def _id(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @rule(
        name=st.sampled_from("abc"),
        where=st.sampled_from(["start", "held", "behind", "ahead"]),
        append=st.lists(st.integers(-2, VOCAB + 2) | st.integers(1, 2000), max_size=6),
        max_tokens=st.integers(0, 3),
        temperature=st.sampled_from([0.0] * 6 + [0.8, math.nan, -1.0, math.inf]),
    )
    def decode(self, name: str, where: str, append: list[int], max_tokens: int, temperature: float) -> None:
        held = self.held.get(name, 0)
        known_len = {"start": 0, "held": held, "behind": max(0, held - 2), "ahead": held + 3}[where]
        request = pb.DecodeRequest(
            session_id=self._id(name), known_len=known_len, append=append, max_tokens=max_tokens,
            sampling=pb.SamplingParams(temperature=temperature, seed=7),
        )  # fmt: skip
        expected = self._expected_status(name, known_len, append, max_tokens, temperature)
        try:
            reply = next(iter(self.stub.Decode(iter([request]), timeout=60)))
        except grpc.RpcError as error:
            assert error.code() == expected, (error.code(), error.details(), expected)
            assert error.details()
            return
        assert expected == grpc.StatusCode.OK, (expected, request)
        assert len(reply.tokens) <= max_tokens and len(reply.logprobs) == len(reply.tokens)
        assert all(0 <= t < VOCAB for t in reply.tokens)
        assert reply.new_len == known_len + len(append) + len(reply.tokens)
        self.held[name] = reply.new_len

    def _expected_status(
        self, name: str, known_len: int, append: list[int], max_tokens: int, temperature: float
    ) -> grpc.StatusCode:
        invalid = (
            not (math.isfinite(temperature) and temperature >= 0)
            or any(not 0 <= t < VOCAB for t in append)
            or (not append and max_tokens == 0)
            or (known_len == 0 and not append)
        )
        if invalid:
            return grpc.StatusCode.INVALID_ARGUMENT
        if (name not in self.held and known_len > 0) or known_len > self.held.get(name, 0):
            return grpc.StatusCode.FAILED_PRECONDITION
        return grpc.StatusCode.OK

    @rule(append=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=4), max_tokens=st.integers(1, 3))
    def decode_all_at_once(self, append: list[int], max_tokens: int) -> None:
        """One valid request per session on three streams at the same time: the engine batches them."""
        requests = {
            name: pb.DecodeRequest(
                session_id=self._id(name), known_len=self.held.get(name, 0), append=append, max_tokens=max_tokens
            )
            for name in "abc"
        }
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {name: pool.submit(self._send, request) for name, request in requests.items()}
            replies = {name: future.result() for name, future in futures.items()}
        for name, reply in replies.items():
            assert reply.new_len == requests[name].known_len + len(append) + len(reply.tokens)
            self.held[name] = reply.new_len

    def _send(self, request: pb.DecodeRequest) -> pb.DecodeResponse:
        return next(iter(self.stub.Decode(iter([request]), timeout=60)))

    @rule(name=st.sampled_from("abc"))
    def close(self, name: str) -> None:
        reply = self.stub.CloseSession(pb.CloseSessionRequest(session_id=self._id(name)), timeout=30)
        assert reply.existed == (name in self.held)
        self.held.pop(name, None)

    @invariant()
    def sessions_hold_what_the_model_says(self) -> None:
        for name in "abc":
            assert self.server.sessions.session_length(self._id(name)) == self.held.get(name)

    def teardown(self) -> None:
        for name in list(self.held):
            self.stub.CloseSession(pb.CloseSessionRequest(session_id=self._id(name)), timeout=30)
        self.channel.close()


def test_protocol_holds_under_random_requests(fuzz_server: CloudServer) -> None:
    ProtocolModel.server = fuzz_server
    run = ProtocolModel.TestCase
    run.settings = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow], database=None,
    )  # fmt: skip
    run().runTest()
    stats = fuzz_server.sessions.stats()
    print(f"fuzzed {stats.decode_requests} accepted Decode requests over {EXAMPLES} random runs")
    assert stats.live_sessions == 0, "every run closed its sessions"
    assert stats.decode_requests > EXAMPLES, "most runs got requests accepted"
