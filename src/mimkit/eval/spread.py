"""Cells over seeds: each task's primary metric and its direction, how a cell is printed (mean ± std), and the
margin a difference must clear before a table calls it one. Light (no torch): the tables, the contrasts and the
scaling study's tables share it."""

from __future__ import annotations

import math
from typing import Any

# the metric each task is judged by, and whether higher is better
PRIMARY = {
    "classification": ("top1", True),
    "localization": ("mean_iou", True),
    "rotation": ("angle_error", False),
    "combined": ("ap50", True),
    "cluttered_combined": ("ap50", True),
    "cluttered_localization": ("mean_iou", True),
    "depth": ("depth_error", False),
    "keypoints": ("keypoint_error", False),
    "tracking": ("displacement_error", False),
}

DECIMALS = {"top1": 2, "mean_iou": 3, "ap50": 3, "angle_error": 2, "depth_error": 4, "keypoint_error": 4}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample std (0 for one value) and count."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def mean_std(value: float, std: float, n: int, digits: int) -> str:
    """A table cell: the mean, and ± the std when more than one seed made it."""
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def within_spread(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The margin two summarized cells (mean, std, n) must exceed before their difference is called one: the larger
    sample std of those measured over 2 or more seeds. A one-seed cell has no spread of its own but the same
    protocol's noise, so it is judged by the other cell's (a one-seed lead of 0.02 over a baseline of 84.55 ± 0.02 is
    not a finding). Zero when neither has a spread (the table then says "one seed")."""
    return max((c["std"] for c in (a, b) if c["n"] >= 2), default=0.0)
