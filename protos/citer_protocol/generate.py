"""Regenerates the Python stubs from ``citer.proto`` so they never drift from the contract.

Run ``python protos/citer_protocol/generate.py``; a test regenerates into a temporary
folder and diffs against the committed stubs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = Path("citer_protocol/v1/citer.proto")


def generate_stubs(out_dir: Path) -> list[Path]:
    """Write ``citer_pb2.py``, ``citer_pb2.pyi`` and ``citer_pb2_grpc.py`` under ``out_dir``."""
    from grpc_tools import protoc  # only needed to regenerate: an extra, not a runtime dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
    stub_dir = out_dir / PROTO_FILE.parent
    return sorted(stub_dir.glob("citer_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="root to write citer_protocol/v1/ stubs under")
    for path in generate_stubs(parser.parse_args().out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
