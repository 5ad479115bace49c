"""MoCo v3 for ViT (Chen, Xie, He 2021), the contrastive baseline: two augmented views, a momentum encoder whose
momentum rises from m0 to 1 by a half cosine, projector (3-layer) and predictor (2-layer) MLPs with BatchNorm, and
the symmetric InfoNCE loss ctr(q1, k2) + ctr(q2, k1) with temperature T, each scaled by 2T as in the paper's code.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mimkit.compat import foreach_lerp_
from mimkit.methods.base import Method


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, last_bn: bool = True) -> nn.Sequential:
    """Linear-BN-ReLU blocks, then Linear and (optionally) BN without affine, as in MoCo v3."""
    mods: list[nn.Module] = []
    dim = in_dim
    for i in range(layers):
        last = i == layers - 1
        width = out_dim if last else hidden
        mods.append(nn.Linear(dim, width, bias=False))
        if not last:
            mods += [nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(width, affine=False))
        dim = width
    return nn.Sequential(*mods)


def gather_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keys of every rank (no gradient flows through keys) and this rank's offset into them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return k, 0
    parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, k.contiguous())
    return torch.cat(parts), dist.get_rank() * k.shape[0]


def freeze_random_patch_projection(vit: nn.Module) -> None:
    """MoCo v3's fix for training instability: the patch projection stays at its random initialisation, Xavier
    uniform with fan-in 3*p*p (in_chans*p*p) and fan-out the width, bias zero (vits.py, `stop_grad_conv1`)."""
    proj = vit.patch_embed.proj
    bound = math.sqrt(6.0 / float(proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + proj.out_channels))
    with torch.no_grad():
        nn.init.uniform_(proj.weight, -bound, bound)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    for p in proj.parameters():
        p.requires_grad_(False)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """InfoNCE with the positives on the diagonal (offset by rank when keys are gathered under DDP), scaled by 2T."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    k_all, offset = gather_keys(k) if gather else (k, 0)
    logits = q @ k_all.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """m rises from `base` at step 0 to 1 at the end by a half cosine."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps))) * (1.0 - base)


class MoCoV3(Method):
    name = "mocov3"

    def __init__(
        self, encoder: nn.Module, dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2, momentum: float = 0.99
    ):
        super().__init__()
        self.encoder = encoder  # timm ViT, no classifier: forward() gives the class token
        width = encoder.embed_dim
        self.projector = mlp(width, mlp_dim, dim, layers=3)
        self.predictor = mlp(dim, mlp_dim, dim, layers=2)
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in [*self.momentum_encoder.parameters(), *self.momentum_projector.parameters()]:
            p.requires_grad_(False)
        self.temperature = temperature
        self.base_momentum = momentum
        self.momentum = momentum

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x1, x2 = batch["images"], batch["images2"]
        # the class token is all the loss reads: both encoders run their last block at it only
        q1 = self.predictor(self.projector(self.pooled(self.encoder, x1)))
        q2 = self.predictor(self.projector(self.pooled(self.encoder, x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.pooled(self.momentum_encoder, x1))
            k2 = self.momentum_projector(self.pooled(self.momentum_encoder, x2))
        # Keys from every rank in training; evaluation scores whole batches locally (see heldout.FixedMaskEvaluator).
        gather = self.training
        loss = contrastive_loss(q1, k2, self.temperature, gather) + contrastive_loss(q2, k1, self.temperature, gather)
        return {"loss": loss}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA of the online encoder + projector into the momentum copies, with the scheduled momentum."""
        self.momentum = momentum_at(step + 1, total_steps, self.base_momentum)
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        target = [*self.momentum_encoder.parameters(), *self.momentum_projector.parameters()]
        foreach_lerp_(target, online, self.momentum)


def build_mocov3(cfg: Any, encoder: nn.Module) -> MoCoV3:
    meth = cfg.method
    return MoCoV3(encoder, meth.moco_dim, meth.moco_mlp_dim, meth.moco_temperature, meth.moco_momentum)
