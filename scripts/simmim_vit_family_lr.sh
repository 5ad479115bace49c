#!/usr/bin/env bash
# Follow-up of simmim_vit_family_study.sh (issue 18, item 1): is SimMIM's published ViT (model.family=beit) position-
# blind at the Fashion-MNIST budget only because its learning rate is too small for its shared relative position
# bias to grow? Both families at three peak learning rates, 300 steps at batch 128, mim_vit_pico; prints the
# held-out SimMIM loss (fixed masks, 1,000 test images) at step 300 and the bias table's largest entry.
#   SEEDS="0 1 2" LRS="2e-4 2e-3 8e-3" bash scripts/simmim_vit_family_lr.sh [OUT_DIR]
#   (resumable: finished runs are skipped; CPU: about 2.5 minutes a run on 2 cores)
# STEPS, BATCH and WARMUP (default 300, 128, 20) change the budget: STEPS=800 BATCH=256 WARMUP=50 is the recipe's.
set -euo pipefail
OUT=${1:-runs/simmim-vit-family-lr}
SEEDS=${SEEDS:-0}
LRS=${LRS:-2e-4 2e-3 8e-3}
FAMILIES=${FAMILIES:-beit vit}
STEPS=${STEPS:-300}
BATCH=${BATCH:-128}
WARMUP=${WARMUP:-20}
mkdir -p "$OUT"
source "$(dirname "$0")/lib/mimkit.sh"
for seed in $SEEDS; do
  for lr in $LRS; do
    for family in $FAMILIES; do
      run="$OUT/$family-lr$lr-s$seed"
      [ -f "$run/results.json" ] && continue
      $PY -m mimkit pretrain --config simmim_fmnist_tiny --out "$run" --set model.family=$family \
        --set seed=$seed --set train.steps=$STEPS --set train.batch_size=$BATCH --set train.warmup_steps=$WARMUP \
        --set train.base_lr=$lr --set train.eval_every=100 --set train.eval_samples=1000 \
        --set train.log_every=100 --set train.reconstruct=false --set train.tensorboard=false > "$run.log" 2>&1
    done
  done
done
PYTHONPATH=src $PY - "$OUT" "$STEPS" <<'PYEOF'
import json, re, statistics, sys
from pathlib import Path

from mimkit.engine.checkpoint import find_checkpoint, load_weights

out, steps = Path(sys.argv[1]), int(sys.argv[2])
runs = {}
for run in sorted(p for p in out.iterdir() if p.is_dir() and (p / "results.json").is_file()):
    family, lr, seed = re.fullmatch(r"(\w+)-lr(.+)-s(\d+)", run.name).groups()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r["loss"] for r in evals if r.get("event") == "eval" and r.get("split") == "heldout" and r["step"] == 300]
    weights = load_weights(find_checkpoint(run))
    table = [v for k, v in weights.items() if k.endswith("rel_pos_bias.relative_position_bias_table")]
    runs.setdefault((family, float(lr)), []).append((final[0], float(table[0].abs().max()) if table else None))
print(f"| family | base lr | held-out loss at step {steps} | seeds | bias table max abs |\n|---|---|---|---|---|")
for (family, lr), values in sorted(runs.items()):
    losses = [v[0] for v in values]
    spread = f" +- {statistics.stdev(losses):.4f}" if len(losses) > 1 else ""
    table = "-" if values[0][1] is None else f"{statistics.mean(v[1] for v in values):.3f}"
    print(f"| {family} | {lr:g} | {statistics.mean(losses):.4f}{spread} | {len(losses)} | {table} |")
PYEOF
