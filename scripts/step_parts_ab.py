"""A/B timing of two parts of MAE's and SimMIM's training step in isolation, forward and backward, at the tiny
preset's and ViT-B/16's shapes, in interleaved passes on this machine:

- loss: the fused pixel losses (`mimkit.methods.pixel_losses`) against the plain tensor code they replace
  (torch.var, a division, autograd), and against that plain code under torch.compile;
- embed: MAE's patch embedding at the visible patches only (`mimkit.models.visible_embed`) against embedding
  every patch and gathering the visible ones (the official code's and HuggingFace's order);
- gather: `gather_rows` (index_select on the flattened batch) against torch.gather with the index expanded over
  the channels, at the token gathers of MAE's decoder.

    python scripts/step_parts_ab.py loss|embed|gather [--passes 7] [--reps 20] [--no-compile]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from timm.layers import PatchEmbed
from torch import nn

from mimkit.methods.pixel_losses import patch_l1, patch_mse
from mimkit.models.row_block import gather_rows
from mimkit.models.visible_embed import embed_patches_at

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def plain_mse(pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    target = patches.float()
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    return ((pred.float() - target) ** 2).mean()


def plain_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).abs().mean()


# (name, masked patches per batch: batch, masked tokens, values per patch)
SHAPES = {"mae": [("tiny preset", (128, 48, 16)), ("ViT-B/16, batch 32", (32, 147, 768))],
          "simmim": [("tiny preset", (128, 38, 16)), ("ViT-B/16, batch 32", (32, 118, 768))]}


# (name, batch, channels, image size, patch, width, visible patches)
EMBED_SHAPES = [("tiny preset", 128, 1, 32, 4, 96, 16), ("ViT-B/16, batch 32", 32, 3, 224, 16, 768, 49)]


# (name, tokens (B, N, C), rows kept per image)
GATHER_SHAPES = [("tiny MAE decoder, last block's masked rows", (128, 65, 64), 48),
                 ("tiny MAE decoder, unshuffle", (128, 64, 64), 64),
                 ("ViT-B/16 MAE decoder, last block's masked rows, batch 32", (32, 197, 512), 147)]


def time_passes(steps: dict[str, Callable[[], None]], passes: int, reps: int) -> dict[str, list[float]]:
    """Milliseconds per call of each step, one list entry per interleaved pass."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(passes):
        for name, step in steps.items():
            for _ in range(3):
                step()
            start = time.perf_counter()
            for _ in range(reps):
                step()
            times[name].append(1e3 * (time.perf_counter() - start) / reps)
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    base = statistics.median(next(iter(times.values())))
    print(f"{label}: " + ", ".join(f"{name} {statistics.median(t):.3f} ms ({base / statistics.median(t):.2f}x)"
                                   for name, t in times.items()))


def loss_steps(plain: LossFn, fused: LossFn, shape: tuple[int, ...], compiled: bool) -> dict[str, Callable[[], None]]:
    pred, target = torch.randn(shape, requires_grad=True), torch.rand(shape)
    fns: dict[str, LossFn] = {"plain": plain, "fused": fused}
    if compiled:
        fns["plain, compiled"] = torch.compile(plain)
    return {name: (lambda fn=fn: fn(pred, target).backward()) for name, fn in fns.items()}


def embed_steps(batch: int, chans: int, size: int, patch: int, width: int, keep: int) -> dict[str, Callable[[], None]]:
    holder = nn.Module()
    holder.patch_embed = PatchEmbed(img_size=size, patch_size=patch, in_chans=chans, embed_dim=width)
    images = torch.randn(batch, chans, size, size)
    ids = torch.argsort(torch.rand(batch, (size // patch) ** 2), dim=1)[:, :keep]
    return {"every patch, then gather": lambda: gather_rows(holder.patch_embed(images), ids).sum().backward(),
            "visible patches only": lambda: embed_patches_at(holder, images, ids).sum().backward()}


def gather_steps(shape: tuple[int, int, int], keep: int) -> dict[str, Callable[[], None]]:
    x = torch.randn(shape, requires_grad=True)
    rows = torch.argsort(torch.rand(shape[0], shape[1]), dim=1)[:, :keep]
    grad = torch.randn(shape[0], keep, shape[2])
    expanded = rows.unsqueeze(-1).expand(-1, -1, shape[2])
    return {"torch.gather": lambda: torch.gather(x, 1, expanded).backward(grad),
            "gather_rows": lambda: gather_rows(x, rows).backward(grad)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["loss", "embed", "gather"])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="loss: skip the compiled plain loss")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.part == "gather":
        for label, shape, keep in GATHER_SHAPES:
            report(f"{label} {shape} -> {keep}", time_passes(gather_steps(shape, keep), args.passes, args.reps))
        return
    if args.part == "embed":
        for label, *shape in EMBED_SHAPES:
            report(f"MAE patch embedding, {label}", time_passes(embed_steps(*shape), args.passes, args.reps))
        return
    for method, (plain, fused) in {"mae": (plain_mse, patch_mse), "simmim": (plain_l1, patch_l1)}.items():
        for label, shape in SHAPES[method]:
            report(f"{method} loss, {label} {shape}",
                   time_passes(loss_steps(plain, fused, shape, not args.no_compile), args.passes, args.reps))


if __name__ == "__main__":
    main()
