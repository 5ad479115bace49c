"""Named model sizes: small presets for small images (a scaling study fits on a CPU) and any timm `vit_*` name."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from mimkit.errors import ConfigError
from mimkit.models.arch import ModelSpec
from mimkit.models.swin import is_swin_name, resolve_swin_spec, swin_timm_kwargs

# The timm architecture every preset is built from; presets only change its sizes, so exported weights load into
# `timm.create_model(PRESET_TIMM_NAME, **kwargs)` with the kwargs mimkit prints.
PRESET_TIMM_NAME = "vit_tiny_patch16_224"
# model.family=beit: the same sizes built as timm's BEiT, set up as SimMIM's published ViT
BEIT_TIMM_NAME = "beit_base_patch16_224"
SIMMIM_VIT_KWARGS = dict(use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True, init_values=0.1)


def _preset(embed_dim: int, depth: int, heads: int, dec_dim: int, dec_depth: int, dec_heads: int) -> ModelSpec:
    return ModelSpec(PRESET_TIMM_NAME, 4, embed_dim, depth, heads, 4.0, dec_dim, dec_depth, dec_heads)


# Patch 4 for 28-64 px images. Encoder parameters span about 100x (femto 0.09M ... small 7.9M).
PRESETS: dict[str, ModelSpec] = {
    "mim_vit_femto": _preset(48, 3, 3, 64, 2, 4),
    "mim_vit_pico": _preset(96, 6, 3, 64, 2, 4),
    "mim_vit_nano": _preset(128, 6, 4, 96, 2, 4),
    "mim_vit_tiny": _preset(192, 8, 3, 128, 3, 4),
    "mim_vit_small": _preset(256, 10, 8, 128, 4, 4),
}

# MAE's ImageNet decoder: 8 blocks of width 512 with 16 heads.
IMAGENET_DECODER = dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)


@lru_cache(maxsize=64)
def _timm_arch(name: str) -> dict[str, Any]:
    """Read the sizes of a timm ViT without allocating its weights (meta device)."""
    import timm
    import torch

    # timm ViTs, and DeiT (the supervised baseline of the MIM papers; its distilled variants add a second token)
    if (
        not name.startswith(("vit_", "deit_"))
        or "distilled" in name
        or name not in timm.list_models(["vit_*", "deit_*"])
    ):
        known = ", ".join(sorted(PRESETS))
        raise ConfigError(
            f"model.name: '{name}' is neither a mimkit preset ({known}) nor a timm ViT name "
            f"(any of `timm.list_models('vit_*')` or a non-distilled deit_*, e.g. vit_base_patch16_224)"
        )
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if (
        getattr(model, "cls_token", None) is None
        or getattr(model, "num_reg_tokens", 0)
        or getattr(model, "no_embed_class", False)
        or model.pos_embed is None
    ):
        raise ConfigError(
            f"model.name: '{name}' is a timm ViT without a plain class token + absolute position "
            "embedding; mimkit's MAE/SimMIM wrappers need one (e.g. vit_base_patch16_224)"
        )
    block = model.blocks[0]
    return dict(
        patch_size=model.patch_embed.patch_size[0],
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
    )


MAX_PARAMS = 5e10  # SwinV2-G has 3e9; a size beyond this is a typo, refused before anything is allocated


def resolve_model_spec(model_cfg: Any, img_size: int) -> ModelSpec:
    """Preset or timm defaults, then the config's explicit overrides (patch_size, embed_dim, ...)."""
    name = model_cfg.name
    if is_swin_name(name):
        return resolve_swin_spec(model_cfg, img_size)
    for key in ("stage_depths", "stage_heads", "window_size"):
        if getattr(model_cfg, key, None) is not None:
            raise ConfigError(f"model.{key} is a SwinV2 setting; '{name}' is a ViT (leave it unset)")
    if name in PRESETS:
        spec = PRESETS[name]
    else:
        spec = ModelSpec(timm_name=name, **_timm_arch(name), **IMAGENET_DECODER)
    overrides = {
        f.name: getattr(model_cfg, f.name)
        for f in dataclasses.fields(ModelSpec)
        if f.name != "timm_name" and getattr(model_cfg, f.name, None) is not None
    }
    for key, value in overrides.items():
        if not value > 0:  # also catches NaN
            raise ConfigError(f"model.{key}: {value} must be positive")
    spec = dataclasses.replace(spec, **overrides)
    if getattr(model_cfg, "family", "vit") == "beit":
        spec = dataclasses.replace(spec, timm_name=BEIT_TIMM_NAME)
    if spec.approx_params() > MAX_PARAMS:
        raise ConfigError(
            f"model: about {spec.approx_params():.2g} parameters (model.embed_dim {spec.embed_dim}, model.depth "
            f"{spec.depth}, model.mlp_ratio {spec.mlp_ratio:g}, model.decoder_dim {spec.decoder_dim}, "
            f"model.decoder_depth {spec.decoder_depth}), more than the {MAX_PARAMS:.0e} any machine here can hold"
        )
    if spec.decoder_dim % spec.decoder_heads:
        raise ConfigError(
            f"model.decoder_heads: {spec.decoder_heads} does not divide model.decoder_dim {spec.decoder_dim}"
        )
    return spec


def timm_kwargs(cfg: Any) -> dict[str, Any]:
    """The `timm.create_model` keyword arguments that rebuild this run's encoder (no classifier head)."""
    m, d = cfg.model, cfg.data
    if getattr(m, "stage_depths", None) is not None:
        return swin_timm_kwargs(cfg)
    kwargs = dict(
        img_size=d.img_size,
        patch_size=m.patch_size,
        in_chans=d.in_chans,
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        num_classes=0,
    )
    if getattr(m, "family", "vit") == "beit":
        kwargs.update(SIMMIM_VIT_KWARGS)
    return kwargs
