"""MAE's `method.*` keys, with the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MAEOptions:
    norm_pix: bool = True  # MAE: per-patch normalised pixel targets
