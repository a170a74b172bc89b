"""What every benchmark shares: a description of the machine and result files.

Results are JSON with the exact settings and the machine they ran on, so a
number quoted in the README can be traced to the run that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def machine_description() -> dict[str, object]:
    """CPU, cores, memory and library versions: enough to know whether two results are comparable."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    import llama_cpp

    from citer_protocol.llama_loader import CpuInfo, choose_buffer_policy, cpu_flag_summary

    cpu_info = CpuInfo.read()
    return {
        "cpu": cpu,
        "cpu_flags": cpu_flag_summary(cpu_info),
        "llama_buffers": choose_buffer_policy(cpu=cpu_info).describe(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "git_commit": _git_commit(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=RESULTS_DIR.parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_result(name: str, payload: dict[str, object], out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
