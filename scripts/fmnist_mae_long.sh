#!/usr/bin/env bash
# Does MAE beat scratch once it has trained long enough? (issue 19 item 6, issue 21 DR4/DR5.) The demo's MAE encoder
# (3.4 epochs) fine-tunes no better than a random one of the same architecture (docs/results/fmnist-combined-task.md,
# fmnist-finetune-protocol.md); MAE is known to need hundreds of epochs on small data sets. One MAE run of
# mim_vit_pico on the 60,000 training images keeps its encoder every 25 epochs (train.keep_every); `compare` then
# evaluates each kept encoder against scratch and the baselines that learn nothing, 3 seeds.
#   bash scripts/fmnist_mae_long.sh pretrain [OUT_DIR]   # resumable; 100 epochs: about 2.4 hours on 2 CPU cores
#   bash scripts/fmnist_mae_long.sh compare [OUT_DIR]    # resumable; about 2 hours
# Pretraining: the demo's recipe (mae_fmnist_tiny: mask 0.75, norm-pix, batch 256, lr 1.5e-4, AdamW 0.9/0.95) for
# EPOCHS epochs with 5% warm-up (MAE's 40 of 800). Comparison: kNN and the linear probe on frozen features, and
# fine-tuning on 6,000 labelled images (classification, 15 epochs) and on the cluttered combined task (10 epochs)
# with the swept schedule (batch 128, lr 1e-3, no layer decay), every cell judged on the test split.
# EPOCHS, KEEP (steps between kept encoders), FT_EPOCHS, TASK_EPOCHS, FT_WARMUP and SEEDS override the sizes
# (smoke runs only).
set -euo pipefail
STAGE=${1:?usage: fmnist_mae_long.sh pretrain|compare [OUT_DIR]}
OUT=${2:-runs/fmnist-mae-long}
EPOCHS=${EPOCHS:-100}
KEEP=${KEEP:-5860}            # 25 epochs of 234.4 steps
FT_EPOCHS=${FT_EPOCHS:-15}
TASK_EPOCHS=${TASK_EPOCHS:-10}
SEEDS=${SEEDS:-3}
FT_WARMUP=${FT_WARMUP:-1}
M="python -m mimkit"
[ -x .venv/bin/python ] && M=".venv/bin/python -m mimkit"
PRE="$OUT/pre/mae"
WARMUP=$(python3 -c "print(round($EPOCHS * 0.05, 3))")
case "$STAGE" in
pretrain)
  $M pretrain --config mae_fmnist_tiny --out "$PRE" --epochs "$EPOCHS" --set train.warmup_epochs="$WARMUP" \
    --set train.keep_every="$KEEP" --set train.keep_last=1 --set train.tensorboard=false --set train.log_every=50
  ;;
compare)
  inits=()
  last=$(readlink -f "$PRE/checkpoints/last" || true)
  for dir in "$PRE"/checkpoints/step-*; do  # the kept encoders and the final one (not a leftover best)
    step=$((10#${dir##*step-}))
    if [ $((step % KEEP)) -eq 0 ] || [ "$(readlink -f "$dir")" = "$last" ]; then
      inits+=(--init "mae_step$step=$dir")
    fi
  done
  [ ${#inits[@]} -gt 0 ] || { echo "no kept encoders in $PRE/checkpoints: run the pretrain stage first" >&2; exit 2; }
  common=(--set model.name=mim_vit_pico --set model.init_scheme=mae --set-probe data.fraction=0.1
    --finetune-config finetune_fmnist_pico --set-finetune data.fraction=0.1
    --set-finetune train.warmup_epochs="$FT_WARMUP" --set-finetune train.log_every=10
    --set-finetune train.tensorboard=false)
  $M compare "${inits[@]}" --init scratch=scratch --out "$OUT/compare-classification" \
    --protocols knn,linprobe,finetune --tasks classification --seeds "$SEEDS" "${common[@]}" \
    --set-finetune train.epochs="$FT_EPOCHS"
  $M compare "${inits[@]}" --init scratch=scratch --out "$OUT/compare-combined" --protocols finetune \
    --tasks cluttered_combined --seeds "$SEEDS" "${common[@]}" --set-finetune train.epochs="$TASK_EPOCHS"
  ;;
*) echo "unknown stage '$STAGE': pretrain or compare" >&2; exit 2 ;;
esac
