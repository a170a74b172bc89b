"""Benchmark tooling that must be right for its numbers to mean anything: the delay proxy and the CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from citer_bench.__main__ import BENCHMARKS
from citer_bench.delay_proxy import DelayProxy


def _echo_server() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_delay_proxy_passes_bytes_unchanged_and_adds_the_round_trip() -> None:
    listener, port = _echo_server()
    payload = bytes(range(256)) * 64
    try:
        with DelayProxy(port, rtt_ms=80) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as conn:
            started = time.perf_counter()
            conn.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += conn.recv(65536)
            elapsed = time.perf_counter() - started
    finally:
        listener.close()
    assert received == payload
    assert elapsed >= 0.080  # a lower bound only: the proxy delays by at least the RTT


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_explains_its_flags(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "citer_bench", name, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: citer-bench " + name in result.stdout


def test_buffers_benchmark_reports_both_phases_of_a_setting(smol_path) -> None:
    import argparse

    from citer_bench.buffers import run_setting

    args = argparse.Namespace(prompt_tokens=64, decode_tokens=8, repeats=1, threads=2)
    row = run_setting(args, str(smol_path), "off", "installed", None)
    assert row["exit"] == "ok", row
    assert row["decode"]["median_tokens_per_s"] > 0 and row["prefill"]["median_tokens_per_s"] > 0
    assert len(row["decode"]["runs"]) == 1
    assert "AVX" in row["llama_system_info"]
