"""FLOPs of a training step and the device's measured matmul peak: the two halves of model-FLOPs utilisation."""

from __future__ import annotations

import time
from typing import Callable

import torch

from mimkit.bench.timing import sync


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs `fn` executes (forward and backward when it calls .backward()), counted by torch.utils.flop_counter.
    Attention runs the math kernel here: the counter has no formula for the fused CPU kernels, which would drop
    q k^T and attn v from the count."""
    return int(sum(count_flops_by_op(fn).values()))


def count_flops_by_op(fn: Callable[[], None]) -> dict[str, int]:
    """`count_flops` per operator ('aten.mm', 'aten.bmm', ...), so the FLOPs can be split by kind of work."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def matmul_peak_flops(
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    size: int | None = None,
    seconds: float = 1.0,
    windows: int = 3,
) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device`: the practical peak MFU is measured against. The
    best of `windows` timing windows sharing `seconds`: a busy spell of a shared machine (or clocks still ramping
    up) only ever slows a window down, and a low peak would overstate every MFU."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(windows):
        reps, elapsed = 0, 0.0
        t0 = time.perf_counter()
        while elapsed < seconds / windows:
            for _ in range(10):
                a @ b
            sync(device)
            reps += 10
            elapsed = time.perf_counter() - t0
        best = max(best, 2 * size**3 * reps / elapsed)
    return best


def flop_rate(flops_per_s: float) -> str:
    """A FLOP rate in the unit that keeps 2-3 digits: a CPU's 95 GFLOP/s is not '0.1 TFLOP/s'."""
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if flops_per_s >= scale:
            return f"{flops_per_s / scale:.3g} {unit}"
    return f"{flops_per_s / 1e6:.3g} MFLOP/s"
