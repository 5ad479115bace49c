"""Geometric task data built from a labelled image set (small analogues of the Dark Secrets paper's tasks):

- localisation: the item is pasted at a random position and scale on a larger blank canvas; the target is its tight
  box (x1, y1, x2, y2) in [0, 1] canvas coordinates;
- rotation: the image is rotated by a random angle in [-max, max] degrees; the target is the angle.

Every draw is keyed by (seed, sample id), so a task set is identical on every run, process and device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimkit.data.imageset import ImageSet
from mimkit.data.keyed_random import keyed_uniform, sample_keys

STREAM_TASK = 11


@dataclass
class TaskSet:
    images: torch.Tensor  # (N, C, S, S) uint8
    labels: torch.Tensor | None  # (N,) class of the item
    targets: torch.Tensor  # (N, 4) boxes in [0, 1], or (N, 1) angles in degrees
    ids: torch.Tensor


def tight_box(mask: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) in pixels, end-exclusive, of the True pixels of a (H, W) mask (whole image if empty)."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:
        return torch.tensor([0.0, 0.0, float(mask.shape[1]), float(mask.shape[0])])
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


def make_localization(data: ImageSet, canvas: int, scale: tuple[float, float] = (0.3, 0.8), seed: int = 0) -> TaskSet:
    """Paste each item, resized to a random side of `scale` x canvas, at a random position inside the canvas."""
    n, c, size, _ = data.images.shape
    u = keyed_uniform(sample_keys(data.ids, 0), 3, seed, STREAM_TASK)
    out = torch.zeros(n, c, canvas, canvas, dtype=torch.uint8)
    boxes = torch.empty(n, 4)
    for i in range(n):
        side = int(round(canvas * (scale[0] + u[i, 0].item() * (scale[1] - scale[0]))))
        side = max(4, min(side, canvas))
        item = (
            F.interpolate(
                data.images[i : i + 1].float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)[0]
        )
        top = int(u[i, 1].item() * (canvas - side + 1))
        left = int(u[i, 2].item() * (canvas - side + 1))
        out[i, :, top : top + side, left : left + side] = item
        box = tight_box(item.amax(0) > 0)
        boxes[i] = (box + torch.tensor([left, top, left, top])) / canvas
    labels = data.labels.clone() if data.labels is not None else None
    return TaskSet(out, labels, boxes, data.ids.clone())


def make_rotation(data: ImageSet, max_degrees: float = 90.0, seed: int = 0) -> TaskSet:
    """Rotate each image about its centre (bilinear, zero fill); the target is the angle (counter-clockwise)."""
    u = keyed_uniform(sample_keys(data.ids, 0), 1, seed, STREAM_TASK + 1)[:, 0]
    angles = (u * 2 - 1) * max_degrees
    theta = torch.deg2rad(angles)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates: the inverse rotation of the image
    matrix = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(matrix, list(data.images.shape), align_corners=False)
    rotated = F.grid_sample(data.images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = data.labels.clone() if data.labels is not None else None
    return TaskSet(rotated.round().clamp(0, 255).to(torch.uint8), labels, angles[:, None], data.ids.clone())
