"""SwinV2 encoders (timm `swinv2_*`), the backbone of the data-scaling paper, for SimMIM and fine-tuning.

SimMIM on Swin replaces masked patch embeddings by a mask token right after the patch embedding (before any
window attention), runs the hierarchical stages, and predicts pixels from the final-stride feature map. Presets
`mim_swinv2_*` are small enough for CPU studies on 32 px images (patch 4, three stages, window 4, final stride
16); the paper's S/B/L/H/giant sizes are recipes (simmim_swinv2_*_in1k).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mimkit.errors import ConfigError
from mimkit.models.arch import ModelSpec

if TYPE_CHECKING:  # the presets and their checks are read by the config, before torch is imported
    import torch
    from torch import nn

SWIN_TIMM_NAME = "swinv2_base_window12_192"  # the timm architecture the presets (and H/giant) are built from


def _swin(embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...], patch: int = 4, window: int = 4):
    return ModelSpec(
        SWIN_TIMM_NAME, patch, embed_dim, sum(depths), heads[0], 4.0, None, None, None, depths, heads, window
    )  # no MAE decoder: SimMIM's linear head


# CPU presets: 32 px input, patch 4 -> 8x8 tokens, three stages at 8, 4, 2 (final stride 16), window 4 (shifted
# windows in the first stage), head dim 24-32.
# The data-scaling paper's H and giant (C = 352 / 448, depths 2-2-18-2, head dim 32) are not timm models.
SWIN_PRESETS = {
    "mim_swinv2_femto": _swin(24, (1, 1, 1), (1, 2, 4)),
    "mim_swinv2_pico": _swin(32, (2, 2, 2), (1, 2, 4)),
    "mim_swinv2_nano": _swin(48, (2, 2, 4), (2, 4, 8)),
    "mim_swinv2_huge": _swin(352, (2, 2, 18, 2), (11, 22, 44, 88), patch=4, window=12),
    "mim_swinv2_giant": _swin(448, (2, 2, 18, 2), (14, 28, 56, 112), patch=4, window=12),
}


def is_swin_name(name: str) -> bool:
    return name in SWIN_PRESETS or (name.startswith("swinv2_") and not name.startswith("swinv2_cr"))


@lru_cache(maxsize=32)
def _timm_swin_arch(name: str) -> dict[str, Any]:
    import timm
    import torch

    if name not in timm.list_models("swinv2_*"):
        raise ConfigError(
            f"model.name: '{name}' is not a timm SwinV2 (timm.list_models('swinv2_*'), not the "
            "swinv2_cr_* variants) nor a preset (" + ", ".join(SWIN_PRESETS) + ")"
        )
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    stages = list(model.layers)
    return dict(
        patch_size=model.patch_embed.patch_size[0],
        embed_dim=model.embed_dim,
        stage_depths=tuple(len(s.blocks) for s in stages),
        stage_heads=tuple(s.blocks[0].attn.num_heads for s in stages),
        window_size=stages[0].blocks[0].window_size[0],
        mlp_ratio=stages[0].blocks[0].mlp.fc1.out_features / model.embed_dim,
    )


def resolve_swin_spec(model_cfg: Any, img_size: int):
    """A SwinV2 preset or timm name with the config's overrides; checks that the image divides into the stages."""
    name = model_cfg.name
    if name in SWIN_PRESETS:
        spec = SWIN_PRESETS[name]
    else:
        arch = _timm_swin_arch(name)
        spec = ModelSpec(
            name,
            arch["patch_size"],
            arch["embed_dim"],
            sum(arch["stage_depths"]),
            arch["stage_heads"][0],
            arch["mlp_ratio"],
            None,
            None,
            None,
            arch["stage_depths"],
            arch["stage_heads"],
            arch["window_size"],
        )
    over = {}
    for key in ("patch_size", "embed_dim", "mlp_ratio", "window_size"):
        value = getattr(model_cfg, key, None)
        if value is not None:
            if not value > 0:
                raise ConfigError(f"model.{key}: {value} must be positive")
            over[key] = value
    for key in ("stage_depths", "stage_heads"):
        value = getattr(model_cfg, key, None)
        if value is not None:
            if not value or any(v < 1 for v in value):
                raise ConfigError(f"model.{key}: {value} must be a non-empty list of positive integers")
            over[key] = tuple(value)
    spec = dataclasses.replace(spec, **over)
    depths, heads = spec.stage_depths, spec.stage_heads
    if len(depths) != len(heads):
        raise ConfigError(
            f"model.stage_depths {list(depths)} and model.stage_heads {list(heads)} need one entry per stage"
        )
    spec = dataclasses.replace(spec, depth=sum(depths), num_heads=heads[0])
    for key, derived in (("depth", spec.depth), ("num_heads", spec.num_heads)):
        value = getattr(model_cfg, key, None)
        if value is not None and value != derived:
            raise ConfigError(
                f"model.{key}={value}: a SwinV2 has per-stage sizes; set model.stage_depths / model.stage_heads instead"
            )
    for i, h in enumerate(heads):
        width = spec.embed_dim * 2**i
        if width % h:
            raise ConfigError(f"model.stage_heads: {h} heads do not divide stage {i + 1}'s width {width}")
    stride = spec.patch_size * 2 ** (len(depths) - 1)
    if img_size % stride:
        raise ConfigError(
            f"data.img_size: {img_size} must be a multiple of the SwinV2's final stride {stride} "
            f"(patch {spec.patch_size} x 2^{len(depths) - 1} stage downsamplings)"
        )
    return spec


