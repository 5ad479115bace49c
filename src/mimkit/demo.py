"""`make demo`: MAE on Fashion-MNIST with a small ViT on the CPU (a few minutes), then where to look."""

from __future__ import annotations

import argparse
import sys

from mimkit.config import load_config
from mimkit.engine.host_malloc import tune_host_malloc
from mimkit.engine.metrics import read_metrics
from mimkit.engine.run_dir import usable_out_dir
from mimkit.errors import exit_code_of
from mimkit.training import pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mimkit demo: MAE pretraining on Fashion-MNIST")
    parser.add_argument("--out", default="runs/demo-mae-fmnist")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    tune_host_malloc()  # a program entry, like the CLI: process-wide settings are set here, not by the library
    outcome: dict = {}

    def train() -> int:
        usable_out_dir(args.out)
        cfg = load_config("mae_fmnist_tiny", ["device=cpu", *args.set])
        outcome.update(pretrain(cfg, args.out))
        return 0

    code = exit_code_of(train)
    if code:
        return code
    results = outcome
    heldout = [r for r in read_metrics(f"{args.out}/metrics.jsonl") if r.get("split") == "heldout"]
    print("\nheld-out MIM loss (fixed masks) by step:")
    for r in heldout:
        print(f"  step {r['step']:5d}  {r['loss']:.4f}")
    if len(heldout) >= 2:
        first, last = heldout[0]["loss"], heldout[-1]["loss"]
        verdict = "went down" if last < first else "did NOT go down"
        print(f"held-out loss {verdict}: {first:.4f} -> {last:.4f} ({(last - first) / first:+.1%})")
    print(
        f"\nrun directory:  {args.out}\nloss curve:     {results.get('loss_curve')}\n"
        f"reconstructions: {results.get('reconstructions')}\n"
        f"resume/extend:  mimkit pretrain --config {args.out} --out {args.out} --set train.steps=2000"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
