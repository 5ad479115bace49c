"""The Method side of the Method + Engine seam: an nn.Module whose forward turns a batch into {'loss': ..., ...}."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from mimkit.fast.rows import class_token_forward

# Parameter names (suffixes) that never get weight decay, besides every 1-D tensor (biases, norms); SwinV2's
# attention temperature and continuous position-bias MLP as in timm's no_weight_decay.
NO_DECAY_NAMES = (
    "cls_token",
    "pos_embed",
    "mask_token",
    "decoder_pos_embed",
    "dist_token",
    "reg_token",
    "logit_scale",
    "relative_position_bias_table",  # BEiT / SimMIM's ViT, as timm's no_weight_decay
)


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return (
        param.ndim <= 1 or name.endswith(NO_DECAY_NAMES) or name.split(".")[-1] in NO_DECAY_NAMES or ".cpb_mlp." in name
    )


class Method(nn.Module):
    """An objective over a timm encoder. The Engine calls `forward(batch)`, `param_groups` and the hooks below,
    which do nothing unless a method overrides them."""

    name: str = "method"
    encoder: nn.Module
    # DDP's find_unused_parameters: true for an objective whose loss leaves some parameters without a gradient
    # in a step (TinyMIM's relation-only targets never reach the student's later blocks)
    find_unused_parameters: bool = False
    # `train.fast_path`: the forward pass (training and evaluation) takes the speed-ups that give the same loss and
    # gradients: the last block only where the loss reads it (MAE's and SimMIM's masked tokens, a class-token-pooled
    # encoder's class token; fast/rows.py), MAE's visible-patch embedding, the fused pixel losses. False runs
    # the plain code, as the reference implementations do (see plain_path). A method falls back to its plain code
    # by itself where a subclass has replaced what the fast path computes for it (see overrides).
    fast_path: bool = True

    @contextlib.contextmanager
    def plain_path(self) -> Iterator["Method"]:
        """The plain code for the duration, e.g. to count the model's FLOPs as the papers count compute."""
        saved, self.fast_path = self.fast_path, False
        try:
            yield self
        finally:
            self.fast_path = saved

    def overrides(self, base: type, *names: str) -> bool:
        """Whether this object's class replaces any of `base`'s methods `names`: the fast path computes what those
        methods define, so a subclass that changes one of them must get the plain code, which calls it."""
        return any(getattr(type(self), name) is not getattr(base, name) for name in names)

    def pooled(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`encoder(images)`, with the last block at the class token only when that is all the encoder's pooled
        output reads (see fast_path)."""
        return class_token_forward(encoder, images) if self.fast_path else encoder(images)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the Engine after every optimizer step (MoCo v3 updates its momentum encoder here)."""

    def reconstruct(
        self, imgs: torch.Tensor, ids: torch.Tensor, epoch: int = -1, true_patch_stats: bool = False
    ) -> dict[str, torch.Tensor]:
        """Masked inputs and their reconstructions for the figure (MIM methods): {'original', 'masked',
        'reconstruction', 'pixel_mask'}, the masks keyed by sample id and epoch as in training. A method whose
        targets are normalised per patch de-normalises with statistics the model could know, unless
        `true_patch_stats` asks for each masked patch's own (see reconstruction_note)."""
        raise NotImplementedError(f"{type(self).__name__} does not reconstruct images")

    def reconstruction_note(self, true_patch_stats: bool = False) -> str:
        """What the reconstructions show, for the figure's title (e.g. how predictions were de-normalised)."""
        return ""

    @property
    def reconstructs(self) -> bool:
        """Whether this method draws reconstructions (it overrides `reconstruct`)."""
        return type(self).reconstruct is not Method.reconstruct

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Two AdamW groups: decayed weight matrices, and undecayed biases / norms / tokens / position embeddings."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if no_weight_decay(name, param):
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            dict(params=decay, weight_decay=weight_decay, lr_scale=1.0),
            dict(params=no_decay, weight_decay=0.0, lr_scale=1.0),
        ]
        return [g for g in groups if g["params"]]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder alone, in timm's key layout (no mask token, no decoder or head)."""
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
