"""citer-cloud settings: a TOML file under environment variables under flags, --print-config, JSON logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from citer_cloud.sessions import DecodeCall
from citer_protocol import READY_LINE


def _serve(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citer_cloud.cli", "serve", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, **kwargs,
    )  # fmt: skip


def test_flags_beat_environment_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('model = "/models/llm.gguf"\nport = 6000\nkv_tokens = 32768\nmax_sessions = 4\n')
    result = _serve("--config", str(config), "--max-sessions", "8", "--print-config", env={"CITER_CLOUD_PORT": "7000"})
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines() if not line.startswith("#"))
    assert printed["model"] == '"/models/llm.gguf"' and printed["kv_tokens"] == "32768"  # from the file
    assert printed["port"] == "7000"  # the environment beats the file
    assert printed["max_sessions"] == "8"  # the flag beats both
    assert "auth_token: not set (never printed)" in result.stdout


def test_print_config_never_prints_the_token(tmp_path: Path) -> None:
    result = _serve("--model", "x.gguf", "--print-config", env={"CITER_CLOUD_AUTH_TOKEN": "s3cret-value"})
    assert result.returncode == 0 and "s3cret-value" not in result.stdout
    assert "auth_token: set (never printed)" in result.stdout


def test_unknown_setting_is_one_readable_line(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text("kv = 1\n")
    result = _serve("--config", str(config), "--print-config")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"citer-cloud: error: {config}: unknown settings kv (known:")


def test_json_logs_are_one_object_per_line(smol_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "citer_cloud.cli", "serve", "--model", str(smol_path), "--port", "0",
         "--log-format", "json", "--stop-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout.readline().startswith(READY_LINE)
    server.stdin.close()  # the lifeline: the server shuts down
    stderr = server.stderr.read()
    assert server.wait(timeout=60) == 0
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "citer_cloud.server" and r["message"].startswith("serving ") for r in records)


def test_gpu_offload_setting_reaches_the_config_and_a_cpu_build_still_serves(start_server, smol_path) -> None:
    """--n-gpu-layers is for GPU builds of llama.cpp; on a CPU build the same setting must still load and serve."""
    printed = _serve("--model", "x.gguf", "--n-gpu-layers", "-1", "--print-config")
    assert "n_gpu_layers = -1" in printed.stdout.splitlines()
    server = start_server(smol_path, n_gpu_layers=-1)
    assert server.sessions.decode(DecodeCall("gpu", 0, [1, 9690, 198], 2)).new_len == 5


def test_a_model_of_the_wrong_kind_for_the_backend_is_one_line(tmp_path: Path, smol_path: Path) -> None:
    """A GGUF for vLLM, a folder for llama.cpp, a folder without config.json: one line each, exit 2."""
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    cases = {
        ("--backend", "vllm", "--model", str(smol_path)): "--backend vllm needs a Hugging Face model folder",
        ("--backend", "vllm", "--model", str(folder)): "--backend vllm needs a Hugging Face model folder",
        ("--backend", "llama.cpp", "--model", str(folder)): "--backend llama.cpp needs a GGUF file, got a folder",
    }
    for args, message in cases.items():
        result = _serve(*args, "--port", "0")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("citer-cloud: error: ") and message in lines[0], args


def test_vllm_settings_reach_the_config_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('backend = "vllm"\ntensor_parallel_size = 2\ngpu_memory_utilization = 0.8\n')
    result = _serve("--config", str(config), "--print-config", env={"CITER_CLOUD_PIPELINE_PARALLEL_SIZE": "3"})
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines() if not line.startswith("#"))
    assert printed["backend"] == '"vllm"' and printed["tensor_parallel_size"] == "2"
    assert printed["gpu_memory_utilization"] == "0.8" and printed["pipeline_parallel_size"] == "3"
