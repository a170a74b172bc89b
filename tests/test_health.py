"""Health and reflection on the real service: SERVING only while the engine answers, NOT_SERVING when draining."""

from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        )


def _wait_for(address: str, wanted: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _status(address) == wanted:
            return True
        time.sleep(0.05)
    return False


def test_health_is_serving_for_the_server_and_the_citer_service(smol_server) -> None:
    assert _status(smol_server.address) == SERVING
    assert _status(smol_server.address, "citer.v1.LlmService") == SERVING


def test_health_answers_without_the_bearer_token(start_server, smol_path) -> None:
    server = start_server(smol_path, auth_token="s3cret")
    assert _status(server.address) == SERVING


def test_health_is_not_serving_while_the_engine_is_stuck(start_server, smol_path) -> None:
    server = start_server(smol_path, health_probe_interval_s=0.1, health_probe_timeout_s=0.3)
    release = threading.Event()
    server.engine.call(release.wait)  # occupy the engine thread, as a hung model step would
    try:
        assert _wait_for(server.address, NOT_SERVING), "a stuck engine must not look healthy"
    finally:
        release.set()
    assert _wait_for(server.address, SERVING), "once it answers again, it serves again"


def test_health_flips_to_not_serving_when_draining(smol_server) -> None:
    seen: list[int] = []
    with grpc.insecure_channel(smol_server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        seen.append(next(watch).status)
        stopper = threading.Thread(target=smol_server.stop, kwargs={"grace_s": 2.0})
        stopper.start()
        try:
            for reply in watch:
                seen.append(reply.status)
        except grpc.RpcError:
            pass  # the stream ends when the server closes
        stopper.join()
    assert seen[:2] == [SERVING, NOT_SERVING]


def test_reflection_lists_the_citer_and_health_services(smol_server) -> None:
    with grpc.insecure_channel(smol_server.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"citer.v1.LlmService", "grpc.health.v1.Health"} <= set(services)


def test_health_command_exits_zero_only_while_serving(smol_server, free_port, capsys) -> None:
    """``citer-cloud health`` (the containers' HEALTHCHECK): 0 and SERVING for a live server, 1 where none answers."""
    from citer_cloud.cli import main

    assert main(["health", smol_server.address]) == 0
    assert capsys.readouterr().out.strip() == f"{smol_server.address}: SERVING"
    assert main(["health", f"127.0.0.1:{free_port}", "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
