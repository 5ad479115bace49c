"""A/B timing of the partial last block: the Engine's MAE or SimMIM training step on the bench suite's tiny preset,
with `loss_rows_only` on and off, timed in interleaved passes on this machine.

    python scripts/partial_block_ab.py mae|simmim [--passes 7] [--steps 4]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mimkit.bench.suite import group_config, mimkit_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=["mae", "simmim"])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cpu")
    cfg, _ = group_config("tiny", args.group, device.type)
    cases = {}
    for rows_only in (True, False):
        case = mimkit_case(cfg, device, False, False, Path(tempfile.mkdtemp()))
        case.keep[1].loss_rows_only = rows_only  # keep = [engine, method]
        for _ in range(3):
            case.step()
        cases[rows_only] = (case, [])
    for _ in range(args.passes):
        for case, speeds in cases.values():
            start = time.perf_counter()
            for _ in range(args.steps):
                case.step()
            speeds.append(args.steps * cfg.train.batch_size / (time.perf_counter() - start))
    partial, full = (statistics.median(cases[flag][1]) for flag in (True, False))
    for flag, name in ((True, "partial last block"), (False, "full last block")):
        print(f"{name:20s} img/s per pass: {', '.join(f'{s:.0f}' for s in sorted(cases[flag][1]))}")
    print(f"{args.group}: median partial / full = {partial / full:.2f}x")


if __name__ == "__main__":
    main()
