"""The one llama.cpp loader: CPU detection, the buffer policy, and a batched decode that must not crash.

On an Intel Xeon with AMX, llama.cpp's AMX weight buffer kills the process
(SIGSEGV) on any batched decode; the loader keeps it off there. The
subprocess tests below run on every machine and die on such a CPU without
the fix.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from citer_protocol.llama_check import check_batched_decode
from citer_protocol.llama_loader import (
    EXTRA_BUFFERS_ENV,
    CpuInfo,
    choose_buffer_policy,
    llama_build_features,
    load_llama_model,
)

# Flag lines as /proc/cpuinfo prints them (trimmed), from the three kinds of machine this project runs on.
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme sse sse2 ssse3 fma avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 \
amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme sse sse2 avx avx2 avx512f amx_tile amx_int8
"""
ICE_LAKE = """model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512_vnni avx512vl
"""
EPYC = """model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 sse4_1 sse4_2 avx avx2 fma bmi2 sha_ni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
"""

AMX_BUILD = llama_build_features(
    "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 | "
)
PORTABLE_BUILD = llama_build_features("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 | ")


def test_cpuinfo_reads_amx_on_sapphire_rapids() -> None:
    cpu = CpuInfo.parse(SAPPHIRE_RAPIDS)
    assert cpu.model_name == "Intel(R) Xeon(R) Processor"
    assert cpu.amx and cpu.avx512 and cpu.avx2
    assert cpu.amx_flags == ["amx_bf16", "amx_int8", "amx_tile"]


def test_cpuinfo_without_amx_on_ice_lake_and_epyc() -> None:
    ice_lake, epyc = CpuInfo.parse(ICE_LAKE), CpuInfo.parse(EPYC)
    assert ice_lake.avx512 and not ice_lake.amx
    assert epyc.model_name == "AMD EPYC 7B13"
    assert epyc.avx2 and not epyc.avx512 and not epyc.amx


def test_cpuinfo_without_x86_flags_line_has_no_flags() -> None:
    cpu = CpuInfo.parse(ARM)
    assert cpu.flags == frozenset()
    assert cpu.model_name == "unknown"


def test_cpuinfo_of_a_missing_file_has_no_flags(tmp_path: Path) -> None:
    assert CpuInfo.read(tmp_path / "no-cpuinfo").flags == frozenset()


def test_build_features_read_from_system_info() -> None:
    assert AMX_BUILD["AMX_INT8"] == "1" and AMX_BUILD["AVX2"] == "1" and AMX_BUILD["SSE3"] == "1"
    assert "AMX_INT8" not in PORTABLE_BUILD


def test_auto_turns_extra_buffers_off_on_amx_cpu_with_amx_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXTRA_BUFFERS_ENV, raising=False)
    policy = choose_buffer_policy(cpu=CpuInfo.parse(SAPPHIRE_RAPIDS), build_features=AMX_BUILD)
    assert policy.setting == "auto"
    assert not policy.use_extra_buffers
    assert "AMX" in policy.reason


def test_auto_keeps_extra_buffers_where_amx_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXTRA_BUFFERS_ENV, raising=False)
    for cpu_text, build in ((EPYC, AMX_BUILD), (ICE_LAKE, AMX_BUILD), (SAPPHIRE_RAPIDS, PORTABLE_BUILD)):
        policy = choose_buffer_policy(cpu=CpuInfo.parse(cpu_text), build_features=build)
        assert policy.use_extra_buffers, (cpu_text.splitlines()[0], policy)


def test_env_override_forces_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    amx = CpuInfo.parse(SAPPHIRE_RAPIDS)
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "on")
    assert choose_buffer_policy(cpu=amx, build_features=AMX_BUILD).use_extra_buffers
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "OFF")
    assert not choose_buffer_policy(cpu=CpuInfo.parse(EPYC), build_features=AMX_BUILD).use_extra_buffers


def test_explicit_setting_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "off")
    policy = choose_buffer_policy("on", cpu=CpuInfo.parse(EPYC), build_features=PORTABLE_BUILD)
    assert policy.setting == "on" and policy.use_extra_buffers


def test_bad_setting_names_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "maybe")
    with pytest.raises(ValueError, match=f"{EXTRA_BUFFERS_ENV} must be one of auto, on, off, got 'maybe'"):
        choose_buffer_policy(cpu=CpuInfo.parse(EPYC), build_features=PORTABLE_BUILD)
    with pytest.raises(ValueError, match="--llama-extra-buffers must be one of"):
        choose_buffer_policy("sometimes", cpu=CpuInfo.parse(EPYC), build_features=PORTABLE_BUILD)


def test_loader_logs_its_buffer_choice_at_debug(smol_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="citer_protocol.llama_loader"):
        model = load_llama_model(smol_path, extra_buffers="off", vocab_only=True)
        model.close()
    assert f"loading {smol_path.name} with extra buffers off (off: forced off)" in caplog.text


def test_loader_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_llama_model(tmp_path / "missing.gguf")


def test_batched_decode_through_the_loader_exits_cleanly(smol_path: Path) -> None:
    """The regression test for the AMX crash: a 96-token batch in a child process must exit 0 (not SIGSEGV)."""
    result = subprocess.run(
        [sys.executable, "-m", "citer_protocol.llama_check", str(smol_path), "--tokens", "96"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.startswith("96 tokens in ")


def test_check_reports_the_decode_result(smol_path: Path) -> None:
    result = check_batched_decode(smol_path, n_tokens=64)
    assert result.ok and result.returncode == 0
    assert result.detail.startswith("64 tokens in ")


def _weight_buffers(model: Path, setting: str) -> list[str]:
    """The weight-buffer lines of llama.cpp's verbose load log for ``setting``, from a child process."""
    script = (
        "import sys; from citer_protocol.llama_loader import load_llama_model; "
        "load_llama_model(sys.argv[1], extra_buffers=sys.argv[2], verbose=True).close()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(model), setting], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if "model buffer size" in line]


def test_extra_buffers_setting_reaches_llama_cpp(smol_path: Path) -> None:
    """``on`` lets llama.cpp place weights in an AMX or repack buffer where it has one for them; ``off`` never."""
    extra = [line for line in _weight_buffers(smol_path, "on") if "AMX" in line or "REPACK" in line]
    if not extra:
        pytest.skip("llama.cpp has no extra buffer for this model's weights on this CPU: nothing to turn off")
    off = _weight_buffers(smol_path, "off")
    assert off, "llama.cpp's verbose load log names the weight buffers"
    assert not [line for line in off if "AMX" in line or "REPACK" in line], off


def test_unknown_cpu_flags_with_an_amx_build_turn_extra_buffers_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc/cpuinfo (Windows on a Xeon): the AMX kernels might run, so auto stays safe."""
    monkeypatch.delenv(EXTRA_BUFFERS_ENV, raising=False)
    unknown = CpuInfo(model_name="unknown", flags=frozenset())
    assert not choose_buffer_policy(cpu=unknown, build_features=AMX_BUILD).use_extra_buffers
    assert choose_buffer_policy(cpu=unknown, build_features=PORTABLE_BUILD).use_extra_buffers
