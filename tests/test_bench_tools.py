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

    args = argparse.Namespace(prompt_tokens=64, decode_tokens=8, repeats=1, threads=2, timeout_s=300)
    row = run_setting(args, str(smol_path), "off", "installed", None)
    assert row["exit"] == "ok", row
    assert row["decode"]["median_tokens_per_s"] > 0 and row["prefill"]["median_tokens_per_s"] > 0
    assert len(row["decode"]["runs"]) == 1
    assert "AVX" in row["llama_system_info"]


def test_capacity_p99_of_ten_samples_is_the_largest() -> None:
    """The old p99 took the second-largest of ten samples; nearest-rank takes the largest."""
    from citer_bench.capacity import percentile_ms

    samples = [i / 1000 for i in range(1, 11)]
    assert percentile_ms(samples, 0.99) == 10.0
    assert percentile_ms(samples, 0.50) == 5.0
    assert percentile_ms(samples, 0.95) == 10.0


def test_capacity_run_fails_when_a_session_fails(free_port: int) -> None:
    import argparse

    from citer_bench.capacity import run_sessions

    args = argparse.Namespace(calls=2, append=4)
    with pytest.raises(RuntimeError, match="3 of 3 sessions failed"):
        run_sessions(f"127.0.0.1:{free_port}", "fingerprint", [[1, 2, 3]], [4, 5, 6, 7], 3, args)


def test_capacity_measures_calls_and_server_work(smol_path, smol_slm) -> None:
    import argparse

    from citer_bench.capacity import measure
    from citer_edge.cloud.local import LocalCloud

    args = argparse.Namespace(calls=3, append=8)
    prompt = smol_slm.tokenize("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    filler = smol_slm.tokenize(" for item in items: total += item" * 4, add_bos=False)
    with LocalCloud(smol_path) as cloud:
        row = measure(cloud, smol_slm.fingerprint, [prompt], filler, 2, args)
    assert row["calls"] == 6
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    # Each session's first call prefills its prompt; the others append 8 (+ nothing else: delta sync).
    assert row["prefilled_tokens_per_call"] == (2 * (len(prompt) + 8) + 4 * 8) / 6
    assert 0 < row["forward_passes_per_call"] <= 1
    assert row["server_cpu_s_per_token"] > 0
