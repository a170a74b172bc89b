"""A slow, silent or refusing cloud costs the user one short stall, then the SLM carries on.

Faults a real server cannot produce on demand (never answering, failing on
cue, refusing forever) come from the scripted fake in tests/fake_cloud.py; the
window limit is tested against the real service.
"""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest

from citer_edge import CloudPolicy, CloudSession, HybridGenerator, LocalModel, SamplingSettings
from citer_protocol import pb
from tests.conftest import CHAT_PROMPT
from tests.fake_cloud import Refuse, length_after, start_scripted
from tests.test_cli import run_cli


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "citer_edge.cloud.session" and r.levelno >= 30]


@pytest.fixture
def scripted(smol_slm: LocalModel):
    servers = []

    def start(reply):
        server, servicer, address = start_scripted(smol_slm.fingerprint, smol_slm.n_vocab, reply)
        servers.append(server)
        return servicer, address

    yield start
    for server in servers:
        server.stop(grace=None)


def test_silent_cloud_costs_one_short_stall(scripted, smol_slm: LocalModel, caplog) -> None:
    servicer, address = scripted(lambda request, vocab: None)
    caplog.set_level(logging.DEBUG)
    cloud = CloudSession(address, smol_slm.fingerprint, timeout_s=0.3, backoff_s=(60.0, 60.0))
    result = HybridGenerator(smol_slm, CloudPolicy(), cloud).generate(smol_slm.tokenize(CHAT_PROMPT), max_tokens=32)
    assert len(result.token_ids) == 32 and set(result.sources) == {"slm"}
    assert servicer.decode_requests == 1, "one stall, then the open circuit keeps the loop local"
    assert result.summary.cloud_wait_s < 2.0  # a generous bound on one 0.3 s (+ prefill allowance) deadline
    assert cloud.circuit == "open"
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    cloud.close()


def test_circuit_closes_only_after_a_decode_probe_succeeds(scripted, smol_slm: LocalModel) -> None:
    failures_left = [2]

    def flaky(request: pb.DecodeRequest, vocab: int) -> pb.DecodeResponse:
        if failures_left[0] > 0:
            failures_left[0] -= 1
            return pb.DecodeResponse(tokens=[vocab + 1], logprobs=[0.0], new_len=length_after(request) + 1)  # bad
        return pb.DecodeResponse(tokens=[5], logprobs=[-0.1], new_len=length_after(request) + 1)

    servicer, address = scripted(flaky)
    cloud = CloudSession(address, smol_slm.fingerprint, backoff_s=(0.05, 0.2))
    context = smol_slm.tokenize(CHAT_PROMPT)
    assert cloud.decode(context, 1, SamplingSettings()) is None and cloud.circuit == "open"
    assert cloud.decode(context, 1, SamplingSettings()) is None, "open: no attempt"
    assert servicer.decode_requests == 1
    _wait_half_open(cloud)
    assert cloud.connect() and cloud.circuit == "half-open", "GetInfo answering does not close the circuit"
    assert cloud.decode(context, 1, SamplingSettings()) is None and cloud.circuit == "open"  # the probe failed
    _wait_half_open(cloud)
    reply = cloud.decode(context, 1, SamplingSettings())
    assert reply is not None and reply.tokens == [5]
    assert cloud.circuit == "closed" and servicer.decode_requests == 3
    cloud.close()


def _wait_half_open(cloud: CloudSession) -> None:
    deadline = time.monotonic() + 5
    while cloud.circuit == "open" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cloud.circuit == "half-open"


def test_backoff_doubles_with_jitter(smol_slm: LocalModel, free_port: int) -> None:
    delays = []
    for _ in range(20):
        cloud = CloudSession(f"127.0.0.1:{free_port}", smol_slm.fingerprint, backoff_s=(1.0, 8.0))
        cloud._mark_down("test")  # noqa: SLF001 - the failure path itself, without waiting for real timeouts
        first = cloud.retry_in_s
        cloud._mark_down("test")  # noqa: SLF001
        delays.append((first, cloud.retry_in_s))
    assert all(0.45 <= first <= 1.0 and 0.95 <= second <= 2.0 for first, second in delays), delays
    assert len({round(first, 3) for first, _ in delays}) > 10, "jitter spreads the retries of many devices"


def test_permanent_refusal_stops_routing_with_one_notice(scripted, smol_slm: LocalModel, caplog) -> None:
    servicer, address = scripted(lambda request, vocab: Refuse(grpc.StatusCode.OUT_OF_RANGE, "beyond the window"))
    caplog.set_level(logging.INFO)
    cloud = CloudSession(address, smol_slm.fingerprint, backoff_s=(0.01, 0.01))
    result = HybridGenerator(smol_slm, CloudPolicy(), cloud).generate(smol_slm.tokenize(CHAT_PROMPT), max_tokens=8)
    assert set(result.sources) == {"slm"} and len(result.token_ids) == 8
    assert servicer.decode_requests == 1, "a request that can never succeed is not retried"
    assert cloud.routing_stopped and "refused the request" in cloud.routing_stopped
    assert len(_warnings(caplog)) == 1
    cloud.close()


def test_conversation_beyond_the_cloud_window_stays_local(start_server, smol_path, smol_slm, caplog) -> None:
    server = start_server(smol_path, kv_tokens=256)  # the cloud's window: 256 tokens
    code = "def add_{0}(a, b):\n    return a + b + {0}\n\n"
    prompt = smol_slm.tokenize("".join(code.format(i) for i in range(40)))[:240]  # raw code: it goes on
    assert len(prompt) == 240
    caplog.set_level(logging.INFO)
    cloud = CloudSession(server.address, smol_slm.fingerprint)
    result = HybridGenerator(smol_slm, CloudPolicy(), cloud).generate(prompt, max_tokens=30)
    assert result.sources[:16] == ["llm"] * 16 and set(result.sources[16:]) == {"slm"}
    assert cloud.routing_stopped and "window of 256" in cloud.routing_stopped
    stats = server.sessions.stats()
    assert stats.decode_requests == 16, "the client stopped asking; the server never had to refuse"
    assert len(_warnings(caplog)) == 1
    cloud.close()


def test_cli_against_a_silent_cloud_finishes_on_the_slm_with_one_warning(scripted, smol_path) -> None:
    _, address = scripted(lambda request, vocab: None)
    result = run_cli(
        "generate", "--slm", str(smol_path), "--cloud", address, "--policy", "cloud", "--max-tokens", "32",
        "--json", "Write a haiku about the sea.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["routing"]["llm"] == 0 and payload["routing"]["slm"] == len(payload["token_ids"]) > 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "no reply from the cloud" in warnings[0], result.stderr
