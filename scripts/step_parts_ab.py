"""A/B timing of two parts of MAE's and SimMIM's training step in isolation, forward and backward, at the tiny
preset's and ViT-B/16's shapes, in interleaved passes on this machine:

- loss: the fused pixel losses (`mimkit.fast.pixel_losses`) against the plain tensor code they replace
  (torch.var, a division, autograd), and against that plain code under torch.compile;
- embed: MAE's patch embedding at the visible patches only (`mimkit.fast.visible_embed`) against embedding
  every patch and gathering the visible ones (the official code's and HuggingFace's order);
- gather: index_select on the flattened batch (`index_select_rows`, what `gather_rows` runs on the CPU) against
  torch.gather with the index expanded over the channels (what it runs on CUDA), at the token gathers of MAE's
  decoder;
- attention: torch's scaled_dot_product_attention, forward and backward in bf16 (fp32 on a CPU), with each
  backend torch offers here (cuDNN, flash, memory-efficient, math) and torch's own pick, at MAE ViT-B/16's
  encoder (50 tokens, 12 heads of 64) and decoder (197 tokens, 16 heads of 32) shapes.

    python scripts/step_parts_ab.py loss|embed|gather|attention|all [--device cuda] [--vit-batch N] [--passes 7]
        [--reps 20] [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable

import torch
from timm.layers import PatchEmbed
from torch import nn

from mimkit.bench.timing import time_steps
from mimkit.fast.pixel_losses import patch_l1, patch_mse
from mimkit.fast.rows import gather_rows, index_select_rows
from mimkit.fast.visible_embed import embed_patches_at

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def plain_mse(pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    target = patches.float()
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    return ((pred.float() - target) ** 2).mean()


def plain_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).abs().mean()


def shapes(part: str, vit_batch: int) -> list[tuple]:
    """The tiny preset's shape and ViT-B/16's (224 px) at `vit_batch` for each part: loss (name, (batch, masked
    patches, values per patch)) per method; embed (name, batch, channels, image size, patch, width, visible
    patches); gather (name, tokens (B, N, C), rows kept); attention (name, (batch, heads, tokens, head width))."""
    vit = f"ViT-B/16, batch {vit_batch}"
    return {
        "mae": [("tiny preset", (128, 48, 16)), (vit, (vit_batch, 147, 768))],
        "simmim": [("tiny preset", (128, 38, 16)), (vit, (vit_batch, 118, 768))],
        "embed": [("tiny preset", 128, 1, 32, 4, 96, 16), (vit, vit_batch, 3, 224, 16, 768, 49)],
        "attention": [
            (f"{vit} MAE encoder", (vit_batch, 12, 50, 64)),
            (f"{vit} MAE decoder", (vit_batch, 16, 197, 32)),
        ],
        "gather": [
            ("tiny MAE decoder, last block's masked rows", (128, 65, 64), 48),
            ("tiny MAE decoder, unshuffle", (128, 64, 64), 64),
            (f"{vit} MAE decoder, last block's masked rows", (vit_batch, 197, 512), 147),
        ],
    }[part]


def time_passes(
    steps: dict[str, Callable[[], None]], passes: int, reps: int, device: torch.device
) -> dict[str, list[float]]:
    """Milliseconds per call of each step, one list entry per interleaved pass."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(passes):
        for name, step in steps.items():
            times[name].append(1e3 * time_steps(step, reps, 3, device) / reps)
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    base = statistics.median(next(iter(times.values())))
    print(
        f"{label}: "
        + ", ".join(
            f"{name} {statistics.median(t):.3f} ms ({base / statistics.median(t):.2f}x)" for name, t in times.items()
        ),
        flush=True,
    )


