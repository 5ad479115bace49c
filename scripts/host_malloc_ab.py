"""A/B timing of the host malloc tuning (`mimkit.engine.host_malloc`). The setting is process-wide, so each side
runs in its own process: pairs of processes, glibc's defaults (MIMKIT_HOST_MALLOC=0) and tuned, one after the
other. Each times the Engine's training step on the bench suite's tiny preset and counts the minor page faults
and the CPU time (all threads; system time apart) per step.

    python scripts/host_malloc_ab.py mae|simmim [--pairs 5] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
from mimkit.engine.host_malloc import tune_host_malloc
state = tune_host_malloc()
from mimkit.bench.suite import group_config, mimkit_case
cfg, _ = group_config("tiny", sys.argv[1], "cpu")
case = mimkit_case(cfg, torch.device("cpu"), False, False, Path(tempfile.mkdtemp()))
steps = int(sys.argv[2])
for _ in range(3):
    case.step()
before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    case.step()
seconds, after = (time.perf_counter() - t0) / steps, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"state": state, "step_ms": 1e3 * seconds, "faults": (after.ru_minflt - before.ru_minflt) / steps,
                  "sys_ms": 1e3 * (after.ru_stime - before.ru_stime) / steps,
                  "cpu_ms": 1e3 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / steps}))
"""


def run(workload: str, steps: int, tuned: bool) -> dict:
    env = {**os.environ, "MIMKIT_HOST_MALLOC": "1" if tuned else "0"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, workload, str(steps)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["mae", "simmim", "distill", "finetune"])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    wall, cpu = [], []
    for pair in range(args.pairs):
        default, tuned = run(args.workload, args.steps, False), run(args.workload, args.steps, True)
        wall.append(default["step_ms"] / tuned["step_ms"])
        cpu.append(default["cpu_ms"] / tuned["cpu_ms"])
        for name, r in (("glibc default", default), ("tuned", tuned)):
            print(
                f"pair {pair + 1} {name:13s} ({r['state']:5s}) {r['step_ms']:7.1f} ms/step  "
                f"{r['faults']:8.0f} page faults/step  CPU time {r['cpu_ms']:6.1f} ms/step, "
                f"{r['sys_ms']:5.1f} of it system"
            )
    for name, ratios in (("wall time", wall), ("CPU time", cpu)):
        print(
            f"{args.workload} {name}: tuned is {statistics.median(ratios):.2f}x glibc's default (median of "
            f"{args.pairs} pairs; pairs {min(ratios):.2f}-{max(ratios):.2f}x)"
        )


if __name__ == "__main__":
    main()
