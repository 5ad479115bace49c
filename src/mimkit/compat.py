"""The private parts of torch and timm that mimkit relies on, each where no public API does the job, each behind
one small adapter here. An adapter checks that its private piece is there and, when a library release has moved
it, fails with a message naming the library, its version and what mimkit needs, instead of an AttributeError deep
in a training step. tests/test_compat.py runs every adapter against the installed versions, so a library change
fails there first. The supported timm range is pinned in pyproject.toml (TIMM_RANGE repeats it for messages)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

TIMM_RANGE = ">=1.0,<1.1"  # keep equal to the timm requirement in pyproject.toml (a test checks both)


class LibraryChanged(RuntimeError):
    """A private piece of torch or timm that mimkit uses is gone or different in the installed release."""


def _changed(library: str, what: str) -> LibraryChanged:
    import timm

    version = timm.__version__ if library == "timm" else torch.__version__
    wanted = f"timm {TIMM_RANGE}" if library == "timm" else "torch >= 2.4"
    return LibraryChanged(f"{library} {version}: {what}; mimkit is tested with {wanted} (see mimkit/compat.py)")


def vit_pos_embed(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer._pos_embed: prefix tokens (class, registers) and the position embedding, resampled
    for a dynamic image size. timm has no public method for the step between patch embedding and the blocks, which
    MIM encoders must run on their own (masked or visible-only patches)."""
    step = getattr(vit, "_pos_embed", None)
    if step is None:
        raise _changed("timm", f"{type(vit).__name__} has no _pos_embed (prefix tokens + position embedding)")
    return step(tokens)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def has_own_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on `module` itself (not its children): torch has no public query. A module
    with hooks must run its own forward (the partial last block would skip it or hide tokens from it)."""
    try:
        return any(bool(getattr(module, name)) for name in HOOK_DICTS)
    except AttributeError as err:
        raise _changed("torch", f"nn.Module no longer keeps its hooks in {', '.join(HOOK_DICTS)}") from err


def fused_step_divides_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether optimizer.step() reads `grad_scale` and `found_inf` attributes, as torch's fused Adam and AdamW do
    for GradScaler (`_step_supports_amp_scaling`). The Engine uses them to clip and to skip non-finite steps
    inside the fused kernel."""
    return bool(optimizer.defaults.get("fused")) and bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def fused_step(
    optimizer: torch.optim.Optimizer, found_inf: torch.Tensor, grad_scale: torch.Tensor | None = None
) -> None:
    """optimizer.step() with GradScaler's inputs to a fused step: found_inf (1.0 skips the update, on the device)
    and grad_scale (every gradient is divided by it as it is read). Both are attributes on the optimizer, set
    only for this step and removed afterwards, also when the step raises."""
    if not fused_step_divides_gradients(optimizer):
        raise _changed("torch", f"{type(optimizer).__name__}(fused=True) does not take grad_scale/found_inf")
    optimizer.found_inf = found_inf
    if grad_scale is not None:
        optimizer.grad_scale = grad_scale
    try:
        optimizer.step()
    finally:
        optimizer.__dict__.pop("found_inf", None)
        optimizer.__dict__.pop("grad_scale", None)


def foreach_lerp_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], keep: float) -> None:
    """targets = keep * targets + (1 - keep) * sources, in place, for lists of tensors (an exponential moving
    average: MoCo v3's momentum encoder). torch's multi-tensor kernels (`torch._foreach_*`) do it in a few
    launches; there is no public multi-tensor API, so without them it falls back to one op per tensor."""
    mul, add = getattr(torch, "_foreach_mul_", None), getattr(torch, "_foreach_add_", None)
    if mul is None or add is None:
        for target, source in zip(targets, sources):
            target.mul_(keep).add_(source, alpha=1.0 - keep)
        return
    mul(list(targets), keep)
    add(list(targets), list(sources), alpha=1.0 - keep)


def live_worker_processes(pool: Any) -> list:
    """The live worker processes of a concurrent.futures.ProcessPoolExecutor, to terminate them on Ctrl-C (the
    executor has no public way to stop a running job). Empty when the executor no longer exposes them."""
    processes = getattr(pool, "_processes", None) or {}
    return [p for p in processes.values() if p.is_alive()]
