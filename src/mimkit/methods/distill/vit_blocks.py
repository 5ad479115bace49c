"""Running a timm ViT part of the way: the tokens entering block L, and that block's q, k, v split into any head
count. Distillation reads relations from one block and may stop the forward pass there (TinyMIM does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.methods.distill.relations import split_heads
from mimkit.models.encoder import qkv_bias


def block_index(layer: int | None, depth: int, what: str) -> int:
    """1-based layer (negative counts from the end, None = last) -> 0-based block index, checked."""
    if layer is None:
        return depth - 1
    if layer == 0 or not -depth <= layer <= depth:
        raise ConfigError(
            f"{what}={layer} is out of range for a model with {depth} blocks: use 1..{depth} "
            f"(or -1..-{depth} from the end)"
        )
    return layer - 1 if layer > 0 else depth + layer


def block_qkv(block: nn.Module, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a timm block for its input `x`, each (batch, heads, tokens, dim / heads). `heads` may differ from
    the block's own head count: the same projections, split differently (q/k norms are not applied then, since
    they are shaped for the block's own head dim)."""
    attn = block.attn
    qkv = F.linear(block.norm1(x), attn.qkv.weight, qkv_bias(attn))  # the BEiT family included
    q, k, v = qkv.chunk(3, dim=-1)
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    if heads == attn.num_heads and hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


def final_tokens(vit: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    """Tokens after block `index`, through the final norm when it is the last block (what timm's
    forward_features returns)."""
    return vit.norm(x) if index == len(vit.blocks) - 1 else x
