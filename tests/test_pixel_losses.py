"""The hand-fused pixel losses equal the plain tensor code they replace: values and gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mimkit.fast.pixel_losses import norm_pix_target, patch_l1, patch_mean_var, patch_mse


def plain_mse(pred: torch.Tensor, patches: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """MAE's loss as the paper's code writes it: torch.var, a division by the standard deviation, autograd."""
    target = patches.float()
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    return ((pred.float() - target) ** 2).mean()


def plain_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).abs().mean()


def _value_and_grad(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pred = pred.detach().clone().requires_grad_()
    loss = loss_fn(pred, target)
    loss.backward()
    return loss.detach(), pred.grad


@pytest.mark.parametrize("shape", [(4, 12, 16), (2, 147, 768)])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_patch_mse_equals_the_plain_loss(shape, norm_pix):
    torch.manual_seed(0)
    pred, patches = torch.randn(shape), torch.rand(shape) * 3 + 1
    loss, grad = _value_and_grad(lambda p, t: patch_mse(p, t, norm_pix), pred, patches)
    ref_loss, ref_grad = _value_and_grad(lambda p, t: plain_mse(p, t, norm_pix), pred, patches)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape", [(4, 12, 16), (2, 118, 768)])
def test_patch_l1_equals_the_plain_loss(shape):
    torch.manual_seed(1)
    pred, target = torch.randn(shape), torch.randn(shape)
    loss, grad = _value_and_grad(patch_l1, pred, target)
    ref_loss, ref_grad = _value_and_grad(plain_l1, pred, target)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("loss_fn", [patch_mse, patch_l1])
def test_bf16_prediction_gets_a_bf16_gradient_from_an_fp32_loss(loss_fn):
    torch.manual_seed(2)
    pred, target = torch.randn(3, 8, 16).bfloat16(), torch.randn(3, 8, 16)
    loss, grad = _value_and_grad(loss_fn, pred, target)
    plain = (lambda p, t: plain_mse(p, t, True)) if loss_fn is patch_mse else plain_l1
    ref_loss, ref_grad = _value_and_grad(plain, pred, target)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("loss_fn", [patch_mse, patch_l1])
def test_a_target_that_needs_a_gradient_gets_one(loss_fn):
    """The fused Functions give the target no gradient, so a differentiable target takes the plain path."""
    torch.manual_seed(3)
    pred = torch.randn(2, 5, 16, requires_grad=True)
    target = torch.randn(2, 5, 16, requires_grad=True)
    loss_fn(pred, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
    assert pred.grad is not None


def test_patch_statistics_match_torch():
    torch.manual_seed(4)
    patches = torch.rand(3, 7, 48)
    mean, var = patch_mean_var(patches)
    ref_var, ref_mean = torch.var_mean(patches, dim=-1, keepdim=True)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)
    standardised = norm_pix_target(patches)
    torch.testing.assert_close(standardised.mean(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardised.var(-1), torch.ones(3, 7), atol=1e-3, rtol=0)
