"""Objectives: one file each. `build_method(cfg)` turns a resolved config into a Method module."""
from __future__ import annotations

from typing import Any

from mimkit.data.masks import MaskGenerator
from mimkit.methods.base import Method
from mimkit.methods.mae import MAE, build_mae
from mimkit.methods.simmim import SimMIM, build_simmim
from mimkit.models.encoder import create_encoder

__all__ = ["Method", "MAE", "SimMIM", "build_method", "build_mask_generator"]


def build_mask_generator(cfg: Any) -> MaskGenerator:
    meth = cfg.method
    return MaskGenerator(meth.mask_type, cfg.data.img_size, cfg.model.patch_size, meth.mask_ratio,
                         meth.mask_patch_size)


def build_method(cfg: Any) -> Method:
    """A fresh Method for a resolved config (see config.resolved)."""
    is_mae = cfg.method.name == "mae"
    encoder = create_encoder(cfg, fixed_sincos=is_mae)
    builder = build_mae if is_mae else build_simmim
    return builder(cfg, encoder, build_mask_generator(cfg))
