"""Geometric task data built from a labelled image set (small analogues of the Dark Secrets paper's tasks):

- localisation: the item is pasted at a random position and scale on a larger blank canvas; the target is its tight
  box (x1, y1, x2, y2) in [0, 1] canvas coordinates;
- rotation: the image is rotated by a random angle in [-max, max] degrees; the target is the angle;
- cluttered localisation, keypoints, depth and tracking: scenes on textured backgrounds among fragments of other
  items, whose targets need spatial features (see each generator).

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


def textured_background(keys: torch.Tensor, channels: int, canvas: int, seed: int) -> torch.Tensor:
    """(N, C, canvas, canvas) float in [0, 255]: smooth blobs plus fine grain at a random level and contrast, as
    bright as the items often enough that no intensity threshold separates item from background."""
    n = len(keys)
    u = keyed_uniform(keys, 18, seed, STREAM_TASK + 2)
    smooth = F.interpolate(u[:, :16].view(n, 1, 4, 4), size=(canvas, canvas), mode="bicubic", align_corners=False)
    fine = keyed_uniform(keys, canvas * canvas, seed, STREAM_TASK + 3).view(n, 1, canvas, canvas)
    level, contrast = 0.5 * u[:, 16].view(n, 1, 1, 1), (0.3 + 0.6 * u[:, 17]).view(n, 1, 1, 1)
    texture = (level + contrast * (0.6 * smooth.clamp(0, 1) + 0.4 * fine)).clamp(0, 1) * 255
    return texture.expand(n, channels, canvas, canvas).clone()


def _resized(image: torch.Tensor, side: int) -> torch.Tensor:
    """(C, h, w) uint8 -> (C, side, side) float, antialiased."""
    return F.interpolate(image[None].float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True)[
        0
    ].clamp(0, 255)


def _paste(canvas: torch.Tensor, item: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Paste the item's own pixels (those above a faint level: not its black surround) onto `canvas` in place;
    returns the (side, side) mask of the pixels written."""
    side = item.shape[-1]
    mask = item.amax(0) > ITEM_LEVEL
    region = canvas[:, top : top + side, left : left + side]
    region[:, mask] = item[:, mask]
    return mask


ITEM_LEVEL = 8.0  # of 255: an item pixel, rather than the black surround Fashion-MNIST items sit on


