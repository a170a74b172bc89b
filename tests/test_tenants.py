"""Tenants on the real service: each tenant's sessions are invisible to the others, and limits hold."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from citer_cloud.sessions import TenantLimits
from citer_cloud.tenants import Tenant, TenantDirectory, token_digest
from citer_protocol import REASON_KEY, SERVER_LEN_KEY, pb, pb_grpc

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 2114]
TOKENS = {"acme": "acme-secret-token", "beta": "beta-secret-token"}


def _directory(**limits) -> TenantDirectory:
    rate = limits.pop("max_requests_per_s", None)
    return TenantDirectory(
        {token_digest(token): Tenant(name, TenantLimits(**limits), rate) for name, token in TOKENS.items()}
    )


class Client:
    def __init__(self, address: str, tenant: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.LlmServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {TOKENS[tenant]}"),)

    def decode(self, session_id: str, known_len: int, append: list[int], max_tokens: int) -> pb.DecodeResponse:
        request = pb.DecodeRequest(session_id=session_id, known_len=known_len, append=append, max_tokens=max_tokens)
        return next(iter(self.stub.Decode(iter([request]), timeout=30, metadata=self.metadata)))

    def refused(self, *args) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.decode(*args)
        return caught.value

    def close(self, session_id: str) -> bool:
        request = pb.CloseSessionRequest(session_id=session_id)
        return self.stub.CloseSession(request, timeout=30, metadata=self.metadata).existed


@pytest.fixture
def tenant_server(start_server, smol_path, caplog):
    caplog.set_level(logging.INFO)  # what an operator's log holds; -v (DEBUG) may name ids for troubleshooting
    return start_server(smol_path, tenants=_directory())


def test_one_tenant_cannot_read_extend_truncate_close_or_probe_anothers_session(tenant_server, caplog) -> None:
    acme, beta = Client(tenant_server.address, "acme"), Client(tenant_server.address, "beta")
    first = acme.decode("shared-id", 0, PROMPT, 3)
    held = first.new_len

    # Probe existence and length, extend, or truncate it: beta only ever reaches its own empty namespace.
    for known_len in (held, held - 2, 1):
        error = beta.refused("shared-id", known_len, [5], 1)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        metadata = dict(error.trailing_metadata())
        assert metadata[REASON_KEY] == "SESSION_UNKNOWN" and metadata[SERVER_LEN_KEY] == "0"
        never_seen = beta.refused("never-seen-id", known_len, [5], 1)
        assert never_seen.details() == error.details().replace("shared-id", "never-seen-id")
    assert beta.close("shared-id") is False, "closing it: beta has no such session"
    # Starting "shared-id" from scratch gives beta its own session; acme's is untouched.
    beta.decode("shared-id", 0, [5, 6, 7], 2)
    assert tenant_server.sessions.session_length("shared-id", "acme") == held
    assert tenant_server.sessions.session_length("shared-id", "beta") == 5

    again = acme.decode("shared-id", held - 3, [], 3)  # acme's session still holds exactly its context
    assert list(again.tokens) == list(first.tokens)
    assert acme.close("shared-id") is True and beta.close("shared-id") is True
    assert not any(token in caplog.text for token in TOKENS.values()), "tokens are never logged"
    assert "shared-id" not in caplog.text, "session ids are not logged at INFO"


def test_unknown_token_is_refused(tenant_server) -> None:
    with grpc.insecure_channel(tenant_server.address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetInfo(pb.InfoRequest(), timeout=10, metadata=(("authorization", "Bearer guessed"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tenant_session_limit_refuses_a_new_session_and_changes_nothing(start_server, smol_path) -> None:
    server = start_server(smol_path, tenants=_directory(max_sessions=2))
    acme, beta = Client(server.address, "acme"), Client(server.address, "beta")
    acme.decode("a1", 0, PROMPT, 1)
    acme.decode("a2", 0, PROMPT, 1)
    before = server.sessions.stats()
    error = acme.refused("a3", 0, PROMPT, 1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 live sessions" in error.details()
    after = server.sessions.stats()
    assert (after.sessions_created, after.live_sessions) == (before.sessions_created, before.live_sessions)
    assert acme.decode("a1", len(PROMPT) + 1, [], 1).tokens, "existing sessions go on"
    assert beta.decode("b1", 0, PROMPT, 1).tokens, "other tenants have their own allowance"


def test_tenant_kv_limit(start_server, smol_path) -> None:
    server = start_server(smol_path, tenants=_directory(max_kv_tokens=40))
    acme = Client(server.address, "acme")
    acme.decode("a1", 0, PROMPT, 1)  # 12 tokens
    error = acme.refused("a2", 0, PROMPT * 3, 1)  # 34 more: 46 > 40
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over its limit of 40" in error.details()
    assert server.sessions.session_length("a2", "acme") is None


def test_tenant_request_rate_limit(start_server, smol_path) -> None:
    server = start_server(smol_path, tenants=_directory(max_requests_per_s=0.1))  # one request per 10 s
    acme = Client(server.address, "acme")
    acme.decode("a", 0, PROMPT, 0)
    error = acme.refused("a", len(PROMPT), [6], 0)  # the second within ten seconds
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "0.1 requests per second" in error.details()
    assert server.sessions.session_length("a", "acme") == len(PROMPT)


def test_one_session_may_not_take_more_than_its_share_of_the_kv_cache(start_server, smol_path) -> None:
    server = start_server(smol_path, kv_tokens=1024, max_session_kv_share=0.25)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        request = pb.DecodeRequest(session_id="big", known_len=0, append=[5] * 250, max_tokens=10)
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stub.Decode(iter([request]), timeout=30)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 256 tokens" in caught.value.details()
    assert server.sessions.stats().sessions_created == 0


def test_tenants_file_is_read_with_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        "[defaults]\nmax_sessions = 4\nmax_requests_per_s = 10\n\n"
        '[tenants.acme]\ntoken = "acme-secret-token"\nmax_sessions = 64\n\n'
        f'[tenants.beta]\ntoken_sha256 = "{token_digest("beta-secret-token")}"\n'
    )
    directory = TenantDirectory.from_file(path)
    acme = directory.tenant_for("Bearer acme-secret-token")
    beta = directory.tenant_for("Bearer beta-secret-token")
    assert acme.limits.max_sessions == 64 and acme.max_requests_per_s == 10
    assert beta.name == "beta" and beta.limits.max_sessions == 4
    assert directory.tenant_for("Bearer other") is None and directory.tenant_for("acme-secret-token") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tenants.acme]\nmax_sessions = 2\n", "needs token or token_sha256"),
        ('[tenants.acme]\ntoken = "x"\nmax_session = 2\n', "unknown keys max_session"),
        ('[tenants."a b"]\ntoken = "x"\n', "tenant name 'a b'"),
        ('[tenants.a]\ntoken = "x"\n[tenants.b]\ntoken = "x"\n', "share a token"),
        ("[tenants.acme\n", "is not valid TOML"),
        ("[defaults]\nmax_sessions = 2\n", "defines no [tenants.NAME] table"),
    ],
)
def test_bad_tenants_file_is_one_readable_line(tmp_path: Path, smol_path, text: str, message: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "citer_cloud.cli", "serve", "--model", str(smol_path), "--tenants-file", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("citer-cloud: error: ") and message in lines[0], lines
