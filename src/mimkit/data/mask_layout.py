"""How many tokens a mask hides, and on what grid: the arithmetic of data/masks.py without torch, so that the
config checks (a mask that hides nothing or everything) run before torch is imported."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MaskLayout:
    """The token grid of one mask setting; `num_masked` is the same for every sample."""

    kind: str
    grid: int  # tokens per side
    num_tokens: int
    num_masked: int
    cell_grid: int = 0  # SimMIM: mask cells per side
    cell_scale: int = 1  # SimMIM: tokens per cell side
    num_cells_masked: int = 0  # SimMIM


def mask_layout(kind: str, img_size: int, patch_size: int, mask_ratio: float, mask_patch_size: int) -> MaskLayout:
    """The layout, or a ValueError that says why the setting cannot mask (the config turns it into its key)."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask ratio {mask_ratio} must be in (0, 1)")
    grid = img_size // patch_size
    num_tokens = grid**2
    cells = {}
    if kind == "random":
        num_masked = num_tokens - int(num_tokens * (1 - mask_ratio))  # MAE's len_keep rule
    elif kind == "simmim":
        if mask_patch_size % patch_size or img_size % mask_patch_size:
            raise ValueError(
                f"mask patch size {mask_patch_size} must be a multiple of the patch size "
                f"{patch_size} and divide the image size {img_size}"
            )
        cell_grid, cell_scale = img_size // mask_patch_size, mask_patch_size // patch_size
        num_cells_masked = math.ceil(cell_grid**2 * mask_ratio)
        num_masked = num_cells_masked * cell_scale**2
        cells = dict(cell_grid=cell_grid, cell_scale=cell_scale, num_cells_masked=num_cells_masked)
    elif kind == "blockwise":
        num_masked = round(num_tokens * mask_ratio)
    else:
        raise ValueError(f"unknown mask type '{kind}' (random, simmim, blockwise)")
    if not 0 < num_masked < num_tokens:
        raise ValueError(
            f"mask ratio {mask_ratio} masks {num_masked} of {num_tokens} tokens; "
            "at least one must be masked and one visible"
        )
    return MaskLayout(kind, grid, num_tokens, num_masked, **cells)


def default_mask_patch_size(img_size: int, patch_size: int) -> int:
    """SimMIM masks 32-px cells at ImageNet sizes; small images get the largest multiple of the patch size that
    divides the image and leaves at least a 4x4 grid of cells."""
    if img_size % 32 == 0 and 32 % patch_size == 0 and img_size // 32 >= 4:
        return 32
    best = patch_size
    for size in range(patch_size, img_size + 1, patch_size):
        if img_size % size == 0 and img_size // size >= 4:
            best = size
    return best
