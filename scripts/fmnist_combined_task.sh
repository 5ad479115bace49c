#!/usr/bin/env bash
# The Dark Secrets paper's Figure 8 analogue (issue 19 item 3; claim DR5 of issue 21): fine-tune encoders from
# MIM (the demo's MAE), from supervised pretraining and from scratch on the cluttered combined task (class + box of
# an item on a textured canvas among fragments of other items; dense head: per-patch objectness, box and class),
# and compare the classification and localisation losses while fine-tuning, 3 seeds each.
#   bash scripts/fmnist_combined_task.sh [OUT_DIR]     (resumable; CPU: 44 minutes on 2 cores, 2026-12-05)
# The two pretrained encoders get the same budget: 800 steps of 256 images (3.4 epochs of Fashion-MNIST's 60k),
# MAE without labels, supervised with them. Fine-tuning: mim_vit_pico, 10% class-balanced subset (6,000 images),
# 10 epochs, batch 128, lr 1e-3, no layer decay; judged on 2,000 fixed held-out scenes from the test split.
# MAE may name a run directory or an exported encoder file; EXTRA_MODELS adds NAME=SOURCE encoders beside the three
# (e.g. "mae_ep100=docs/results/fmnist-transfer/encoders/mae_ep100.safetensors", the MAE pico pretrained 100 epochs).
# SUP_STEPS, EPOCHS, WARMUP, FRACTION and SEEDS override the sizes (smoke runs only).
set -euo pipefail
OUT=${1:-runs/fmnist-combined}
SUP_STEPS=${SUP_STEPS:-800}
EPOCHS=${EPOCHS:-10}
FRACTION=${FRACTION:-0.1}
SEEDS=${SEEDS:-3}
WARMUP=${WARMUP:-1}
source "$(dirname "$0")/lib/mimkit.sh"
MAE=${MAE:-runs/demo-mae-fmnist}
[ -f "$MAE" ] || [ -f "$MAE/results.json" ] || $PY -m mimkit.demo --out "$MAE"  # `make demo`'s (deterministic)
extra=()
for model in ${EXTRA_MODELS:-}; do
  case $model in
  ?*=?*) extra+=(--init "$model") ;;
  *) echo "EXTRA_MODELS: '$model' is not NAME=SOURCE" >&2; exit 2 ;;
  esac
done
[ -f "$OUT/pre/supervised/results.json" ] || \
  $M pretrain --config supervised_fmnist_tiny --out "$OUT/pre/supervised" --steps "$SUP_STEPS" \
    --set train.tensorboard=false
$M compare "${LANES_ARG[@]}" --init mae="$MAE" --init supervised="$OUT/pre/supervised" --init scratch=scratch "${extra[@]}" \
  --out "$OUT/compare" \
  --protocols finetune --tasks cluttered_combined --seeds "$SEEDS" \
  --set model.name=mim_vit_pico --set model.init_scheme=mae --set data.fraction="$FRACTION" \
  --set-finetune train.epochs="$EPOCHS" --set-finetune train.warmup_epochs="$WARMUP" \
  --set-finetune train.batch_size=128 \
  --set-finetune train.base_lr=2e-3 --set-finetune method.layer_decay=1.0 --set-finetune model.drop_path=0.0 \
  --set-finetune train.eval_samples=2000 --set-finetune train.log_every=10 --set-finetune train.tensorboard=false
