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

    def approx_params(self) -> float:
        """Weights of the encoder and MAE decoder blocks, roughly ((4 + 2 x mlp_ratio) x dim^2 per block; a
        SwinV2's stages double the width): a guard against sizes no machine can build, not a count."""
        per_block = lambda dim: (4 + 2 * self.mlp_ratio) * float(dim) ** 2  # noqa: E731
        if self.is_swin:
            encoder = sum(d * per_block(self.embed_dim * 2**i) for i, d in enumerate(self.stage_depths))
        else:
            encoder = self.depth * per_block(self.embed_dim)
        return encoder + self.decoder_depth * 12 * float(self.decoder_dim) ** 2
