"""Geometric task heads on a timm encoder: box regression (localisation), angle regression (rotation), and class +
box (the combined, detection-like task, whose classification and localisation losses are reported separately) on
the pooled feature; and dense heads on the patch tokens laid out on their grid for the tasks that need spatial
features: per-patch objectness + box for cluttered localisation (+ class scores for the cluttered combined task, the
detection analogue), a heat map per keypoint, a nearness map for depth, and for tracking a correlation head between
the two frames' patches (tracking.py).

`model.freeze=true` trains only the linear heads on the frozen encoder (kept in eval mode, no gradients); otherwise
the encoder is fine-tuned with layer-wise lr decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.data.tasks import DEPTH_GRID
from mimkit.methods.base import Method
from mimkit.methods.supervised.model import layer_decay_groups
from mimkit.methods.task.tracking import TrackingHead
from mimkit.models.swin import is_swin_encoder

DENSE_TASKS = ("cluttered_localization", "cluttered_combined", "keypoints", "depth", "tracking")
KEYPOINTS = 4  # the item's extreme points: top-most, bottom-most, left-most, right-most


class DenseHead(nn.Module):
    """Per-patch outputs from patch tokens on their grid: a 3x3 convolution (each patch sees its neighbours), GELU,
    and a 1x1 convolution to `out` channels."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, out, 1))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.net(grid)


def patch_grid(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(batch, dim, grid_h, grid_w): the encoder's final patch tokens (a ViT's after its final norm, prefix tokens
    dropped; a SwinV2's last stage) on their grid."""
    tokens = encoder.forward_features(images)
    if is_swin_encoder(encoder):  # (B, H, W, C)
        return tokens.permute(0, 3, 1, 2)
    gh, gw = encoder.patch_embed.grid_size
    patches = tokens[:, getattr(encoder, "num_prefix_tokens", 1) :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)


def patch_centres(gh: int, gw: int, device: torch.device) -> torch.Tensor:
    """(gh * gw, 2) patch centres (x, y) in [0, 1] canvas coordinates, row-major."""
    ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) / gh
    xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) / gw
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def inside_box(boxes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(batch, patches) bool: which patch centres lie inside each image's box (x1, y1, x2, y2)."""
    x, y = centres[None, :, 0], centres[None, :, 1]
    b = boxes[:, None, :]
    return (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3])


