"""A spawned local cloud never outlives the program that spawned it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SPAWNER = """
import sys, time
from citer_edge.cloud.local import LocalCloud
cloud = LocalCloud(sys.argv[1]).start()
print(cloud._process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its parent's bookkeeping is left


def test_local_cloud_stops_when_its_parent_is_killed(smol_path: Path) -> None:
    """Regression: `citer-bench quality` killed mid-sweep left its 1.5B server running and holding both cores."""
    parent = subprocess.Popen([sys.executable, "-c", SPAWNER, str(smol_path)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()  # no cleanup runs in the parent: only the OS closing its pipes can tell the child
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the cloud server outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, 9)
