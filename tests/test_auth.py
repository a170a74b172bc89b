"""Bearer-token auth on the cloud service: wrong or missing credentials are refused before any work."""

from __future__ import annotations

import grpc
import pytest

from citer_edge import CloudAuthError, CloudSession, LocalModel, SamplingSettings
from citer_protocol import pb, pb_grpc
from tests.conftest import CHAT_PROMPT


@pytest.fixture
def locked_server(start_server, smol_path):
    return start_server(smol_path, auth_token="s3cret")


def test_client_with_the_token_decodes(locked_server, smol_slm: LocalModel) -> None:
    cloud = CloudSession(locked_server.address, smol_slm.fingerprint, auth_token="s3cret")
    assert cloud.decode(smol_slm.tokenize(CHAT_PROMPT), 2, SamplingSettings()) is not None


@pytest.mark.parametrize("token", [None, "wrong"])
def test_client_without_the_right_token_gets_a_clear_error(locked_server, smol_slm: LocalModel, token) -> None:
    cloud = CloudSession(locked_server.address, smol_slm.fingerprint, auth_token=token)
    with pytest.raises(CloudAuthError, match="refused our credentials"):
        cloud.connect()


def test_every_rpc_kind_is_guarded(locked_server) -> None:
    with grpc.insecure_channel(locked_server.address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        calls = [
            lambda: stub.GetInfo(pb.InfoRequest(), timeout=10),
            lambda: list(stub.Generate(pb.GenerateRequest(prompt=[1], max_tokens=1), timeout=10)),
            lambda: list(stub.Decode(iter([pb.DecodeRequest(session_id="s", append=[1], max_tokens=1)]), timeout=10)),
            lambda: stub.CloseSession(pb.CloseSessionRequest(session_id="s"), timeout=10),
            lambda: stub.GetStats(pb.StatsRequest(), timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stats = locked_server.sessions.stats()
    assert stats.decode_requests == 0 and stats.sessions_created == 0 and stats.forward_passes == 0
