"""The pixel losses of MAE and SimMIM's training step, fused by hand: one saved tensor, one backward expression.

Why: written as plain tensor code, MAE's normalised-pixel MSE runs about ten elementwise kernels forward and five
backward, and torch's CPU `var` over a patch's few values is far slower than a mean. Both losses only need the
difference `pred - target` for their gradient, so one autograd Function keeps that difference and computes either
gradient from it in one expression. What it gains, on the CPU and on a GPU, is in docs/performance.md ("The fast
path"; scripts/step_parts_ab.py measures it). The results equal the plain code's up to float rounding (tested).
"""

from __future__ import annotations

import torch


def _centred_var(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch's mean, the patches minus it, and the unbiased variance, over the last dimension, in two passes:
    torch.var's CPU kernel is much slower than a mean over a short last dimension."""
    mean = patches.mean(dim=-1, keepdim=True)
    centred = patches - mean
    return mean, centred, centred.square().sum(dim=-1, keepdim=True) / (patches.shape[-1] - 1)


def patch_mean_var(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and unbiased variance (keepdim)."""
    mean, _, var = _centred_var(patches)
    return mean, var


def norm_pix_target(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch standardised by its own mean and (unbiased) variance."""
    _, centred, var = _centred_var(target)
    return centred * torch.rsqrt(var + eps)


class _MeanOfDiff(torch.autograd.Function):
    """mean((pred - target)^2), or mean(|pred - target|), differentiable in `pred`: it saves the difference alone,
    and the gradient is one expression of it. First derivatives only: a gradient penalty needs the plain code."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, squared: bool) -> torch.Tensor:
        diff = pred.float() - target
        ctx.save_for_backward(diff)
        ctx.pred_dtype, ctx.squared = pred.dtype, squared
        return diff.square().mean() if squared else diff.abs().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (diff,) = ctx.saved_tensors
        scale = grad / diff.numel()
        local = diff * (2.0 * scale) if ctx.squared else diff.sign() * scale
        return local.to(ctx.pred_dtype), None, None


def _mean_of_diff(pred: torch.Tensor, target: torch.Tensor, squared: bool) -> torch.Tensor:
    """fp32 whatever `pred`'s dtype; a target that needs a gradient takes the plain (autograd) path."""
    target = target.float()
    if target.requires_grad:
        diff = pred.float() - target
        return diff.square().mean() if squared else diff.abs().mean()
    return _MeanOfDiff.apply(pred, target, squared)


def patch_mse(pred: torch.Tensor, patches: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE's loss over already-gathered patches: mean squared error against the patches, each standardised by
    its own mean and variance with `norm_pix`."""
    target = norm_pix_target(patches.float(), eps) if norm_pix else patches
    return _mean_of_diff(pred, target, squared=True)


def patch_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimMIM's loss over already-gathered patches: mean absolute error."""
    return _mean_of_diff(pred, target, squared=False)
