"""Held-out evaluation of the geometric tasks: box IoU and its >= 0.5 share, angle error, depth-map error, keypoint
and displacement errors, and for the combined task top-1, detection AP@0.5 and its two losses. Every rank scores the
whole fixed subset, since AP is not a sum."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mimkit.data.imageset import ImageSet
from mimkit.data.transforms import eval_transform
from mimkit.engine.distributed import DistEnv
from mimkit.eval.task_metrics import (
    angle_error,
    depth_error,
    detection_ap50,
    displacement_error,
    keypoint_error,
    localization_metrics,
)
from mimkit.heldout import fixed_subset

BEST_METRIC = {
    "localization": ("mean_iou", "max"),
    "cluttered_localization": ("mean_iou", "max"),
    "rotation": ("angle_error", "min"),
    "combined": ("ap50", "max"),
    "cluttered_combined": ("ap50", "max"),
    "depth": ("depth_error", "min"),
    "keypoints": ("keypoint_error", "min"),
    "tracking": ("displacement_error", "min"),
}


class TaskEvaluator:
    def __init__(self, data: ImageSet, n: int | None, cfg: Any, env: DistEnv, autocast):
        self.data = fixed_subset(data, n, cfg.seed) if n is not None else data
        self.cfg, self.env, self.autocast = cfg, env, autocast

    @torch.no_grad()
    def evaluate(self, method: nn.Module) -> dict[str, float]:
        was_training = method.training
        method.eval()
        d, bs = self.cfg.data, self.cfg.train.eval_batch_size
        preds: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(self.data), bs):
            images = eval_transform(self.data.images[start : start + bs].to(self.env.device), d.img_size, d.mean, d.std)
            with self.autocast():
                out = method.predict(images)
            for key, value in out.items():
                preds.setdefault(key, []).append(value.float().cpu())
        method.train(was_training)
        pred = {k: torch.cat(v) for k, v in preds.items()}
        batch = {"targets": self.data.targets, "labels": self.data.labels}
        metrics = {k: float(v) for k, v in method.losses(pred, batch).items()}
        if "boxes" in pred:
            metrics.update(localization_metrics(pred["boxes"], self.data.targets))
        if "angles" in pred:
            metrics["angle_error"] = angle_error(pred["angles"], self.data.targets)
        if "depth" in pred:
            metrics["depth_error"] = depth_error(pred["depth"], self.data.targets)
        if "keypoints" in pred:
            metrics["keypoint_error"] = keypoint_error(pred["keypoints"], self.data.targets)
        if "displacement" in pred:
            metrics["displacement_error"] = displacement_error(pred["displacement"], self.data.targets)
        if "logits" in pred:
            metrics["top1"] = 100 * float((pred["logits"].argmax(1) == self.data.labels).float().mean())
            metrics["ap50"] = detection_ap50(pred["boxes"], self.data.targets, pred["logits"], self.data.labels)
        return metrics


def task_evaluators(cfg: Any, data: Any, env: DistEnv, autocast) -> tuple[dict[str, Any], tuple]:
    """The geometric tasks: their metrics on the held-out split and a fixed train subset (best per BEST_METRIC)."""
    key, mode = BEST_METRIC[cfg.data.task]
    n = cfg.train.eval_samples
    evaluators = {
        "heldout": TaskEvaluator(data.heldout, n, cfg, env, autocast),
        "train_fixed": TaskEvaluator(data.train, n, cfg, env, autocast),
    }
    return evaluators, ("heldout", key, mode)
