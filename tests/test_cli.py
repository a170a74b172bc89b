"""The citer-edge command line, run as a user runs it: a real process, real models, a real local cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITER_EDGE_THREADS": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "citer_edge.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        env=env,
    )


def test_generate_json_reports_routing(smol_path: Path) -> None:
    result = run_cli(
        "generate", "--slm", str(smol_path), "--llm", "smollm2-135m", "--local-cloud",
        "--policy", "confidence", "--threshold", "0.9", "--max-tokens", "24", "--json",
        "Write a haiku about the sea.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    routing = payload["routing"]
    assert routing["slm"] + routing["llm"] == len(payload["token_ids"]) == payload["summary"]["tokens"]
    assert routing["llm"] > 0, "a 0.9 confidence cut sends some tokens to the cloud"
    assert payload["sources"].count("llm") == routing["llm"]
    assert payload["text"]


def test_missing_model_path_is_one_readable_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    result = run_cli("generate", "--slm", str(missing), "hello")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("citer-edge: error: model file not found") and str(missing) in lines[0]
    assert "Traceback" not in result.stderr


def test_chat_one_shot_shows_routing_and_summary(smol_path: Path) -> None:
    result = run_cli(
        "chat", "--slm", str(smol_path), "--llm", str(smol_path), "--local-cloud", "--show-routing",
        "--policy", "cloud", "--max-tokens", "12", "Say hello.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("⟦") and "⟧" in result.stdout  # every token came from the cloud
    summary = next(line for line in result.stderr.splitlines() if line.startswith("["))
    tokens = int(summary[1:].split()[0])  # 12, or fewer if the model ended its reply first
    assert 0 < tokens <= 12 and summary.startswith(
        f"[{tokens} tokens, {tokens} from the cloud (100%) in {tokens} calls"
    )


def test_interactive_chat_keeps_the_conversation(smol_path: Path) -> None:
    result = run_cli(
        "chat", "--slm", str(smol_path), "--policy", "local", "--max-tokens", "8",
        stdin="Hi there.\nAnd again?\n\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tokens, 0 from the cloud") == 2  # two turns, one summary each


def test_models_list_and_unknown_alias() -> None:
    listed = run_cli("models", "list")
    assert listed.returncode == 0
    assert "smollm2-135m" in listed.stdout and "qwen2.5-coder-1.5b" in listed.stdout
    unknown = run_cli("models", "pull", "no-such-model")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "citer-edge: error: unknown model alias 'no-such-model'; known: " + ", ".join(
        ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    )


def test_cloud_serve_without_model_exits_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "citer_cloud.cli", "serve", "--model", str(tmp_path / "x.gguf")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("citer-cloud: error: model file not found")


def test_bad_extra_buffers_setting_is_one_readable_line(smol_path: Path) -> None:
    result = run_cli("generate", "--slm", str(smol_path), "hello", env={"CITER_LLAMA_EXTRA_BUFFERS": "fast"})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "citer-edge: error: CITER_LLAMA_EXTRA_BUFFERS must be one of auto, on, off, got 'fast'"
    )


def test_extra_buffers_flag_reaches_the_slm_and_the_local_cloud(smol_path: Path) -> None:
    """The flag beats a bad environment value in both processes: the SLM here and the spawned citer-cloud."""
    result = run_cli(
        "generate", "--slm", str(smol_path), "--llm", str(smol_path), "--local-cloud", "--policy", "cloud",
        "--llama-extra-buffers", "off", "--max-tokens", "4", "--json", "Hi.",
        env={"CITER_LLAMA_EXTRA_BUFFERS": "fast"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["routing"]["llm"] == 4