def swin_arch(depths: Any, heads: Any, window_size: int) -> dict[str, Any]:
    """The model.* keys that pin a SwinV2's stages (for a weights source's architecture)."""
    return dict(
        depth=sum(depths),
        num_heads=heads[0],
        stage_depths=list(depths),
        stage_heads=list(heads),
        window_size=window_size,
    )


def swin_timm_kwargs(cfg: Any) -> dict[str, Any]:
    m, d = cfg.model, cfg.data
    return dict(
        img_size=d.img_size,
        patch_size=m.patch_size,
        in_chans=d.in_chans,
        embed_dim=m.embed_dim,
        depths=tuple(m.stage_depths),
        num_heads=tuple(m.stage_heads),
        window_size=m.window_size,
        mlp_ratio=m.mlp_ratio,
        num_classes=0,
        **({"pretrained_window_sizes": tuple(m.pretrained_window_sizes)} if m.pretrained_window_sizes else {}),
    )


def stage_windows(img_size: int, patch_size: int, window_size: int, stages: int) -> list[int]:
    """The window each SwinV2 stage attends in: the configured one, or the whole feature map when that is smaller
    (timm's rule), the feature map halving from stage to stage."""
    side = img_size // patch_size
    return [min(window_size, side // 2**i) for i in range(stages)]


def is_swin_encoder(encoder: nn.Module) -> bool:
    return hasattr(encoder, "layers") and not hasattr(encoder, "blocks")


def final_stride(encoder: nn.Module) -> int:
    """Pixels per cell of the last stage's feature map: patch size x 2 per downsampling (ViT: the patch size)."""
    if is_swin_encoder(encoder):
        return encoder.patch_embed.patch_size[0] * 2 ** (len(encoder.layers) - 1)
    return encoder.patch_embed.patch_size[0]


def swin_masked_features(
    encoder: nn.Module, imgs: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """(B, C_final, H/stride, W/stride): patch embedding with masked patches replaced by `mask_token`, then every
    stage and the final norm (timm's SwinV2 works channels-last)."""
    x = encoder.patch_embed(imgs)  # (B, h, w, C)
    b, h, w, _ = x.shape
    m = mask.reshape(b, h, w, 1).to(x.dtype)
    x = x * (1 - m) + mask_token.to(x.dtype).reshape(1, 1, 1, -1) * m
    x = encoder.norm(encoder.layers(x))
    return x.permute(0, 3, 1, 2)


def swin_layer_id(name: str, stage_depths: list[int]) -> int:
    """Layer index for layer-wise lr decay: patch embedding 0, block j of stage i its running index + 1, a stage's
    patch merging (timm runs it at the start of the stage) with the previous stage's last block as in the official
    SimMIM/Swin code (which runs it at the end of that stage), the final norm and head L+1."""
    total = sum(stage_depths)
    if name.startswith(("patch_embed", "absolute_pos_embed")):
        return 0
    if name.startswith("layers."):
        parts = name.split(".")
        stage = int(parts[1])
        offset = sum(stage_depths[:stage])
        if parts[2] == "blocks":
            return offset + int(parts[3]) + 1
        return offset  # downsample: the previous stage's last block
    return total + 1
