#!/usr/bin/env bash
# SimMIM on Fashion-MNIST with the published ViT (model.family=beit: shared relative position bias, layer scale
# 0.1, q/v biases, no absolute position embedding) against timm's plain ViT (model.family=vit), mim_vit_pico,
# 3 seeds each, 300 steps at batch 128; prints the held-out SimMIM loss (fixed masks, 1,000 test images) by step.
#   bash scripts/simmim_vit_family_study.sh [OUT_DIR]      (CPU: about 15 minutes on 2 cores)
set -euo pipefail
OUT=${1:-runs/simmim-vit-family}
mkdir -p "$OUT"
source "$(dirname "$0")/lib/mimkit.sh"
for seed in 0 1 2; do
  for family in beit vit; do
    $PY -m mimkit pretrain --config simmim_fmnist_tiny --out "$OUT/$family-s$seed" --set model.family=$family --set train.base_lr=2e-4 \
      --set seed=$seed --set train.steps=300 --set train.batch_size=128 --set train.warmup_steps=20 \
      --set train.eval_every=100 --set train.eval_samples=1000 --set train.log_every=100 \
      --set train.reconstruct=false --set train.tensorboard=false > "$OUT/$family-s$seed.log" 2>&1
  done
done
$PY - "$OUT" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| family | step 0 | step 100 | step 200 | step 300 |\n|---|---|---|---|---|")
for family in ("beit", "vit"):
    by_step = {}
    for seed in range(3):
        for line in (out / f"{family}-s{seed}" / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("event") == "eval" and r.get("split") == "heldout":
                by_step.setdefault(r["step"], []).append(r["loss"])
    cells = [f"{statistics.mean(v):.4f} +- {statistics.stdev(v):.4f}" for _, v in sorted(by_step.items())]
    print(f"| {family} | " + " | ".join(cells) + " |")
PYEOF
