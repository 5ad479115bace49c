"""Objectives: one file each. `build_method(cfg)` turns a resolved config into a Method module."""
from __future__ import annotations

from typing import Any

from mimkit.data.masks import MaskGenerator
from mimkit.methods.base import Method
from mimkit.methods.distill import Distill, build_distill
from mimkit.methods.mae import MAE, build_mae
from mimkit.methods.mocov3 import MoCoV3, build_mocov3
from mimkit.methods.simmim import SimMIM, build_simmim
from mimkit.methods.supervised import Supervised, build_supervised
from mimkit.methods.task import TaskModel, build_task
from mimkit.models.encoder import create_encoder

__all__ = ["Method", "Distill", "MAE", "SimMIM", "Supervised", "MoCoV3", "TaskModel", "build_method",
           "build_mask_generator"]


def build_mask_generator(cfg: Any) -> MaskGenerator:
    meth = cfg.method
    return MaskGenerator(meth.mask_type, cfg.data.img_size, cfg.model.patch_size, meth.mask_ratio,
                         meth.mask_patch_size)


def build_method(cfg: Any) -> Method:
    """A fresh Method for a resolved config (see config.resolved), on the fast path unless train.fast_path=false."""
    method = _build(cfg)
    method.fast_path = cfg.train.fast_path
    return method


def _build(cfg: Any) -> Method:
    if cfg.method.name == "supervised":
        if cfg.model.num_classes is None:
            raise ValueError("model.num_classes is unknown: build the data first (it sets it) or set it")
        encoder = create_encoder(cfg, fixed_sincos=False, num_classes=cfg.model.num_classes,
                                 global_pool=cfg.model.global_pool)
        return build_supervised(cfg, encoder)
    if cfg.method.name == "task":
        return build_task(cfg, create_encoder(cfg, fixed_sincos=False, global_pool=cfg.model.global_pool))
    if cfg.method.name == "distill":  # model.* is the student; the teacher is attached by the training entry
        student = create_encoder(cfg, fixed_sincos=True)
        masks = None
        if cfg.distill.mask_ratio > 0:
            meth = cfg.method
            masks = MaskGenerator(meth.mask_type, cfg.data.img_size, cfg.model.patch_size, cfg.distill.mask_ratio,
                                  meth.mask_patch_size)
        return build_distill(cfg, student, masks)
    if cfg.method.name == "mocov3":
        return build_mocov3(cfg, create_encoder(cfg, fixed_sincos=False))
    is_mae = cfg.method.name == "mae"
    encoder = create_encoder(cfg, fixed_sincos=is_mae)
    builder = build_mae if is_mae else build_simmim
    return builder(cfg, encoder, build_mask_generator(cfg))
