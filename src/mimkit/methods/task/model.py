"""Geometric task heads on a timm encoder: box regression (localisation), angle regression (rotation), and class +
box (the combined, detection-like task, whose classification and localisation losses are reported separately).

`model.freeze=true` trains only the linear heads on the frozen encoder (kept in eval mode, no gradients); otherwise
the encoder is fine-tuned with layer-wise lr decay.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.methods.base import Method
from mimkit.methods.supervised.model import layer_decay_groups


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
        if freeze:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.freeze:
            self.encoder.eval()  # frozen: no dropout / drop-path noise in the features
        return self

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
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

    def losses(self, pred: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
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
        heads = [p for m in (self.box_head, self.angle_head, self.cls_head) if m is not None for p in m.parameters()]
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
