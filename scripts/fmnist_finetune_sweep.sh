#!/usr/bin/env bash
# Fine-tuning protocol sweep on Fashion-MNIST (issue 19, item 1): mim_vit_pico trained from scratch on the full
# 60,000-image training split with several schedules, each judged on the full 10,000-image test split.
#   bash scripts/fmnist_finetune_sweep.sh [OUT_DIR] [NAME ...]   (about 30 min a 10-epoch run on 2 cores)
# Each run is its own run directory: a finished one (results.json) is skipped, an interrupted one resumes from its
# checkpoint, so the sweep can be stopped and restarted at will. NAMEs pick runs from the list below (default: all).
# Summarise with: python scripts/summarize_finetune_sweep.py OUT_DIR
set -euo pipefail
OUT=${1:-runs/fmnist-finetune-sweep}
shift || true
M="python -m mimkit"
[ -x .venv/bin/python ] && M=".venv/bin/python -m mimkit"
# Every run: scratch mim_vit_pico, batch 256, AdamW, cosine schedule, label smoothing 0.1, no layer decay.
common=(--set model.name=mim_vit_pico --set method.layer_decay=1.0 --set train.log_every=50
  --set train.tensorboard=false --set train.eval_samples=2000)
declare -A RUNS=(
  [lr1e-3_ep10_crop0.5]="--set train.base_lr=1e-3 --set train.epochs=10 --set train.warmup_epochs=1 --set model.drop_path=0.0 --set data.crop_scale=[0.5,1.0]"
  [lr2e-3_ep10_crop0.5]="--set train.base_lr=2e-3 --set train.epochs=10 --set train.warmup_epochs=1 --set model.drop_path=0.0 --set data.crop_scale=[0.5,1.0]"
  [lr1e-3_ep10_crop0.8]="--set train.base_lr=1e-3 --set train.epochs=10 --set train.warmup_epochs=1 --set model.drop_path=0.0 --set data.crop_scale=[0.8,1.0]"
)
ORDER=(lr1e-3_ep10_crop0.5 lr2e-3_ep10_crop0.5 lr1e-3_ep10_crop0.8)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  [ -n "${RUNS[$name]+x}" ] || { echo "unknown run '$name'; known: ${!RUNS[*]}" >&2; exit 2; }
  [ -f "$OUT/$name/results.json" ] && { echo "[sweep] $name: done before, skipped"; continue; }
  echo "[sweep] $name: running"
  # shellcheck disable=SC2086
  $M finetune --init scratch --out "$OUT/$name" "${common[@]}" ${RUNS[$name]}
done
