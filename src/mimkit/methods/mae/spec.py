"""MAE's registry entry: a ViT encoder with fixed 2-D sin-cos position embeddings, random masking of 75%."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.methods.mae.options import MAEOptions
from mimkit.methods.spec import Masking, MethodSpec, mask_generator

if TYPE_CHECKING:
    from mimkit.methods.mae.model import MAE


def build(cfg: Any) -> MAE:
    from mimkit.methods.mae.model import build_mae
    from mimkit.models.encoder import create_encoder

    return build_mae(cfg, create_encoder(cfg, fixed_sincos=True), mask_generator(cfg))


SPEC = MethodSpec(
    name="mae",
    summary="MAE: visible-patch encoder, light decoder, normalised-pixel MSE on masked patches",
    loss_label="MAE loss (MSE on masked patches)",
    eval_inputs="fixed masks",
    build=build,
    options=MAEOptions,
    masking=Masking(0.75, "random"),
    fixed_masks=True,
    crop_scale=(0.2, 1.0),
)
