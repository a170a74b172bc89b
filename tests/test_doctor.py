"""``citer-edge doctor`` run as a user runs it: a real process, real models, a real cloud on loopback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from citer_cloud.server import CloudServer
from citer_protocol.llama_loader import EXTRA_BUFFERS_ENV, CpuInfo
from tests.test_cli import run_cli


def _checks(payload: dict) -> dict[str, dict]:
    return {check["name"]: check for check in payload["checks"]}


def test_doctor_reports_machine_and_a_working_decode(smol_path: Path) -> None:
    result = run_cli("doctor", "--slm", str(smol_path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is True and payload["verdict"] == "OK"
    checks = _checks(payload)
    for name in ("python", "cpu", "llama.cpp", "buffers", "onnxruntime"):
        assert name in checks, name
    amx = "yes" if CpuInfo.read().amx else "no"
    assert f"amx_int8 {amx}" in checks["cpu"]["detail"]
    assert "extra buffers" in checks["buffers"]["detail"]
    assert checks["batched decode"]["status"] == "ok"
    assert checks["batched decode"]["detail"].startswith("64 tokens in ")
    # SmolLM2 has no shipped router: doctor says what --policy auto will do instead.
    assert "confidence rule" in checks["router"]["detail"]


def test_doctor_text_ends_with_one_verdict_line(smol_path: Path) -> None:
    result = run_cli("doctor", "--slm", str(smol_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "OK"


def test_doctor_pairs_with_a_real_cloud(smol_path: Path, smol_server: CloudServer) -> None:
    result = run_cli("doctor", "--slm", str(smol_path), "--cloud", smol_server.address, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    cloud = _checks(json.loads(result.stdout))["cloud"]
    assert cloud["status"] == "ok"
    assert smol_server.address in cloud["detail"] and "pairs with" in cloud["detail"]


def test_doctor_fails_when_the_cloud_does_not_answer(smol_path: Path, free_port: int) -> None:
    address = f"127.0.0.1:{free_port}"
    result = run_cli("doctor", "--slm", str(smol_path), "--cloud", address)
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"BROKEN: cloud: cannot reach the cloud at {address}")
    assert "fix: start one: citer-cloud serve" in last
    assert "WARNING" not in result.stderr, "the check line says it once; no second warning"


def test_doctor_flags_a_corrupt_model_with_the_command_that_fixes_it(smol_path: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / smol_path.name
    corrupt.write_bytes(b"GGUF but not really")
    result = run_cli("doctor", "--slm", str(smol_path), "--json", env={"CITER_EDGE_MODEL_DIR": str(tmp_path)})
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    check = _checks(payload)["model smollm2-135m"]
    assert check["status"] == "fail" and str(corrupt) in check["detail"]
    assert check["fix"] == f"rm {corrupt} && citer-edge models pull smollm2-135m"
    assert payload["verdict"].startswith("BROKEN: model smollm2-135m: checksum mismatch")
    assert corrupt.read_bytes() == b"GGUF but not really", "doctor reports; it never deletes"


def test_doctor_reports_missing_models_without_failing(smol_path: Path, tmp_path: Path) -> None:
    shutil.copy(smol_path, tmp_path / smol_path.name)
    result = run_cli("doctor", "--json", env={"CITER_EDGE_MODEL_DIR": str(tmp_path)})
    payload = json.loads(result.stdout)
    checks = _checks(payload)
    assert checks["model smollm2-135m"]["status"] == "ok"
    assert "not downloaded" in checks["model qwen2.5-coder-1.5b"]["detail"]
    assert checks["slm"]["status"] == "warn"  # the default SLM is not here, so nothing was decoded with it
    assert "batched decode" not in checks
    assert result.returncode == 0 and payload["ok"]


def test_doctor_rejects_a_bad_buffer_setting(smol_path: Path) -> None:
    result = run_cli("doctor", "--slm", str(smol_path), env={EXTRA_BUFFERS_ENV: "sometimes"})
    assert result.returncode == 1
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(f"BROKEN: buffers: {EXTRA_BUFFERS_ENV} must be one of auto, on, off, got 'sometimes'")
    )


def test_doctor_reports_an_unreadable_slm_instead_of_crashing(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"GGUF" + bytes(64))
    result = run_cli("doctor", "--slm", str(garbage), "--json")
    assert result.returncode == 1, result.stderr
    payload = json.loads(result.stdout)
    slm = _checks(payload)["slm"]
    assert slm["status"] == "fail" and slm["detail"].startswith(f"llama.cpp cannot read {garbage}")
    assert "batched decode" not in _checks(payload)


def test_doctor_fails_on_a_mistyped_slm_path(tmp_path: Path) -> None:
    result = run_cli("doctor", "--slm", str(tmp_path / "typo.gguf"))
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].startswith(f"BROKEN: slm: model file not found: {tmp_path}")


def test_doctor_survives_a_llama_cpp_that_does_not_load(smol_path: Path, tmp_path: Path) -> None:
    """A fake llama_cpp package that fails to import (a real broken install cannot be made on demand)."""
    fake = tmp_path / "llama_cpp"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise OSError('libllama.so: cannot open shared object file')\n")
    result = run_cli("doctor", "--slm", str(smol_path), "--json", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    payload = json.loads(result.stdout)
    llama = _checks(payload)["llama.cpp"]
    assert llama["status"] == "fail" and "libllama.so: cannot open shared object file" in llama["detail"]
    assert llama["fix"].startswith("python -m pip install --force-reinstall")
    assert payload["verdict"].startswith("BROKEN: llama.cpp: llama-cpp-python does not load")


def test_doctor_with_its_own_buffer_flag_ignores_a_bad_environment(smol_path: Path) -> None:
    result = run_cli(
        "doctor", "--slm", str(smol_path), "--llama-extra-buffers", "off", "--json", env={EXTRA_BUFFERS_ENV: "fast"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "forced off" in _checks(json.loads(result.stdout))["buffers"]["detail"]


@pytest.mark.qwen
def test_doctor_refuses_a_cloud_with_another_tokenizer(qwen_slm_path: Path, smol_server: CloudServer) -> None:
    result = run_cli("doctor", "--slm", str(qwen_slm_path), "--cloud", smol_server.address, "--json")
    assert result.returncode == 1
    cloud = _checks(json.loads(result.stdout))["cloud"]
    assert cloud["status"] == "fail" and "uses a different tokenizer" in cloud["detail"]
