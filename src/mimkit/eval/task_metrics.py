"""Metrics of the geometric tasks: box IoU, the share of boxes with IoU >= 0.5, detection-style AP@0.5 with
confidence scores, mean absolute angle error, keypoint distance, depth-map error and tracking's displacement error."""

from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of (N, 4) boxes (x1, y1, x2, y2); degenerate boxes have zero area."""
    a, b = a.float(), b.float()
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def average_precision(correct: torch.Tensor, scores: torch.Tensor) -> float:
    """AP of one prediction per image against one ground truth per image (so recall's denominator is N):
    predictions ranked by score, precision made monotone, area under the precision-recall steps (VOC all-point).
    Tied scores count as one threshold."""
    n = len(correct)
    if n == 0:
        return 0.0
    order = torch.argsort(scores, descending=True, stable=True)
    hits, s = correct[order].float(), scores[order]
    last_of_tie = torch.ones(n, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    tp = torch.cumsum(hits, 0)[last_of_tie]
    count = torch.arange(1, n + 1, dtype=torch.float32)[last_of_tie]
    precision, recall = tp / count, tp / n
    precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    steps = torch.cat([recall[:1], recall[1:] - recall[:-1]])
    return float((steps * precision).sum())


def localization_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    iou = box_iou(pred, target)
    return {"mean_iou": float(iou.mean()), "iou50": float((iou >= 0.5).float().mean())}


def detection_ap50(
    pred_boxes: torch.Tensor, target_boxes: torch.Tensor, class_scores: torch.Tensor, labels: torch.Tensor
) -> float:
    """Combined task: a detection is right when its class is right and its IoU >= 0.5; ranked by class score."""
    conf, cls = class_scores.softmax(-1).max(-1)
    correct = (cls == labels) & (box_iou(pred_boxes, target_boxes) >= 0.5)
    return average_precision(correct, conf)


def angle_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error in degrees."""
    return float((pred.flatten() - target.flatten()).abs().mean())


def depth_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error of nearness maps (item side as a fraction of the canvas; 0 is background), per cell."""
    return float((pred.float() - target.float()).abs().mean())


def keypoint_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Euclidean distance between predicted and true keypoints, (N, K * 2) in [0, 1] canvas coordinates, as a
    fraction of the canvas side (multiply by the side for pixels)."""
    diff = (pred.float() - target.float()).view(len(pred), -1, 2)
    return float(diff.norm(dim=-1).mean())


def displacement_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Tracking: mean Euclidean distance between predicted and true (dx, dy), in fractions of the canvas side."""
    return float((pred.float() - target.float()).norm(dim=-1).mean())
