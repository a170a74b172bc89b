"""Prometheus metrics from a real server: request counts by status, the server's counters, batch sizes."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from citer_protocol import pb, pb_grpc

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 2114]


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_requests_tokens_and_batches(start_server, smol_path) -> None:
    server = start_server(smol_path, metrics_port=0)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        request = pb.DecodeRequest(session_id="m", known_len=0, append=PROMPT, max_tokens=3)
        next(iter(stub.Decode(iter([request]), timeout=30)))
        with pytest.raises(grpc.RpcError):  # known_len ahead of the server: FAILED_PRECONDITION
            next(iter(stub.Decode(iter([pb.DecodeRequest(session_id="m", known_len=99, max_tokens=1)]), timeout=30)))
    samples = _scrape(server.metrics_port)
    stats = server.sessions.stats()
    assert samples['citer_requests_total{code="OK",rpc="Decode"}'] == 1
    assert samples['citer_requests_total{code="FAILED_PRECONDITION",rpc="Decode"}'] == 1
    assert samples['citer_request_seconds_count{rpc="Decode"}'] == 2
    assert samples["citer_tokens_generated_total"] == stats.tokens_generated == 3
    assert samples["citer_tokens_prefilled_total"] == stats.tokens_prefilled == len(PROMPT)
    assert samples["citer_forward_passes_total"] == stats.forward_passes
    assert samples["citer_live_sessions"] == 1
    assert samples["citer_batch_sessions_count"] == stats.forward_passes
    assert samples["citer_batch_tokens_sum"] == len(PROMPT) + 2  # the prompt, then two decode steps


def test_metrics_are_off_unless_asked_for(smol_server) -> None:
    assert smol_server.metrics_port is None
