"""Training memory without a GPU: the bytes autograd keeps for the backward pass, measured with saved-tensor hooks
on any device, plus weights, gradients and AdamW state. Saved bytes are linear in the batch: measured at two small
batches they split into a per-image part (activations) and a fixed part (e.g. autocast's bf16 weight copies), so
a CPU can estimate what a large batch needs on a GPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def saved_activation_bytes(fn: Callable[[], torch.Tensor], exclude: nn.Module | None = None) -> int:
    """Bytes of the distinct tensors autograd saves while `fn` runs its forward pass (parameters of `exclude` are
    not activations and are left out; views of one storage are counted once)."""
    skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@dataclass
class MemoryEstimate:
    state_bytes: int  # fp32 weights + gradients + AdamW's two moments
    activation_bytes_per_image: float
    fixed_saved_bytes: float  # saved for backward whatever the batch (autocast's low-precision weight copies)

    def total_gb(self, batch: int) -> float:
        return (self.state_bytes + self.fixed_saved_bytes + self.activation_bytes_per_image * batch) / 2**30


def estimate_training_memory(
    model: nn.Module, loss: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, amp: torch.dtype | None
) -> MemoryEstimate:
    """Weights, gradients and AdamW moments (4 fp32 copies of every trainable parameter, frozen ones once) and the
    bytes saved for backward, measured under `amp` autocast on `images` and on its first half (an even batch of at
    least 2), split into per-image and fixed parts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    full, half = images.shape[0], images.shape[0] // 2
    if half < 1 or full != 2 * half:
        raise ValueError(f"estimate_training_memory needs an even batch of at least 2, got {full}")
    saved = {}
    for n in (half, full):
        ctx = torch.autocast(images.device.type, dtype=amp) if amp is not None else torch.autocast("cpu", enabled=False)
        with ctx:
            saved[n] = saved_activation_bytes(lambda: loss(images[:n]), exclude=model)
    per_image = (saved[full] - saved[half]) / (full - half)
    return MemoryEstimate(4 * (4 * trainable + frozen), per_image, max(0.0, saved[half] - half * per_image))


def run_memory_estimate(cfg, batch: int | None = None, probe_batch: int = 4) -> dict:
    """`mimkit bench memory`: the estimate for a config's method at `batch` (default train.batch_size per process)
    in the precision the config trains with on a GPU (train.precision; auto = bf16)."""
    from mimkit.config import ConfigError, resolved
    from mimkit.methods import build_method, method_spec

    cfg = resolved(cfg)
    if method_spec(cfg).needs_teacher:
        raise ConfigError("bench memory: distillation needs its teacher; estimate the student as a finetune config")
    batch = batch or cfg.train.batch_size // cfg.train.accum_steps
    from mimkit.engine.trainer import resolve_precision

    amp = resolve_precision(cfg.train.precision, torch.device("cuda"))  # what the config trains with on a GPU
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    torch.manual_seed(0)
    method = build_method(cfg).train()
    d = cfg.data
    images = torch.randn(probe_batch, d.in_chans, d.img_size, d.img_size)
    labels = torch.zeros(probe_batch, dtype=torch.long)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return method({"images": x, "keys": torch.arange(len(x)), "labels": labels[: len(x)]})["loss"]

    estimate = estimate_training_memory(method, loss, images, amp)
    return {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "img_size": d.img_size,
        "batch": batch,
        "precision": precision,
        "grad_checkpointing": cfg.train.grad_checkpointing,
        "state_gb": estimate.state_bytes / 2**30,
        "activations_gb_per_image": estimate.activation_bytes_per_image / 2**30,
        "fixed_saved_gb": estimate.fixed_saved_bytes / 2**30,
        "total_gb": estimate.total_gb(batch),
    }
