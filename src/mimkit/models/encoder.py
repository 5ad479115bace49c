"""The encoder is a stock timm VisionTransformer, so checkpoints stay timm-native and every timm size comes free."""

from __future__ import annotations

from functools import partial
from typing import Any

import timm
import torch
from timm.layers import DropPath
from timm.models.beit import Beit
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimkit.compat import LibraryChanged, vit_pos_embed
from mimkit.models.pos_embed import sincos_2d
from mimkit.models.presets import resolve_model_spec, timm_kwargs


def create_encoder(cfg: Any, fixed_sincos: bool, num_classes: int = 0, global_pool: str = "token") -> nn.Module:
    """Build the run's timm ViT (no classifier unless `num_classes`). MAE fixes its position embedding to 2-D
    sin-cos. `global_pool='avg'` is timm's mean of patch tokens + fc_norm (MAE fine-tuning); 'token' the class
    token after the final norm."""
    spec = resolve_model_spec(cfg.model, cfg.data.img_size)
    kwargs = {**timm_kwargs(cfg), "num_classes": num_classes}
    if spec.is_swin:  # SwinV2: no class token, average pooling, relative position bias (no absolute embedding)
        swin = timm.create_model(
            spec.timm_name, pretrained=False, global_pool="avg", drop_path_rate=cfg.model.drop_path, **kwargs
        )
        swin.set_grad_checkpointing(cfg.train.grad_checkpointing)
        return swin
    encoder = timm.create_model(
        spec.timm_name,
        pretrained=False,
        global_pool=global_pool,
        drop_path_rate=cfg.model.drop_path,
        norm_layer=partial(nn.LayerNorm, eps=cfg.model.norm_eps),
        **kwargs,
    )
    if cfg.train.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    if cfg.model.drop_path_rule != "linear":
        set_drop_path_rates(
            encoder, drop_path_rates(cfg.model.drop_path, len(encoder.blocks), cfg.model.drop_path_rule)
        )
    if cfg.model.init_scheme == "mae" and not is_beit(encoder):
        init_like_mae(encoder)
    if fixed_sincos and encoder.pos_embed is not None:  # the BEiT family has no absolute position embedding
        grid = cfg.data.img_size // cfg.model.patch_size
        encoder.pos_embed.data.copy_(sincos_2d(encoder.embed_dim, grid, cls_token=True).unsqueeze(0))
        encoder.pos_embed.requires_grad_(False)
    return encoder


def drop_path_rates(rate: float, depth: int, rule: str) -> list[float]:
    """Per-block stochastic-depth rates: `linear` as timm builds them, `constant_but_last` as TinyMIM's students
    (the rate everywhere but the last block, which has none)."""
    if rule == "linear":
        return [rate * i / max(depth - 1, 1) for i in range(depth)]
    if rule == "constant_but_last":
        return [rate] * (depth - 1) + [0.0]
    raise ValueError(f"unknown drop-path rule '{rule}'")


def set_drop_path_rates(vit: nn.Module, rates: list[float]) -> None:
    """Give each timm ViT block its own drop-path rate (timm's Block: drop_path1 after attention, drop_path2 after
    the MLP, DropPath when the rate is positive, Identity otherwise)."""
    for block, rate in zip(vit.blocks, rates, strict=True):
        for name in ("drop_path1", "drop_path2"):
            if not hasattr(block, name):
                raise LibraryChanged(
                    f"timm {timm.__version__}: ViT blocks have no '{name}'; mimkit sets drop-path "
                    "rates per block through it"
                )
            setattr(block, name, DropPath(rate) if rate > 0 else nn.Identity())


def is_beit(vit: nn.Module) -> bool:
    """timm's BEiT (model.family=beit): blocks take the shared relative position bias; no norm_pre or patch_drop."""
    return isinstance(vit, Beit)


def qkv_bias(attn: nn.Module) -> torch.Tensor | None:
    """The fused q/k/v projection's bias of a timm attention module: a ViT's `qkv.bias` (or None), or for the BEiT
    family its separate q and v biases around a zero k bias."""
    if getattr(attn, "q_bias", None) is not None:
        return torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
    return attn.qkv.bias


def embed_tokens(
    vit: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> torch.Tensor:
    """Patch embedding (masked patches replaced by `mask_token`, SimMIM-style), prefix tokens and position
    embedding, pre-norm: the input of block 0."""
    x = vit.patch_embed(images)
    if mask is not None:
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + mask_token.to(x.dtype) * w
    if is_beit(vit):  # Beit.forward_features' steps
        x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return vit.pos_drop(x if vit.pos_embed is None else x + vit.pos_embed)
    x = vit_pos_embed(vit, x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def run_blocks(vit: nn.Module, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Blocks `start:stop` of a timm ViT. With `vit.grad_checkpointing` (train.grad_checkpointing) each block's
    activations are recomputed in the backward pass instead of stored: about one more forward of compute for
    memory that no longer grows with depth."""
    extra = {}
    if is_beit(vit) and vit.rel_pos_bias is not None:  # one relative position bias, shared by every block
        extra["shared_rel_pos_bias"] = vit.rel_pos_bias()
    return checkpointed(vit.blocks[start:stop], x, getattr(vit, "grad_checkpointing", False), **extra)


def checkpointed(blocks: Any, x: torch.Tensor, enabled: bool, **kwargs: Any) -> torch.Tensor:
    """Run `blocks` in order (each called with `kwargs`), under activation checkpointing when `enabled` and
    gradients are on."""
    use = enabled and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False, **kwargs) if use else block(x, **kwargs)
    return x


def grid_size(encoder: nn.Module) -> tuple[int, int]:
    return tuple(encoder.patch_embed.grid_size)


def patch_size(encoder: nn.Module) -> int:
    return encoder.patch_embed.patch_size[0]


def in_chans(encoder: nn.Module) -> int:
    return encoder.patch_embed.proj.in_channels


def init_mae_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears, unit LayerNorms (applied with `module.apply`)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_like_mae(encoder: nn.Module) -> None:
    """A timm ViT initialised as MAE initialises its encoder (model.init_scheme=mae); the position embedding gets
    MAE's 2-D sin-cos values but stays trainable. A classifier head keeps timm's initialisation, as it does when
    a pretrained encoder is fine-tuned."""
    for name, child in encoder.named_children():
        if name != "head":
            child.apply(init_mae_weights)
    init_patch_embed_like_linear(encoder)
    if getattr(encoder, "cls_token", None) is not None:
        nn.init.normal_(encoder.cls_token, std=0.02)
    if encoder.pos_embed is not None:
        table = sincos_2d(encoder.embed_dim, grid_size(encoder)[0], cls_token=encoder.num_prefix_tokens == 1)
        encoder.pos_embed.data.copy_(table.unsqueeze(0))


def init_patch_embed_like_linear(encoder: nn.Module) -> None:
    weight = encoder.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) in MAE's (row, col, channel) order."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def channel_major_patches(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C*p*p) in the (channel, row, col) order of a patch-embedding conv's flattened weight
    and of the channels that PixelShuffle reads a 1x1 conv's output in."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int | None = None) -> torch.Tensor:
    """Inverse of `patchify`; h and w are in patches."""
    w = h if w is None else w
    b = x.shape[0]
    x = x.reshape(b, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, c, h * p, w * p)
