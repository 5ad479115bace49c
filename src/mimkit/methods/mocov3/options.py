"""MoCo v3's `method.*` keys, with the paper's ViT defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mimkit.errors import check


@dataclass
class MoCoV3Options:
    moco_temperature: float = 0.2
    moco_momentum: float = 0.99  # start of the momentum schedule; rises to 1 by a half cosine
    moco_dim: int = 256  # projector output
    moco_mlp_dim: int = 4096  # projector / predictor hidden width
    # the official ViT stability tricks (Chen et al. 2021, sec. 4 and vits.py): a fixed 2-D sin-cos position
    # embedding, and a random patch projection (Xavier-uniform over 3*p*p inputs + width outputs) that is frozen
    moco_fixed_pos_embed: bool = True
    moco_frozen_patch_embed: bool = True


def check_options(meth: Any) -> None:
    check(meth.moco_temperature > 0, f"method.moco_temperature: {meth.moco_temperature} must be positive")
    check(0 <= meth.moco_momentum <= 1, f"method.moco_momentum: {meth.moco_momentum} must be in [0, 1]")
    check(meth.moco_dim > 0 and meth.moco_mlp_dim > 0, "method.moco_dim and method.moco_mlp_dim must be positive")
