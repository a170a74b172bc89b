"""The service's settings file (TOML) and its log format: what an operator keeps in configuration management.

Keys are the ``serve`` flags with underscores (``kv_tokens = 32768``);
unknown keys are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: str | os.PathLike[str], what: str) -> dict:
    """A TOML file as a dict; a missing or broken file is a ValueError that names ``what`` and the path."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"the {what} {path} is not valid TOML: {error}") from None


def load_settings_file(path: str | os.PathLike[str], allowed: set[str]) -> dict[str, object]:
    data = read_toml(path, "settings file")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    return data


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(verbose: bool, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
