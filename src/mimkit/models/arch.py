"""ModelSpec: the architecture a `model:` section resolves to (presets.py for ViTs, swin.py for SwinV2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build encoder + MAE decoder; `timm_name` is the timm architecture to instantiate."""

    timm_name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    # SwinV2 only (None for ViTs): per-stage depths and heads, attention window; `depth` is then the total number
    # of blocks and `num_heads` / `embed_dim` those of the first stage.
    stage_depths: tuple[int, ...] | None = None
    stage_heads: tuple[int, ...] | None = None
    window_size: int | None = None

    @property
    def is_swin(self) -> bool:
        return self.stage_depths is not None