def loss_steps(
    plain: LossFn, fused: LossFn, shape: tuple[int, ...], compiled: bool, device: torch.device
) -> dict[str, Callable[[], None]]:
    """The prediction in the step's precision: bf16 on CUDA (autocast's output), fp32 on a CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pred = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    target = torch.rand(shape, device=device)
    fns: dict[str, LossFn] = {"plain": plain, "fused": fused}
    if compiled:
        fns["plain, compiled"] = torch.compile(plain)
    return {name: (lambda fn=fn: fn(pred, target).backward()) for name, fn in fns.items()}


def embed_steps(
    batch: int, chans: int, size: int, patch: int, width: int, keep: int, device: torch.device
) -> dict[str, Callable[[], None]]:
    """Under bf16 autocast on CUDA, as in training."""
    holder = nn.Module()
    holder.patch_embed = PatchEmbed(img_size=size, patch_size=patch, in_chans=chans, embed_dim=width).to(device)
    images = torch.randn(batch, chans, size, size, device=device)
    ids = torch.argsort(torch.rand(batch, (size // patch) ** 2, device=device), dim=1)[:, :keep]

    def step(embed: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = embed()
            out.float().sum().backward()

        return run

    return {
        "every patch, then gather": step(lambda: gather_rows(holder.patch_embed(images), ids)),
        "visible patches only": step(lambda: embed_patches_at(holder, images, ids)),
    }


def gather_steps(shape: tuple[int, int, int], keep: int, device: torch.device) -> dict[str, Callable[[], None]]:
    x = torch.randn(shape, device=device, requires_grad=True)
    rows = torch.argsort(torch.rand(shape[0], shape[1], device=device), dim=1)[:, :keep]
    grad = torch.randn(shape[0], keep, shape[2], device=device)
    expanded = rows.unsqueeze(-1).expand(-1, -1, shape[2])
    return {
        "torch.gather": lambda: torch.gather(x, 1, expanded).backward(grad),
        "index_select_rows": lambda: index_select_rows(x, rows).backward(grad),
    }


def attention_steps(shape: tuple[int, int, int, int], device: torch.device) -> dict[str, Callable[[], None]]:
    """One step per SDPA backend that runs this shape here (torch's own pick first); a backend that refuses the
    shape or the device is left out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype)

    def step(backend: SDPBackend | None) -> Callable[[], None]:
        def run() -> None:
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(grad)

        return run

    steps: dict[str, Callable[[], None]] = {"torch's pick": step(None)}
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            step(backend)()
        except RuntimeError:  # "No available kernel": not for this device, dtype or shape
            continue
        steps[name.lower()] = step(backend)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["loss", "embed", "gather", "attention", "all"])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--vit-batch", type=int, default=None, help="ViT-B/16 shapes' batch (32 on a CPU, 256 on CUDA)")
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="loss: skip the compiled plain loss")
    args = parser.parse_args()
    device = torch.device(args.device)
    vit_batch = args.vit_batch or (256 if device.type == "cuda" else 32)
    torch.manual_seed(0)
    print(
        f"# {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, {args.passes} interleaved passes of {args.reps} calls",
        flush=True,
    )
    parts = ["loss", "embed", "gather", "attention"] if args.part == "all" else [args.part]
    if "loss" in parts:
        for method, (plain, fused) in {"mae": (plain_mse, patch_mse), "simmim": (plain_l1, patch_l1)}.items():
            for label, shape in shapes(method, vit_batch):
                steps = loss_steps(plain, fused, shape, not args.no_compile, device)
                report(f"{method} loss, {label} {shape}", time_passes(steps, args.passes, args.reps, device))
    if "embed" in parts:
        for label, *shape in shapes("embed", vit_batch):
            report(
                f"MAE patch embedding, {label}",
                time_passes(embed_steps(*shape, device), args.passes, args.reps, device),
            )
    if "gather" in parts:
        for label, shape, keep in shapes("gather", vit_batch):
            report(
                f"{label} {shape} -> {keep}",
                time_passes(gather_steps(shape, keep, device), args.passes, args.reps, device),
            )
    if "attention" in parts:
        for label, shape in shapes("attention", vit_batch):
            report(
                f"attention forward and backward, {label} {shape}",
                time_passes(attention_steps(shape, device), args.passes, args.reps, device),
            )


if __name__ == "__main__":
    main()
