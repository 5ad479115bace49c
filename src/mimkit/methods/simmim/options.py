"""SimMIM's `method.*` keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimkit.errors import check


@dataclass
class SimMIMOptions:
    # > 0: each target pixel normalised by the mean and variance of its local window of this odd size (the SwinV2
    # SimMIM recipe of the data-scaling paper uses 47); 0: raw (normalised-image) pixels, as the ViT recipe
    target_norm_window: int = 0


def check_options(meth: Any) -> None:
    w = meth.target_norm_window
    check(w == 0 or (w > 1 and w % 2 == 1), f"method.target_norm_window: {w} must be 0 (off) or an odd size > 1")
