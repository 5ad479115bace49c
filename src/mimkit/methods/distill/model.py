"""TinyMIM distillation (Ren et al. 2023): a student ViT learns a frozen teacher's token relations (Q-K and V-V
attention maps of one block), and/or its class token and features, from the same crop of each image.

- The teacher is held outside the module's registered children: it is not in the state dict, the optimizer, DDP
  or checkpoints (a run reloads without it), runs in eval mode under no_grad, and under the Engine's autocast (bf16
  on GPU). `attach_teacher` gives it to the method when training starts.
- Only the student's colour is jittered; both see the same crop (as the official code).
- Head counts: with `reshape_student` (TinyMIM) the student's distilled block splits its own q/k/v into the
  teacher's head count for the relations (its parameters keep the shapes of a standard timm ViT, so it fine-tunes
  with its usual head count); with `resplit_teacher` the teacher's q/k/v are split into the student's head count.
- Relation-only targets stop the student's forward pass after the distilled block, so the later parts get no
  gradient (DDP is told to expect unused parameters).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.data.masks import MaskGenerator
from mimkit.data.transforms import color_jitter
from mimkit.errors import ConfigError
from mimkit.methods.base import Method
from mimkit.methods.distill.options import parse_targets
from mimkit.methods.distill.relations import relation_losses
from mimkit.methods.distill.targets import regression_loss
from mimkit.methods.distill.vit_blocks import block_index, block_qkv, final_tokens
from mimkit.methods.simmim.model import linear_pixel_head, masked_pixel_l1
from mimkit.models.encoder import (
    embed_tokens,
    grid_size,
    in_chans,
    init_mae_weights,
    init_patch_embed_like_linear,
    patch_size,
    run_blocks,
)


def whitened(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Feature Distillation's target whitening: each token normalised over its channels, no affine parameters."""
    return F.layer_norm(tokens.float(), tokens.shape[-1:], eps=eps).to(tokens.dtype)


def check_head_split(width: int, heads: int, who: str, other: str) -> None:
    if width % heads:
        raise ConfigError(
            f"distill: the {who}'s width {width} cannot be split into the {other}'s {heads} heads "
            f"({width} / {heads} is not an integer); use distill.head_match="
            f"{'resplit_teacher' if who == 'student' else 'reshape_student'} or another {who}"
        )


def relation_heads(
    head_match: str, student_width: int, student_heads: int, teacher_width: int, teacher_relation_heads: int
) -> int:
    """The head count both relations are computed with: the teacher's (reshape_student, TinyMIM) or the
    student's (resplit_teacher), after checking that the other side's width splits into it."""
    if head_match == "reshape_student":
        check_head_split(student_width, teacher_relation_heads, "student", "teacher")
        return teacher_relation_heads
    check_head_split(teacher_width, student_heads, "teacher", "student")
    return student_heads


