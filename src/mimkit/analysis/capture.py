"""Attention probabilities and block outputs of a timm ViT, layer by layer, during an ordinary forward pass.

timm's attention normally runs fused (`F.scaled_dot_product_attention`), which never forms the attention matrix.
The default `recompute` mode therefore hooks each block's attention module and recomputes softmax(QK^T / sqrt(d))
from the module's own input with its `qkv` projection, q/k norms and scale, so the forward pass itself is left
untouched. The `unfused` mode instead switches the fused path off during capture and reads the probabilities timm
computes (the output of `attn_drop`); tests check that the two agree.

Each layer's tensor is handed to a callback as soon as it exists and is not kept, so memory holds one layer's
attention at a time, never all layers of all images.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.models.encoder import qkv_bias

AttentionCallback = Callable[[int, torch.Tensor], None]


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm ViT, each with a timm-style `attn` module (fused qkv projection)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ConfigError(f"analysis needs a timm VisionTransformer with .blocks; got {type(model).__name__}")
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not isinstance(getattr(attn, "qkv", None), nn.Linear) or not hasattr(attn, "num_heads"):
            raise ConfigError(
                f"block {i} of {type(model).__name__} has no timm attention with a fused qkv "
                f"projection ({type(attn).__name__}); mimkit analyses timm ViT blocks"
            )
    return list(blocks)


def attention_from_input(
    attn: nn.Module, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None, log: bool = False
) -> torch.Tensor:
    """(batch, heads, tokens, tokens) float32 softmax(q k^T * scale + relative position bias) of a timm attention
    module for its input x: a ViT's, or a BEiT's (q and v biases, no k bias; the bias shared by the blocks, which
    the block hands its attention). `log`: the log-softmax instead, exact where the softmax underflows to 0."""
    b, n, _ = x.shape
    heads = attn.num_heads
    bias = qkv_bias(attn)
    if getattr(attn, "relative_position_bias_table", None) is not None:
        raise ConfigError(
            "analysis: a per-block relative position bias (BEiT's use_rel_pos_bias) is not supported; SimMIM's "
            "ViT (model.family=beit) shares one bias across blocks, which is"
        )
    qkv = F.linear(x.float(), attn.qkv.weight.float(), None if bias is None else bias.float())
    head_dim = qkv.shape[-1] // 3 // heads
    q, k, _ = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    scale = getattr(attn, "scale", head_dim**-0.5)
    logits = (q.float() * scale) @ k.float().transpose(-2, -1)
    if shared_rel_pos_bias is not None:
        logits = logits + shared_rel_pos_bias.float()
    return logits.log_softmax(dim=-1) if log else logits.softmax(dim=-1)


class AttentionCapture:
    """Context manager: while active, every forward of `model` calls `on_attention(layer, probs)` and/or
    `on_features(layer, block_output)` for each block, in order. With `log_space`, on_attention gets
    log-probabilities instead: exact log-softmax in recompute mode, log of timm's probabilities (-inf where they
    underflowed) in unfused mode.

        with AttentionCapture(vit, on_attention=stats.update):
            vit.forward_features(images)
    """

    def __init__(
        self,
        model: nn.Module,
        on_attention: AttentionCallback | None = None,
        on_features: AttentionCallback | None = None,
        mode: str = "recompute",
        log_space: bool = False,
    ):
        if mode not in ("recompute", "unfused"):
            raise ValueError(f"capture mode '{mode}': use 'recompute' or 'unfused'")
        self.blocks = vit_blocks(model)
        self.on_attention, self.on_features, self.mode = on_attention, on_features, mode
        self.log_space = log_space
        self._handles: list = []
        self._fused: list[bool] = []

    def _attention_hook(self, layer: int):
        if self.mode == "recompute":

            def hook(module, args, kwargs, output):
                bias = kwargs.get("shared_rel_pos_bias", args[1] if len(args) > 1 else None)
                self.on_attention(layer, attention_from_input(module, args[0], bias, log=self.log_space))
        else:

            def hook(module, args, kwargs, output):
                self.on_attention(layer, output.float().log() if self.log_space else output.float())

        return hook

    def _feature_hook(self, layer: int):
        def hook(module, args, output):
            self.on_features(layer, output)

        return hook

    def __enter__(self) -> "AttentionCapture":
        for i, block in enumerate(self.blocks):
            if self.on_attention is not None:
                if self.mode == "recompute":
                    target = block.attn
                else:
                    self._fused.append(bool(getattr(block.attn, "fused_attn", False)))
                    block.attn.fused_attn = False
                    target = block.attn.attn_drop
                self._handles.append(target.register_forward_hook(self._attention_hook(i), with_kwargs=True))
            if self.on_features is not None:
                self._handles.append(block.register_forward_hook(self._feature_hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block, fused in zip(self.blocks, self._fused):
            block.attn.fused_attn = fused
        self._fused.clear()


@torch.no_grad()
def capture_attention(model: nn.Module, images: torch.Tensor, mode: str = "recompute") -> list[torch.Tensor]:
    """Every layer's attention for one (small) batch, as a list of (batch, heads, tokens, tokens) tensors. For
    tests and single-image inspection; analyses over many images stream through `AttentionCapture` instead."""
    out: list[torch.Tensor] = []
    with AttentionCapture(model, on_attention=lambda layer, a: out.append(a.cpu()), mode=mode):
        model.forward_features(images)
    return out