def extreme_points(mask: torch.Tensor) -> torch.Tensor:
    """(4, 2) pixel-centre coordinates (x, y) of a (H, W) mask's top-most, bottom-most, left-most and right-most
    points (ExtremeNet's keypoints), each at the middle of the mask's pixels on that extreme row or column."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:
        h, w = mask.shape
        return torch.tensor([[w / 2, h / 2]] * 4)
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    mid = lambda idx: float(idx.float().mean()) + 0.5  # noqa: E731
    return torch.tensor(
        [
            [mid(torch.nonzero(mask[top]).flatten()), top + 0.5],
            [mid(torch.nonzero(mask[bottom]).flatten()), bottom + 0.5],
            [left + 0.5, mid(torch.nonzero(mask[:, left]).flatten())],
            [right + 0.5, mid(torch.nonzero(mask[:, right]).flatten())],
        ]
    )


def _paste_fragments(canvas: torch.Tensor, data: ImageSet, i: int, draws: torch.Tensor) -> None:
    """Paste onto image i's (C, S, S) canvas, in place, one distractor per row of `draws` (6 uniforms each): a
    random quarter to half of another item of the set, at 15-35% of the canvas side, anywhere on it."""
    n, size, side_of = len(data.images), data.images.shape[-1], canvas.shape[-1]
    for d in draws:
        other = data.images[(i + 1 + int(d[0] * (n - 1))) % n] if n > 1 else data.images[i]
        crop = max(4, int(round(size * (0.5 + 0.25 * d[1].item()))))
        cy, cx = int(d[2] * (size - crop + 1)), int(d[3] * (size - crop + 1))
        side = max(3, int(round(side_of * (0.15 + 0.2 * d[4].item()))))
        where = int(d[5] * (side_of - side + 1) ** 2)
        fragment = _resized(other[:, cy : cy + crop, cx : cx + crop], side)
        _paste(canvas, fragment, where // (side_of - side + 1), where % (side_of - side + 1))


def make_cluttered_localization(
    data: ImageSet,
    canvas: int,
    scale: tuple[float, float] = (0.4, 0.8),
    seed: int = 0,
    distractors: int = 2,
    target: str = "box",
) -> TaskSet:
    """Localisation that thresholding and the mean box cannot solve: the item (side uniform in `scale` x canvas)
    lies on a textured background among `distractors` fragments of other items (a random quarter to half of one,
    at 15-35% of the canvas), drawn first so the item stays whole. The target is the item's tight box (x1, y1, x2,
    y2), or with `target='keypoints'` its four extreme points (x, y of the top-most, bottom-most, left-most and
    right-most), in [0, 1] canvas coordinates."""
    n, c, _, _ = data.images.shape
    keys = sample_keys(data.ids, 0)
    u = keyed_uniform(keys, 3 + 6 * distractors, seed, STREAM_TASK + 4)
    out = textured_background(keys, c, canvas, seed)
    boxes = torch.empty(n, 4 if target == "box" else 8)
    for i in range(n):
        _paste_fragments(out[i], data, i, u[i, 3 : 3 + 6 * distractors].view(distractors, 6))
        side = max(4, min(canvas, int(round(canvas * (scale[0] + u[i, 0].item() * (scale[1] - scale[0]))))))
        top = int(u[i, 1].item() * (canvas - side + 1))
        left = int(u[i, 2].item() * (canvas - side + 1))
        mask = _paste(out[i], _resized(data.images[i], side), top, left)
        if target == "box":
            boxes[i] = (tight_box(mask) + torch.tensor([left, top, left, top])) / canvas
        else:
            boxes[i] = ((extreme_points(mask) + torch.tensor([left, top])) / canvas).flatten()
    labels = data.labels.clone() if data.labels is not None else None
    return TaskSet(out.round().to(torch.uint8), labels, boxes, data.ids.clone())


DEPTH_GRID = 8  # the depth map's resolution: an 8 x 8 grid whatever the network's patch grid


def make_depth(data: ImageSet, canvas: int, items: int = 3, seed: int = 0) -> TaskSet:
    """A rendered scene with a monocular depth cue: `items` items (this image and others of the set) at sides
    uniform in 25-70% of the canvas, drawn far to near (smaller first, so larger items occlude them) on a textured
    background. The target is a DEPTH_GRID x DEPTH_GRID map of nearness: the mean over each cell of the side (as
    a fraction of the canvas) of the item visible at each pixel, 0 for the background."""
    n, c, _, _ = data.images.shape
    keys = sample_keys(data.ids, 0)
    u = keyed_uniform(keys, 4 * items, seed, STREAM_TASK + 5)
    out = textured_background(keys, c, canvas, seed)
    maps = torch.zeros(n, 1, canvas, canvas)
    for i in range(n):
        draws = u[i].view(items, 4)
        sides = [max(3, int(round(canvas * (0.25 + 0.45 * d[0].item())))) for d in draws]
        for k in sorted(range(items), key=lambda k: sides[k]):
            d, side = draws[k], sides[k]
            other = data.images[i] if k == 0 else data.images[(i + 1 + int(d[1] * (n - 1))) % n]
            top, left = int(d[2] * (canvas - side + 1)), int(d[3] * (canvas - side + 1))
            mask = _paste(out[i], _resized(other, side), top, left)
            maps[i, 0, top : top + side, left : left + side][mask] = side / canvas
    targets = F.adaptive_avg_pool2d(maps, DEPTH_GRID).flatten(1)
    labels = data.labels.clone() if data.labels is not None else None
    return TaskSet(out.round().to(torch.uint8), labels, targets, data.ids.clone())


def make_tracking(
    data: ImageSet,
    canvas: int,
    scale: tuple[float, float] = (0.3, 0.5),
    seed: int = 0,
    distractors: int = 2,
    max_shift: float = 0.25,
) -> TaskSet:
    """Object tracking in miniature: two frames of one scene, stacked on the channel axis ((N, 2C, S, S): frame 1's
    channels, then frame 2's). The textured background and `distractors` fragments of other items stay put; the
    item (side uniform in `scale` x canvas) moves by a whole-pixel (dx, dy), each uniform in [-max_shift,
    max_shift] x canvas, from a position drawn so that it lies inside the canvas in both frames. The target is
    (dx, dy) in canvas fractions; zero motion is the trivial predictor. Telling what moved needs features that
    match one frame's patches to the other's."""
    n, c, _, _ = data.images.shape
    keys = sample_keys(data.ids, 0)
    u = keyed_uniform(keys, 5 + 6 * distractors, seed, STREAM_TASK + 6)
    scenes = textured_background(keys, c, canvas, seed)
    frames = torch.empty(n, 2 * c, canvas, canvas)
    moves = torch.empty(n, 2)
    for i in range(n):
        _paste_fragments(scenes[i], data, i, u[i, 5:].view(distractors, 6))
        side = max(4, min(canvas, int(round(canvas * (scale[0] + u[i, 0].item() * (scale[1] - scale[0]))))))
        room = canvas - side  # the item's positions span 0..room on each axis
        dx, dy = (max(-room, min(room, round((2 * u[i, k].item() - 1) * max_shift * canvas))) for k in (1, 2))
        # first-frame positions from which the moved item stays inside: max(0, -d) .. room - max(0, d)
        left = max(0, -dx) + int(u[i, 3].item() * (room - abs(dx) + 1))
        top = max(0, -dy) + int(u[i, 4].item() * (room - abs(dy) + 1))
        item = _resized(data.images[i], side)
        first, second = scenes[i].clone(), scenes[i].clone()
        _paste(first, item, top, left)
        _paste(second, item, top + dy, left + dx)
        frames[i] = torch.cat([first, second])
        moves[i] = torch.tensor([dx, dy], dtype=torch.float32) / canvas
    labels = data.labels.clone() if data.labels is not None else None
    return TaskSet(frames.round().to(torch.uint8), labels, moves, data.ids.clone())
