"""Writing a figure so that a kill or a second process mid-write leaves either the old file or a whole new one."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.engine.atomic import atomic_write_bytes  # noqa: E402


def save_png_atomic(fig: plt.Figure, out: str | Path, dpi: int = 120) -> Path:
    """Render `fig` to PNG in memory, close it, and replace `out` in one atomic step."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)
