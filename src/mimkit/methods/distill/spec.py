"""TinyMIM distillation's registry entry: model.* is the student; the teacher (distill.teacher) is resolved, checked
and attached by the training entry (see teacher.py), so the method needs a teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.methods.distill.options import validate
from mimkit.methods.spec import MethodSpec, mask_generator

if TYPE_CHECKING:
    from mimkit.methods.distill.model import Distill


def build(cfg: Any) -> Distill:
    from mimkit.methods.distill.model import build_distill
    from mimkit.models.encoder import create_encoder

    student = create_encoder(cfg, fixed_sincos=True)
    masks = mask_generator(cfg, ratio=cfg.distill.mask_ratio) if cfg.distill.mask_ratio > 0 else None
    return build_distill(cfg, student, masks)


SPEC = MethodSpec(
    name="distill",
    summary="TinyMIM: distil a frozen teacher's Q-K / V-V relations, features or class token",
    loss_label="distillation loss (student vs teacher targets)",
    build=build,
    validate=validate,
    needs_teacher=True,
    beit=True,
)
