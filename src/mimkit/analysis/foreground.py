"""Foreground patches from pixel content, so attention metrics can leave out a uniform background.

On Fashion-MNIST-like data the border patches are identical black tokens: every query can attend to them alike
(an attention sink), which pulls distances, entropies and head divergences toward whatever the sinks do. A patch is
foreground when its most deviant pixel differs from the image's background level (the median of its border pixels)
by more than `threshold` (a fraction of full scale). Natural photographs have no such background: leave it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimkit.data.transforms import eval_transform, luminance


def foreground_patches(images: torch.Tensor, img_size: int, patch_size: int, threshold: float = 0.1) -> torch.Tensor:
    """(batch, patches) bool, row-major over the patch grid, for uint8 (batch, channels, H, W) images seen at
    `img_size` (resized as the model sees them)."""
    channels = images.shape[1]
    x = luminance(eval_transform(images, img_size, [0.0] * channels, [1.0] * channels))  # (B, 1, S, S) in [0, 1]
    border = torch.cat([x[:, 0, 0, :], x[:, 0, -1, :], x[:, 0, :, 0], x[:, 0, :, -1]], dim=1)
    background = border.median(dim=1).values.view(-1, 1, 1, 1)
    deviation = F.max_pool2d((x - background).abs(), patch_size)  # (B, 1, grid, grid)
    return (deviation > threshold).flatten(1)
