"""What the masked-image-modeling methods (MAE, SimMIM, TinyMIM's auxiliary loss) share: the output of a masked
forward pass and the reconstruction figure's images (visible pixels pasted over the prediction)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimkit.data.keyed_random import FIXED_EPOCH, sample_keys


@dataclass
class MIMOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # MAE: (B, L, p*p*C) patch predictions; SimMIM: (B, C, H, W) image
    mask: torch.Tensor  # (B, L) bool, True = masked


def token_mask_to_pixels(mask: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, L) token mask -> (B, 1, H, W) pixel mask."""
    m = mask.float().view(-1, grid[0], grid[1])
    return m.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def paste_visible(
    imgs: torch.Tensor, pred_imgs: torch.Tensor, mask: torch.Tensor, patch: int, grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    m = token_mask_to_pixels(mask, patch, grid).to(imgs.dtype)
    return {
        "original": imgs,
        "masked": imgs * (1 - m),
        "reconstruction": imgs * (1 - m) + pred_imgs * m,
        "pixel_mask": m,
    }


def mask_keys(batch: dict, fixed: bool) -> torch.Tensor:
    """The keys a batch's masks are drawn from: the batch's own (sample and epoch: a new mask every epoch), or with
    `fixed` (method.fixed_masks) the sample's evaluation keys, so a training image is masked the same way at every
    step and as its held-out or train-subset evaluation masks it. Evaluation batches carry no `ids`: their keys are
    already the fixed ones."""
    if not fixed or "ids" not in batch:
        return batch["keys"]
    from mimkit.data.loader import to_device  # pinned and asynchronous on CUDA: the step does not wait for the GPU

    return to_device(sample_keys(batch["ids"], FIXED_EPOCH), batch["keys"].device)
