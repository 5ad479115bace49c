"""MoCo v3's registry entry: two augmented views per image; evaluated by the contrastive loss between two fixed
views."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimkit.methods.mocov3.options import MoCoV3Options, check_options
from mimkit.methods.spec import MethodSpec

if TYPE_CHECKING:
    from mimkit.methods.mocov3.model import MoCoV3


def build(cfg: Any) -> MoCoV3:
    from mimkit.methods.mocov3.model import build_mocov3, freeze_random_patch_projection
    from mimkit.models.encoder import create_encoder

    encoder = create_encoder(cfg, fixed_sincos=cfg.method.moco_fixed_pos_embed)
    if cfg.method.moco_frozen_patch_embed:
        freeze_random_patch_projection(encoder)
    return build_mocov3(cfg, encoder)


def evaluators(cfg: Any, data: Any, env: Any, autocast) -> tuple[dict[str, Any], tuple]:
    from mimkit.data.transforms import train_augment
    from mimkit.heldout import loss_evaluators

    return loss_evaluators(cfg, data, env, autocast, two_views=train_augment(cfg))


SPEC = MethodSpec(
    name="mocov3",
    summary="MoCo v3: the contrastive baseline (momentum encoder, projector and predictor MLPs)",
    loss_label="MoCo v3 contrastive loss (InfoNCE x 2T)",
    eval_inputs="fixed views",
    build=build,
    options=MoCoV3Options,
    check_options=check_options,
    evaluators=evaluators,
    views=2,
)