class Distill(Method):
    name = "distill"
    find_unused_parameters = True  # relation-only targets never reach the student's later blocks

    def __init__(
        self,
        student: nn.Module,
        dis: Any,
        mean: list[float],
        std: list[float],
        mask_generator: MaskGenerator | None,
        seed: int = 0,
    ):
        super().__init__()
        self.encoder = student
        self.targets = parse_targets(dis.targets)
        depth, width, heads = len(student.blocks), student.embed_dim, student.blocks[0].attn.num_heads
        self.s_index = block_index(dis.student_layer, depth, "distill.student_layer")
        self.t_index = block_index(dis.teacher_layer, dis.teacher_depth, "distill.teacher_layer")
        self.head_match = dis.head_match
        self.student_heads = self.teacher_heads = relation_heads(
            dis.head_match, width, heads, dis.teacher_embed_dim, dis.teacher_relation_heads or dis.teacher_num_heads
        )
        self.cls_loss, self.feature_loss, self.feature_norm = dis.cls_loss, dis.feature_loss, dis.feature_norm
        self.mim_weight, self.jitter, self.mean, self.std, self.seed = dis.mim_weight, dis.color_jitter, mean, std, seed
        self.mask_generator = mask_generator
        if {"cls", "feature"} & set(self.targets):
            self.proj = nn.Linear(width, dis.teacher_embed_dim) if width != dis.teacher_embed_dim else nn.Identity()
        if mask_generator is not None:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.normal_(self.mask_token, std=0.02)
        if self.mim_weight > 0:  # SimMIM's linear head
            self.patch, self.grid, self.chans = patch_size(student), grid_size(student), in_chans(student)
            self.mim_head = linear_pixel_head(width, self.patch, self.chans)
        self.needs_student_output = bool({"cls", "feature"} & set(self.targets)) or self.mim_weight > 0
        object.__setattr__(self, "teacher", None)  # not a registered child: see the module docstring
        self.initialize_student()

    def initialize_student(self) -> None:
        """MAE-style student (as TinyMIM): xavier linears, patch projection initialised like a linear, N(0, 0.02)
        class token; the fixed sin-cos position table comes from the encoder factory."""
        init_patch_embed_like_linear(self.encoder)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        for module in [*self.encoder.blocks, self.encoder.norm]:
            module.apply(init_mae_weights)

    # --------------------------------------------------------------------------------------------- teacher
    def attach_teacher(self, teacher: nn.Module) -> None:
        teacher.requires_grad_(False)
        device = next(self.encoder.parameters()).device
        object.__setattr__(self, "teacher", teacher.to(device).eval())

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def teacher_targets(self, images: torch.Tensor) -> dict[str, Any]:
        t = self.teacher
        if t is None:
            raise RuntimeError(
                "Distill: no teacher attached (attach_teacher) - a reloaded run can export or be "
                "fine-tuned, but training needs its teacher"
            )
        t.eval()
        x = run_blocks(t, embed_tokens(t, images), 0, self.t_index)
        out: dict[str, Any] = {}
        if {"qk", "vv"} & set(self.targets):
            out["qkv"] = block_qkv(t.blocks[self.t_index], x, self.teacher_heads)
        if {"cls", "feature"} & set(self.targets):
            y = final_tokens(t, run_blocks(t, x, self.t_index, self.t_index + 1), self.t_index)
            out["cls"], out["feature"] = y[:, 0], whitened(y) if self.feature_norm else y
        return out

    # --------------------------------------------------------------------------------------------- student
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, keys = batch["images"], batch["keys"]
        teacher = self.teacher_targets(images)
        student_view = (
            color_jitter(images, keys, self.jitter, self.mean, self.std, self.seed) if self.training else images
        )
        mask = self.mask_generator(keys, self.seed).to(images.device) if self.mask_generator is not None else None
        s = self.encoder
        x = run_blocks(s, embed_tokens(s, student_view, mask, getattr(self, "mask_token", None)), 0, self.s_index)
        losses: dict[str, torch.Tensor] = {}
        if {"qk", "vv"} & set(self.targets):
            relations = relation_losses(*teacher["qkv"], *block_qkv(s.blocks[self.s_index], x, self.student_heads))
            losses.update({k: v for k, v in relations.items() if k in self.targets})
        if self.needs_student_output:
            y = run_blocks(s, x, self.s_index, self.s_index + 1)
            if {"cls", "feature"} & set(self.targets):
                tokens = self.proj(final_tokens(s, y, self.s_index))
                if "cls" in self.targets:
                    losses["cls"] = regression_loss(tokens[:, 0], teacher["cls"], self.cls_loss)
                if "feature" in self.targets:
                    losses["feature"] = regression_loss(tokens, teacher["feature"], self.feature_loss)
            if self.mim_weight > 0:
                losses["mim"] = self.mim_loss(student_view, y, mask)
        weights = {**self.targets, "mim": self.mim_weight}
        total = sum(weights[k] * v for k, v in losses.items())
        return {"loss": total, **{f"{k}_loss": v.detach() for k, v in losses.items()}}

    def mim_loss(self, images: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SimMIM's L1 on masked pixels, from the student's final tokens (the blocks after the distilled one run)."""
        s = self.encoder
        z = s.norm(run_blocks(s, y, self.s_index + 1, len(s.blocks)))[:, s.num_prefix_tokens :]
        b, n, dim = z.shape
        rec = self.mim_head(z.transpose(1, 2).reshape(b, dim, self.grid[0], self.grid[1]))
        return masked_pixel_l1(images, rec, mask, self.patch, self.grid, self.chans)


def build_distill(cfg: Any, student: nn.Module, mask_generator: MaskGenerator | None) -> Distill:
    dis = cfg.distill
    if dis.teacher_depth is None or dis.teacher_embed_dim is None or dis.teacher_num_heads is None:
        raise ConfigError(
            "distill: the teacher's architecture is unknown (distill.teacher_depth/_embed_dim/"
            "_num_heads are filled in from distill.teacher when the run starts)"
        )
    return Distill(student, dis, cfg.data.mean, cfg.data.std, mask_generator, cfg.seed)
