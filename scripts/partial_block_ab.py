"""A/B timing of the partial last block, `Method.fast_path` on and off, timed in interleaved passes on this
machine. mae and simmim: the Engine's training step on the bench suite's tiny preset. mocov3: forward and backward
(no optimizer) of the `mocov3_fmnist_tiny` recipe at batch 128. Also prints the counted FLOPs per image of each.

    python scripts/partial_block_ab.py mae|simmim|mocov3 [--passes 7] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from mimkit.bench.flops import count_flops
from mimkit.bench.suite import group_config, mimkit_case
from mimkit.bench.timing import time_steps
from mimkit.config import load_config, resolved
from mimkit.methods import build_method


def engine_step(group: str, rows_only: bool) -> tuple[Callable[[], None], float, int]:
    cfg, _ = group_config("tiny", group, "cpu")
    case = mimkit_case(cfg, torch.device("cpu"), False, False, Path(tempfile.mkdtemp()))
    case.keep[1].fast_path = rows_only  # keep = [engine, method]
    # the case counted FLOPs with the partial block on; model_flops_per_img is the whole one
    return case.step, case.flops_per_img if rows_only else case.model_flops_per_img, cfg.train.batch_size


def mocov3_step(rows_only: bool, batch: int = 128) -> tuple[Callable[[], None], float, int]:
    cfg = resolved(load_config("mocov3_fmnist_tiny", ["device=cpu"]))
    torch.manual_seed(0)
    method = build_method(cfg).train()
    method.fast_path = rows_only
    images = torch.randn(batch, cfg.data.in_chans, cfg.data.img_size, cfg.data.img_size)
    data = {"images": images, "images2": images.flip(-1), "keys": torch.arange(batch)}

    def step() -> None:
        method(data)["loss"].backward()
        method.zero_grad(set_to_none=True)

    two = {"images": images[:2], "images2": images[:2].flip(-1), "keys": torch.arange(2)}
    flops = count_flops(lambda: method(two)["loss"].backward()) / 2
    method.zero_grad(set_to_none=True)
    return step, flops, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["mae", "simmim", "mocov3"])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    build = (
        (lambda flag: mocov3_step(flag))
        if args.workload == "mocov3"
        else (lambda flag: engine_step(args.workload, flag))
    )
    cases = {flag: build(flag) for flag in (True, False)}
    speeds: dict[bool, list[float]] = {True: [], False: []}
    for step, _, _ in cases.values():
        time_steps(step, 0, 3, torch.device("cpu"))  # warm-up
    for _ in range(args.passes):
        for flag, (step, _, batch) in cases.items():
            speeds[flag].append(args.steps * batch / time_steps(step, args.steps, 0, torch.device("cpu")))
    for flag, name in ((True, "partial last block"), (False, "whole last block")):
        print(
            f"{name:20s} {cases[flag][1] / 1e6:9.1f} MFLOP/img; img/s per pass: "
            + ", ".join(f"{s:.0f}" for s in sorted(speeds[flag]))
        )
    ratio = statistics.median(speeds[True]) / statistics.median(speeds[False])
    print(f"{args.workload}: median partial / whole = {ratio:.2f}x")


if __name__ == "__main__":
    main()
