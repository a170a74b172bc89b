"""The repository stands on its own: the README's layout table names files that exist, and no file cites
material that is not in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Material that lives outside the repository (written in pieces so this file does not cite it itself).
OUTSIDE_REFERENCES = ("DESIGN" + ".md", "../" + "shared/")


def _layout_rows() -> list[tuple[str, list[str]]]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            folder = cells[0].strip("`")
            names = re.findall(r"`([\w./-]+\.(?:py|md)|[\w-]+/)`", cells[1])
            rows.append((folder, names))
    return rows


def test_readme_layout_table_names_files_that_exist() -> None:
    rows = _layout_rows()
    assert len(rows) >= 6, "the layout table was not found"
    missing = [f"{folder}{name}" for folder, names in rows for name in names if not (ROOT / folder / name).exists()]
    assert not missing, missing


def test_readme_layout_table_lists_every_module() -> None:
    listed = {f"{folder}{name}" for folder, names in _layout_rows() for name in names}
    packages = ("protos/citer_protocol/", "client/citer_edge/", "cloud/citer_cloud/", "export/citer_export/",
                "bench/citer_bench/")  # fmt: skip
    for package in packages:
        modules = {
            f"{package}{path.relative_to(ROOT / package)}"
            for path in (ROOT / package).rglob("*.py")
            if path.name not in ("__init__.py", "__main__.py") and "_pb2" not in path.name
        }
        assert modules <= listed, sorted(modules - listed)


def test_no_tracked_file_cites_a_design_file_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".proto"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if any(reference in text for reference in OUTSIDE_REFERENCES):
            offenders.append(name)
    assert not offenders, offenders
