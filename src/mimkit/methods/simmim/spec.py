"""SimMIM's registry entry: a ViT (learned position embeddings) or SwinV2 encoder, 32-px cells masked at 60%."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.methods.simmim.options import SimMIMOptions, check_options
from mimkit.methods.spec import Masking, MethodSpec, mask_generator

if TYPE_CHECKING:
    from mimkit.methods.simmim.model import SimMIM


def build(cfg: Any) -> SimMIM:
    from mimkit.methods.simmim.model import build_simmim
    from mimkit.models.encoder import create_encoder

    return build_simmim(cfg, create_encoder(cfg, fixed_sincos=False), mask_generator(cfg))


SPEC = MethodSpec(
    name="simmim",
    summary="SimMIM: mask tokens in the encoder, linear pixel head, L1 on masked pixels",
    loss_label="SimMIM loss (L1 on masked pixels)",
    eval_inputs="fixed masks",
    build=build,
    options=SimMIMOptions,
    check_options=check_options,
    masking=Masking(0.6, "simmim"),
    fixed_masks=True,
    crop_scale=(0.67, 1.0),
    swin=True,
    beit=True,
)
