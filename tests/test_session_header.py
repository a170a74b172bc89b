"""The ``citer-session`` header a balancer keys on: sent on the session's calls, never in the way of them."""

from __future__ import annotations

from citer_cloud.server import CloudServer
from citer_edge import CloudSession, LocalModel, SamplingSettings
from citer_edge.cloud.session import session_header_value
from tests.conftest import CHAT_PROMPT


def test_session_header_is_the_session_id_when_it_is_printable_ascii() -> None:
    assert session_header_value("0f8e2c41d5b94bd0a7f2a1c3e9d06b57") == "0f8e2c41d5b94bd0a7f2a1c3e9d06b57"


def test_session_header_is_a_stable_digest_when_the_id_is_not_printable_ascii() -> None:
    value = session_header_value("conversación\n1")
    assert value == session_header_value("conversación\n1") != session_header_value("conversación\n2")
    assert value.isascii() and value.isprintable()


def test_a_session_named_outside_ascii_still_decodes_and_closes(smol_slm: LocalModel, smol_server: CloudServer) -> None:
    """gRPC refuses such a header value outright; the digest keeps the session reachable."""
    cloud = CloudSession(smol_server.address, smol_slm.fingerprint, timeout_s=10.0, session_id="conversación-1")
    reply = cloud.decode(smol_slm.tokenize(CHAT_PROMPT), 2, SamplingSettings())
    assert reply is not None and len(reply.tokens) == 2, cloud.last_error
    assert smol_server.sessions.stats().live_sessions == 1
    cloud.close()
    assert smol_server.sessions.stats().live_sessions == 0
