"""Where citer-edge keeps what it learns and counts between runs, and how it writes it safely.

The share controller's learned cut (``routing/``) and the daily cloud budget
(``budget/``) live under the user's data directory (``CITER_EDGE_STATE_DIR``
overrides it). Several ``citer-edge`` processes may run at once, so files are
replaced atomically (a reader never sees half a file) and read-modify-write
cycles hold an advisory lock (no update is lost).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from platformdirs import user_data_dir

log = logging.getLogger(__name__)

STATE_ENV = "CITER_EDGE_STATE_DIR"


def state_dir() -> Path:
    """The folder for state that outlives a run (``CITER_EDGE_STATE_DIR``, else the user data dir)."""
    return Path(os.environ.get(STATE_ENV) or user_data_dir("citer-edge"))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a damaged file is not fatal)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable state file %s (%s)", path, error)
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock for a read-modify-write of ``path`` (a ``.lock`` file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