class TaskModel(Method):
    name = "task"

    def __init__(
        self,
        encoder: nn.Module,
        task: str,
        num_classes: int | None,
        freeze: bool = False,
        layer_decay: float = 1.0,
        rotation_max: float = 90.0,
    ):
        super().__init__()
        self.encoder, self.task, self.freeze = encoder, task, freeze
        self.layer_decay, self.rotation_max = layer_decay, rotation_max
        dim = encoder.num_features
        self.box_head = nn.Linear(dim, 4) if task in ("localization", "combined") else None
        self.angle_head = nn.Linear(dim, 1) if task == "rotation" else None
        self.cls_head = nn.Linear(dim, num_classes) if task == "combined" else None
        # dense: 1 objectness logit + 4 box coordinates per patch, or 1 nearness value per patch
        outputs = {"cluttered_localization": 5, "keypoints": KEYPOINTS, "depth": 1}.get(task)
        if task == "cluttered_combined":  # objectness, box, then one score per class
            outputs = 5 + num_classes
        self.dense_head = DenseHead(dim, outputs) if outputs else None
        if task == "tracking":  # the two frames' patches matched against each other
            self.dense_head = TrackingHead(dim, DenseHead)
        if freeze:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.freeze:
            self.encoder.eval()  # frozen: no dropout / drop-path noise in the features
        return self

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.dense_head is not None:
            return self.predict_dense(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            feats = self.pooled(self.encoder, images)
        out = {}
        if self.box_head is not None:
            out["boxes"] = torch.sigmoid(self.box_head(feats).float())
        if self.angle_head is not None:
            out["angles"] = self.angle_head(feats).float() * self.rotation_max
        if self.cls_head is not None:
            out["logits"] = self.cls_head(feats).float()
        return out

    def predict_dense(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cluttered localisation: per-patch objectness logits and boxes (sigmoid, canvas coordinates); the image's
        box is the box of its most confident patch. Keypoints: each keypoint's heat map over the patches, read out
        by soft-argmax over the patch centres. Depth: the nearness map, resampled to DEPTH_GRID x DEPTH_GRID. The
        cluttered combined task also reads the class from its most confident patch."""
        if self.task == "tracking":
            return self.predict_tracking(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            grid = patch_grid(self.encoder, images)
        maps = self.dense_head(grid).float()  # (B, out, gh, gw)
        if self.task == "depth":
            if maps.shape[-2:] != (DEPTH_GRID, DEPTH_GRID):
                maps = F.interpolate(maps, size=(DEPTH_GRID, DEPTH_GRID), mode="bilinear", align_corners=False)
            return {"depth": maps.flatten(1)}
        if self.task == "keypoints":  # a heat map per keypoint; its soft-argmax over the patch centres
            heat = maps.flatten(2).softmax(-1)  # (B, K, P)
            centres = patch_centres(maps.shape[-2], maps.shape[-1], maps.device)  # (P, 2)
            return {"keypoints": (heat @ centres).flatten(1)}  # (B, K * 2): x, y per keypoint
        b = maps.shape[0]
        objectness = maps[:, 0].flatten(1)  # (B, P)
        patch_boxes = torch.sigmoid(maps[:, 1:5].flatten(2).transpose(1, 2))  # (B, P, 4)
        best = objectness.argmax(1)
        rows = torch.arange(b, device=maps.device)
        out = {"boxes": patch_boxes[rows, best], "objectness": objectness, "patch_boxes": patch_boxes}
        if self.task == "cluttered_combined":
            patch_logits = maps[:, 5:].flatten(2).transpose(1, 2)  # (B, P, classes)
            out.update(logits=patch_logits[rows, best], patch_logits=patch_logits)
        return out

    def predict_tracking(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tracking: (B, 2C, H, W) holds two frames on the channel axis; both go through the encoder in one batch,
        and the correlation head reads the item's displacement from their patch features."""
        b, c2 = frames.shape[:2]
        both = torch.cat(frames.split(c2 // 2, dim=1))  # (2B, C, H, W): every first frame, then every second
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            grid = patch_grid(self.encoder, both)
        centres = patch_centres(grid.shape[-2], grid.shape[-1], grid.device)
        return self.dense_head(grid[:b], grid[b:], centres)

    def dense_losses(self, pred: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        targets = batch["targets"].float().to(next(iter(pred.values())).device)
        if self.task == "depth":
            loss = F.l1_loss(pred["depth"], targets)
            return {"depth_loss": loss, "loss": loss}
        if self.task == "keypoints":
            loss = F.l1_loss(pred["keypoints"], targets)
            return {"keypoint_loss": loss, "loss": loss}
        if self.task == "tracking":
            loss = F.l1_loss(pred["displacement"], targets)
            return {"track_loss": loss, "loss": loss}
        side = math.isqrt(pred["objectness"].shape[1])  # images are square
        positive = inside_box(targets, patch_centres(side, side, targets.device))  # (B, P)
        objectness = F.binary_cross_entropy_with_logits(pred["objectness"], positive.float())
        weight = positive.float().unsqueeze(-1)
        box = (weight * (pred["patch_boxes"] - targets[:, None, :]).abs()).sum() / (4 * weight.sum()).clamp_min(1)
        out = {"objectness_loss": objectness, "loc_loss": box}
        if "patch_logits" in pred:  # every patch inside the box learns the item's class, as in dense detectors
            labels = batch["labels"].to(targets.device)[:, None].expand_as(positive)
            per_patch = F.cross_entropy(pred["patch_logits"].transpose(1, 2), labels, reduction="none")
            out["cls_loss"] = (per_patch * positive).sum() / positive.sum().clamp_min(1)
        out["loss"] = sum(out.values())
        return out

    def losses(self, pred: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.dense_head is not None:
            return self.dense_losses(pred, batch)
        out = {}
        if "boxes" in pred:
            out["loc_loss"] = F.l1_loss(pred["boxes"], batch["targets"].float())
        if "angles" in pred:
            out["angle_loss"] = F.l1_loss(pred["angles"], batch["targets"].float()) / self.rotation_max
        if "logits" in pred:
            out["cls_loss"] = F.cross_entropy(pred["logits"], batch["labels"])
        out["loss"] = sum(out.values())
        return out

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.losses(self.predict(batch["images"]), batch)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = [] if self.freeze else layer_decay_groups(self.encoder, weight_decay, self.layer_decay)
        heads = [
            p
            for m in (self.box_head, self.angle_head, self.cls_head, self.dense_head)
            if m is not None
            for p in m.parameters()
        ]
        weights = [p for p in heads if p.ndim > 1]
        biases = [p for p in heads if p.ndim <= 1]
        return groups + [
            dict(params=weights, weight_decay=weight_decay, lr_scale=1.0),
            dict(params=biases, weight_decay=0.0, lr_scale=1.0),
        ]


def build_task(cfg: Any, encoder: nn.Module) -> TaskModel:
    return TaskModel(
        encoder, cfg.data.task, cfg.model.num_classes, cfg.model.freeze, cfg.method.layer_decay, cfg.data.rotation_max
    )
