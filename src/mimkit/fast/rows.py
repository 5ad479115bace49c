"""The last transformer block, run only for the tokens the loss reads.

A MIM loss reads the last block's output at the masked tokens alone; a class-token-pooled ViT (MoCo v3, DeiT-style
classification) reads the class token alone. In a pre-norm block a token's output depends on the other tokens only
through attention's keys and values, so the last block can compute keys and values for every token but queries,
the output projection and the MLP only for the tokens that are read. The loss and its gradients are the same (up
to float rounding); the work of that block falls by about the share of tokens left unread.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimkit.compat import has_own_hooks
from mimkit.models.encoder import checkpointed, embed_tokens


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens, (B, M) indices in [0, N) -> (B, M, C). On the CPU, one index per row on the flattened
    batch (index_select), faster there than torch.gather with the index expanded over the channels, which reads an
    index per value; on CUDA torch.gather, which was the faster of the two there (docs/performance.md, "H200").
    The indices must be in range: a flattened index is only checked against B * N. A non-contiguous `x` (an
    expanded table) takes torch.gather."""
    b, n, c = x.shape
    if rows.shape[0] != b:
        raise ValueError(f"gather_rows: {rows.shape[0]} rows of indices for {b} sequences")
    if not x.is_contiguous() or x.device.type == "cuda":
        return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, c))
    return index_select_rows(x, rows)


def index_select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """gather_rows as one index_select over the flattened batch (contiguous `x`, indices in range)."""
    b, n, c = x.shape
    flat = (rows + n * torch.arange(b, device=rows.device).unsqueeze(1)).reshape(-1)
    return x.reshape(b * n, c).index_select(0, flat).view(b, rows.shape[1], c)


def masked_rows(mask: torch.Tensor, num_masked: int, offset: int = 0) -> torch.Tensor:
    """(B, L) bool mask with `num_masked` True per row -> (B, num_masked) token indices of the masked ones, in
    ascending order, shifted by `offset` (the prefix tokens). No host synchronisation: the count is known."""
    order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)  # stable: True ones ascending
    return order[:, :num_masked] + offset


def hooked(*modules: nn.Module) -> bool:
    """True when any part of `modules` has a forward or backward hook: a partial run would hide tokens from such a
    hook, or skip it (the partial block reads the qkv projection's weights and never calls that module). Global
    module hooks are not looked at: torch's FLOP counter sets them, and they see the partial run as it is."""
    return any(has_own_hooks(m) for module in modules for m in module.modules())


def runs_on_rows(block: nn.Module) -> bool:
    """True for the plain timm pre-norm Block this module mirrors (an nn.Linear qkv projection: a LoRA or quantised
    one would lose its extra work), with no hooks and no active dropout (which would draw other random numbers
    over fewer rows)."""
    attn = getattr(block, "attn", None)
    if type(block) is not Block or type(attn) is not Attention or getattr(attn, "gate", None) is not None:
        return False
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in block.modules())
    return type(attn.qkv) is nn.Linear and not dropout and not hooked(block)


def block_at_rows(block: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A timm Block's output at token `rows` (B, M) of its input `x` (B, N, C): what `block(x)` gathers there."""
    attn = block.attn
    b, n, _ = x.shape
    m = rows.shape[1]
    dim, heads, head_dim = attn.attn_dim, attn.num_heads, attn.head_dim
    h = block.norm1(x)
    # split, not slices: its backward is one concatenation, where two slices would each fill a full-size zero grad
    weight_q, weight_kv = attn.qkv.weight.split([dim, 2 * dim])
    bias_q, bias_kv = attn.qkv.bias.split([dim, 2 * dim]) if attn.qkv.bias is not None else (None, None)
    q = F.linear(gather_rows(h, rows), weight_q, bias_q)
    kv = F.linear(h, weight_kv, bias_kv)
    q = q.view(b, m, heads, head_dim).transpose(1, 2)
    k, v = kv.view(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        weights = attn.attn_drop((q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1))
        out = weights @ v
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, m, dim))))
    y = gather_rows(x, rows) + block.drop_path1(block.ls1(out))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def last_block_at_rows(
    blocks: nn.ModuleList | list, x: torch.Tensor, rows: torch.Tensor, grad_checkpointing: bool
) -> torch.Tensor:
    """Run every block but the last on all tokens and the last at `rows` only (all of it at all tokens, then
    gathered, when `runs_on_rows` refuses the last block)."""
    if len(blocks) == 0:
        return gather_rows(x, rows)
    x = checkpointed(blocks[:-1], x, grad_checkpointing)
    last = blocks[-1]
    if not runs_on_rows(last):
        return gather_rows(checkpointed([last], x, grad_checkpointing), rows)
    if grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block_at_rows, last, x, rows, use_reentrant=False)
    return block_at_rows(last, x, rows)


def reads_class_token_only(vit: nn.Module) -> bool:
    """True for a timm VisionTransformer pooled by its class token (global_pool='token'), with no hook on the
    model or its block sequence (not called here) or on its final norm and head (which would see one token)."""
    if type(vit) is not VisionTransformer or vit.global_pool != "token" or vit.cls_token is None:
        return False
    if getattr(vit, "attn_pool", None) is not None or has_own_hooks(vit) or has_own_hooks(vit.blocks):
        return False
    return not hooked(vit.norm, vit.fc_norm, vit.head_drop, vit.head)


def class_token_forward(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`vit(images)` for a class-token-pooled timm ViT, with the last block at the class token only (the pooled
    output reads nothing else); any other model runs whole."""
    if not reads_class_token_only(vit):
        return vit(images)
    cls_row = torch.zeros(images.shape[0], 1, dtype=torch.long, device=images.device)
    x = last_block_at_rows(vit.blocks, embed_tokens(vit, images), cls_row, getattr(vit, "grad_checkpointing", False))
    return vit.forward_head(vit.norm(x))
