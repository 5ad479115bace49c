"""Supervised classification over a timm ViT: DeiT-style training from scratch (the supervised baseline) and
fine-tuning of a pretrained encoder, with layer-wise lr decay (MAE/BEiT rule), label smoothing and timm Mixup/CutMix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn

from mimkit.methods.base import Method, no_weight_decay


def layer_id(name: str, num_layers: int) -> int:
    """Embeddings (cls token, position embedding, patch embedding) are layer 0, block i is i+1, the rest (final
    norm, fc_norm, head) is L+1: the BEiT/MAE rule behind scale = decay^(L+1-layer). timm's group_matcher gives the
    same layers for its ViT and BEiT (tests/test_eval.py); this spelled-out rule is kept as their reference."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token", "dist_token", "rel_pos_bias")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float) -> list[dict[str, Any]]:
    """AdamW groups per (layer, decayed or not), each with `lr_scale` = decay^(L+1-layer) and the `names` of its
    parameters. The Engine multiplies every group's lr by its lr_scale and then by the schedule.

    ViT and BEiT: timm's `param_groups_layer_decay` (its group_matcher puts the embeddings at layer 0, block i at
    i+1, the final norm and the head at L+1: MAE's and BEiT's rule). SwinV2: mimkit's own `swin_layer_id`, because
    timm's matcher gives a stage's patch merging the next stage's first layer and the final norm its own layer,
    where the official SimMIM/Swin code puts them with the previous stage's last block and with the head."""
    from mimkit.models.swin import is_swin_encoder, swin_layer_id

    if not is_swin_encoder(model):
        from timm.optim import param_groups_layer_decay

        names = {id(p): n for n, p in model.named_parameters()}
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=decay)
        return [dict(group, names=[names[id(p)] for p in group["params"]]) for group in groups]
    depths = [len(stage.blocks) for stage in model.layers]
    num_layers = sum(depths)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = no_weight_decay(name, param)
        layer = swin_layer_id(name, depths)
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": decay ** (num_layers + 1 - layer),
                "layer": layer,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


class Supervised(Method):
    name = "supervised"

    def __init__(
        self,
        encoder: nn.Module,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        layer_decay: float = 1.0,
    ):
        super().__init__()
        self.encoder = encoder  # a timm ViT with its classifier head
        self.label_smoothing = label_smoothing
        self.layer_decay = layer_decay
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=encoder.num_classes
            )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's output; with class-token pooling the last block runs at the class token only."""
        return self.pooled(self.encoder, images)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, labels = batch["images"], batch["labels"]
        if self.training and self.mixup is not None:
            images, soft = self.mixup(images, labels)
            logits = self.logits(images)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self.logits(images)
            smoothing = self.label_smoothing if self.training else 0.0
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        return {"loss": loss, "logits": logits}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = layer_decay_groups(self.encoder, weight_decay, self.layer_decay)
        for group in groups:
            group["names"] = [f"encoder.{n}" for n in group["names"]]
        return groups


def build_supervised(cfg: Any, encoder: nn.Module) -> Supervised:
    meth = cfg.method
    return Supervised(encoder, meth.label_smoothing, meth.mixup, meth.cutmix, meth.layer_decay)
