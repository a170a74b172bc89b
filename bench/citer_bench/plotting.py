"""One way to draw and save the benchmarks' PNGs, so every plot looks alike and none needs a display."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def saved_axes(path: Path, xlabel: str, ylabel: str, title: str, size: tuple[float, float] = (6, 4)) -> Iterator:
    """Yield matplotlib axes; on exit add grid and legend and write ``path`` (PNG, 120 dpi)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
