"""Mask generators on the token grid: MAE random, SimMIM cell masks, BEiT block-wise masks.

Each returns a bool tensor (batch, tokens), True = masked, with the SAME number of masked tokens for every sample,
so MAE's visible-only encoder can batch and losses average the same way on any number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import torch

from mimkit.data.keyed_random import STREAM_MASK, keyed_uniform
from mimkit.data.mask_layout import mask_layout


class MaskGenerator:
    """`generator(keys, seed)` -> (B, L) bool masks; every random draw is keyed by the sample, see keyed_random."""

    def __init__(self, kind: str, img_size: int, patch_size: int, mask_ratio: float, mask_patch_size: int):
        # kind, grid, num_tokens, num_masked and SimMIM's cell_grid, cell_scale, num_cells_masked
        vars(self).update(dataclasses.asdict(mask_layout(kind, img_size, patch_size, mask_ratio, mask_patch_size)))
        self.mask_ratio = mask_ratio

    def noise(self, keys: torch.Tensor, seed: int) -> torch.Tensor:
        """MAE-style noise: argsort keeps the lowest values. Masked tokens get noise >= 1."""
        if self.kind == "random":
            return keyed_uniform(keys, self.num_tokens, seed, STREAM_MASK)
        return self(keys, seed).float() + keyed_uniform(keys, self.num_tokens, seed, STREAM_MASK + 100)

    def __call__(self, keys: torch.Tensor, seed: int) -> torch.Tensor:
        if self.kind == "random":
            return mask_from_noise(keyed_uniform(keys, self.num_tokens, seed, STREAM_MASK), self.num_masked)
        if self.kind == "simmim":
            return self._simmim(keys, seed)
        return self._blockwise(keys, seed)

    def _simmim(self, keys: torch.Tensor, seed: int) -> torch.Tensor:
        cells = mask_from_noise(keyed_uniform(keys, self.cell_grid**2, seed, STREAM_MASK), self.num_cells_masked)
        cells = cells.view(-1, self.cell_grid, self.cell_grid)
        tokens = cells.repeat_interleave(self.cell_scale, 1).repeat_interleave(self.cell_scale, 2)
        return tokens.reshape(len(keys), self.num_tokens)

    def _blockwise(self, keys: torch.Tensor, seed: int) -> torch.Tensor:
        masks = [
            blockwise_mask(self.grid, self.num_masked, random.Random(int(k) ^ (seed << 32)))
            for k in keys.cpu().tolist()
        ]
        return torch.from_numpy(np.stack(masks)).reshape(len(keys), -1).to(keys.device)


def mask_from_noise(noise: torch.Tensor, num_masked: int) -> torch.Tensor:
    """MAE's rule: sort the noise, keep the lowest `L - num_masked`, mask the rest."""
    num_keep = noise.shape[1] - num_masked
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise, dtype=torch.bool)
    mask[:, :num_keep] = False
    return torch.gather(mask, 1, ids_restore)


def blockwise_mask(
    grid: int, num_masked: int, rng: random.Random, min_block: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3)
) -> np.ndarray:
    """BEiT's block-wise masking: add random rectangles of tokens until `num_masked` are covered, then (BEiT stops
    short when no block fits) top up with random single tokens so every sample masks exactly `num_masked`."""
    mask = np.zeros((grid, grid), dtype=bool)
    min_block = min(min_block, max(1, num_masked // 4))
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < num_masked:
        budget = num_masked - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, max(min_block, budget))
            ratio = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * ratio)))
            w = int(round(math.sqrt(area / ratio)))
            if 0 < h < grid and 0 < w < grid:
                top, left = rng.randint(0, grid - h), rng.randint(0, grid - w)
                window = mask[top : top + h, left : left + w]
                new = h * w - int(window.sum())
                if 0 < new <= budget:
                    window[:] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    if count < num_masked:
        free = np.flatnonzero(~mask.reshape(-1))
        pick = rng.sample(list(free), num_masked - count)
        mask.reshape(-1)[pick] = True
    return mask
