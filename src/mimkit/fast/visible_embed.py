"""MAE's patch embedding at the visible patches only.

A ViT's patch embedding is a convolution whose kernel and stride are the patch: each patch's token depends on that
patch alone. MAE's encoder reads the visible patches only (25% of them), so embedding the others is wasted: the
official code and HuggingFace's embed every patch, then gather the visible tokens. Here the visible patches are
gathered from the image first and embedded as a linear layer with the conv's weight. Same tokens, same gradients
(up to float rounding), a quarter of the embedding's work, and no copy of the embedding's gradient into the conv's
layout in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import nn

from mimkit.fast.rows import gather_rows, hooked
from mimkit.models.encoder import channel_major_patches


def embeds_patches_alone(vit: nn.Module, images: torch.Tensor) -> bool:
    """True for timm's plain PatchEmbed: a conv with kernel = stride = a square patch, no padding, at the model's
    image size, flattened to tokens, with no hook anywhere in it (a hook expects to see every patch)."""
    embed = getattr(vit, "patch_embed", None)
    if type(embed) is not PatchEmbed or hooked(embed) or embed.grid_size is None:
        return False
    conv = embed.proj
    patch = tuple(embed.patch_size)
    return (
        patch[0] == patch[1]
        and type(conv) is nn.Conv2d
        and tuple(conv.kernel_size) == patch
        and tuple(conv.stride) == patch
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and embed.flatten
        and not embed.dynamic_img_pad
        and tuple(images.shape[-2:]) == tuple(g * p for g, p in zip(embed.grid_size, patch))
    )


def embed_patches_at(vit: nn.Module, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images, (B, K) patch indices -> (B, K, D): `vit.patch_embed(images)` gathered at `ids`, without
    embedding the other patches. Check `embeds_patches_alone` first."""
    embed = vit.patch_embed
    patches = gather_rows(channel_major_patches(images, embed.patch_size[0]), ids)
    weight = embed.proj.weight
    return embed.norm(F.linear(patches, weight.reshape(weight.shape[0], -1), embed.proj.bias))
