"""The pixel losses of MAE and SimMIM's training step, fused by hand: one saved tensor, one backward kernel.

Why: written as plain tensor code, MAE's normalised-pixel MSE runs about ten elementwise kernels forward and five
backward, and torch's CPU `var` over a patch's few values is slow (1.7 ms for (128, 48, 16) patches, where `mean`
takes 0.05 ms). Both losses only need the difference `pred - target` for their gradient, so each is an autograd
Function that keeps that difference and computes the gradient from it in one expression. Measured forward and
backward on the 2-core CPU: 4.3x (tiny preset) and 2.7-3.2x (ViT-B/16 shapes) for MAE's loss, 1.3-1.6x for SimMIM's
(scripts/step_parts_ab.py; docs/performance.md). The results equal the plain code's up to float rounding (tested).
"""
from __future__ import annotations

import torch


def _centred_var(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch's mean, the patches minus it, and the unbiased variance, over the last dimension, in two passes:
    torch.var's CPU kernel is ~30x slower than a mean over a short last dimension."""
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


class _PatchMSE(torch.autograd.Function):
    """mean((pred - target)^2) with target = the patches, standardised per patch when `norm_pix`."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, patches: torch.Tensor, norm_pix: bool, eps: float) -> torch.Tensor:
        target = patches.float()
        diff = pred.float() - (norm_pix_target(target, eps) if norm_pix else target)
        ctx.save_for_backward(diff)
        ctx.pred_dtype = pred.dtype
        return diff.square().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (diff,) = ctx.saved_tensors
        return (diff * (2.0 * grad / diff.numel())).to(ctx.pred_dtype), None, None, None


class _L1(torch.autograd.Function):
    """mean(|pred - target|)."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = pred.float() - target.float()
        ctx.save_for_backward(diff)
        ctx.pred_dtype = pred.dtype
        return diff.abs().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (diff,) = ctx.saved_tensors
        return (diff.sign() * (grad / diff.numel())).to(ctx.pred_dtype), None


def patch_mse(pred: torch.Tensor, patches: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE's loss over already-gathered patches: mean squared error against the patches, each standardised by
    its own mean and variance with `norm_pix`. fp32 whatever `pred`'s dtype. Differentiable in `pred` only; a
    target that needs a gradient takes the plain path."""
    if patches.requires_grad:
        target = norm_pix_target(patches.float(), eps) if norm_pix else patches.float()
        return (pred.float() - target).square().mean()
    return _PatchMSE.apply(pred, patches, norm_pix, eps)


def patch_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimMIM's loss over already-gathered patches: mean absolute error, fp32. Differentiable in `pred` only; a
    target that needs a gradient takes the plain path."""
    if target.requires_grad:
        return (pred.float() - target.float()).abs().mean()
    return _L1.apply(pred, target)
