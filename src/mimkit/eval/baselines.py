"""Baselines that learn nothing, for every results table.

- raw pixels (`init=pixels`): kNN and the linear probe run their usual protocols on the encoders' own input
  (resized, normalised, flattened pixels);
- the trivial predictor of each task, fitted on the training targets alone: the majority class (classification),
  the mean box (localisation, plain or cluttered), the median angle (rotation, the constant with the least mean
  absolute error), the mean box with the majority class (the combined task), the mean keypoints, the mean map
  (depth), zero displacement (tracking: the item is where it was); for the localisation tasks also the
  thresholding predictor (the tight box of the pixels brighter than the canvas' median), which solves the plain
  task and must fail on the cluttered one;
- a frozen random encoder of the compared models' own architecture (`init=scratch:SOURCE`, weights/sources.py).

A trained encoder that scores below one of these says the protocol is broken before it says anything about the
encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mimkit.data.imageset import ImageSet
from mimkit.data.options import COMBINED_TASKS
from mimkit.data.tasks import tight_box
from mimkit.data.transforms import eval_transform
from mimkit.eval.task_metrics import (
    angle_error,
    depth_error,
    detection_ap50,
    displacement_error,
    keypoint_error,
    localization_metrics,
)


@torch.no_grad()
def pixel_features(data: ImageSet, cfg: Any, batch_size: int = 1024) -> torch.Tensor:
    """(N, C*S*S) float32: each image as every encoder receives it (eval_transform at data.img_size with the data
    set's mean and std), flattened."""
    d = cfg.data
    out = [
        eval_transform(data.images[start : start + batch_size], d.img_size, d.mean, d.std).flatten(1).float()
        for start in range(0, len(data), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, d.in_chans * d.img_size * d.img_size)


def majority_class(labels: torch.Tensor) -> int:
    """The most frequent label (the smallest one on a tie)."""
    return int(torch.bincount(labels).argmax())


def trivial_predictions(task: str, train: ImageSet, n: int, num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """What the trivial predictor says for each of `n` held-out images: the same thing for all of them, learned from
    the training split's labels or targets only (tracking's zero motion needs neither). Keys follow
    TaskModel.predict (logits, boxes, angles, keypoints, depth, displacement)."""
    out: dict[str, torch.Tensor] = {}
    if task == "classification" or task in COMBINED_TASKS:
        classes = num_classes or int(train.labels.max()) + 1
        logits = torch.zeros(n, classes)
        logits[:, majority_class(train.labels)] = 1.0
        out["logits"] = logits
    if task in ("localization", "combined", "cluttered_localization", "cluttered_combined"):
        out["boxes"] = train.targets.float().mean(0, keepdim=True).expand(n, 4).clone()
    if task == "depth":
        out["depth"] = train.targets.float().mean(0, keepdim=True).expand(n, -1).clone()
    if task == "keypoints":
        out["keypoints"] = train.targets.float().mean(0, keepdim=True).expand(n, -1).clone()
    if task == "tracking":  # no motion: the item is where it was
        out["displacement"] = torch.zeros(n, 2)
    if task == "rotation":
        out["angles"] = train.targets.float().flatten().median().expand(n, 1).clone()
    if not out:
        raise ValueError(f"no trivial predictor for task '{task}'")
    return out


def trivial_scores(task: str, train: ImageSet, heldout: ImageSet, num_classes: int | None = None) -> dict[str, float]:
    """The trivial predictor's held-out metrics, named as the task's own evaluator names them."""
    pred = trivial_predictions(task, train, len(heldout), num_classes)
    metrics: dict[str, float] = {}
    if "logits" in pred:  # classification and the combined task
        metrics["top1"] = 100 * float((pred["logits"].argmax(1) == heldout.labels).float().mean())
    if "boxes" in pred:
        metrics.update(localization_metrics(pred["boxes"], heldout.targets))
    if "angles" in pred:
        metrics["angle_error"] = angle_error(pred["angles"], heldout.targets)
    if "depth" in pred:
        metrics["depth_error"] = depth_error(pred["depth"], heldout.targets)
    if "keypoints" in pred:
        metrics["keypoint_error"] = keypoint_error(pred["keypoints"], heldout.targets)
    if "displacement" in pred:
        metrics["displacement_error"] = displacement_error(pred["displacement"], heldout.targets)
    if task in ("localization", "cluttered_localization", "cluttered_combined"):
        metrics["threshold_iou"] = localization_metrics(threshold_boxes(heldout.images), heldout.targets)["mean_iou"]
    if task in COMBINED_TASKS:
        metrics["ap50"] = detection_ap50(pred["boxes"], heldout.targets, pred["logits"], heldout.labels)
    return metrics


def threshold_boxes(images: torch.Tensor, margin: float = 8.0) -> torch.Tensor:
    """(N, 4) boxes in [0, 1]: the tight box of each canvas' pixels brighter than its median by `margin` (of 255).
    Exact on an item pasted on a black canvas; a background as bright as the item defeats it."""
    n, _, h, w = images.shape
    gray = images.float().mean(1)  # (N, H, W)
    level = gray.flatten(1).median(1).values.view(n, 1, 1)
    bright = gray > level + margin
    boxes = torch.stack([tight_box(m) for m in bright])
    return boxes / torch.tensor([w, h, w, h], dtype=torch.float32)


def trivial_baseline(cfg: Any, run_dir: str | Path, log=print) -> dict[str, Any]:
    """`cfg.data.task`'s trivial predictor on the run's data (the same splits and task draws as a trained model
    gets), written to RUN_DIR/results.json."""
    from mimkit.config import resolved
    from mimkit.data.datasets import build_data
    from mimkit.data.webdataset.build import require_in_memory
    from mimkit.engine.atomic import atomic_write_text

    cfg = resolved(cfg)
    data = build_data(cfg, log)
    require_in_memory(data, "the trivial baseline (the targets of every training image)")
    num_classes = len(data.classes) if data.classes else None
    metrics = trivial_scores(cfg.data.task, data.train, data.heldout, num_classes)
    results = {
        "task": cfg.data.task,
        "predictor": TRIVIAL_NAMES[cfg.data.task],
        **metrics,
        "train_images": len(data.train),
        "heldout_images": len(data.heldout),
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    return results


TRIVIAL_NAMES = {
    "classification": "majority class",
    "localization": "mean box",
    "cluttered_localization": "mean box",
    "rotation": "median angle",
    "combined": "mean box + majority class",
    "cluttered_combined": "mean box + majority class",
    "depth": "mean depth map",
    "keypoints": "mean keypoints",
    "tracking": "zero displacement",
}
