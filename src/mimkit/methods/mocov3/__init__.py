"""MoCo v3 for ViT (Chen, Xie, He 2021): the model, its options and its registry entry."""

from mimkit.methods.mocov3.model import MoCoV3, build_mocov3, contrastive_loss, momentum_at
from mimkit.methods.mocov3.options import MoCoV3Options
from mimkit.methods.mocov3.spec import SPEC

__all__ = ["SPEC", "MoCoV3", "MoCoV3Options", "build_mocov3", "contrastive_loss", "momentum_at"]
