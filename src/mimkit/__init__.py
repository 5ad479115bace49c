"""mimkit: masked image modeling research toolkit (SimMIM and MAE pretraining, analysis, distillation)."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a trained Method (MAE or SimMIM module) from a run directory or checkpoint folder."""
    from mimkit.api import load as _load

    return _load(path, device)


__all__ = ["load", "__version__"]
