#!/usr/bin/env bash
# Does MAE beat scratch once it has trained long enough? (issue 19 item 6, issue 21 DR4/DR5.) The demo's MAE encoder
# (3.4 epochs) fine-tunes no better than a random one of the same architecture (docs/results/fmnist-combined-task.md,
# fmnist-finetune-protocol.md); MAE is known to need hundreds of epochs on small data sets. One MAE run of
# mim_vit_pico on the 60,000 training images keeps its encoder every 25 epochs (train.keep_every); `compare` then
# evaluates each kept encoder against scratch and the baselines that learn nothing, 3 seeds.
#   bash scripts/fmnist_mae_long.sh pretrain [OUT_DIR]   # resumable; 100 epochs: about 2.4 hours on 2 CPU cores
#   bash scripts/fmnist_mae_long.sh compare [OUT_DIR]    # resumable; frozen cells minutes, fine-tuning ~30 min/seed
# Pretraining: the demo's recipe (mae_fmnist_tiny: mask 0.75, norm-pix, batch 256, lr 1.5e-4, AdamW 0.9/0.95) for
# EPOCHS epochs with 5% warm-up (MAE's 40 of 800): 1.5 hours at ~1,100 img/s. Comparison: every kept encoder
# (mae_epN) joins the transfer study's comparison on all 60,000 labels (TRANSFER, default
# runs/fmnist-transfer-v2, whose pretrain stage must have run: its scratch network is the demo's architecture),
# frozen (kNN, linear probe) for each, fine-tuned (finetune_fmnist_pico) for the last, every cell judged on the
# test split; results kept in docs/results/fmnist-transfer/.
# EPOCHS, KEEP_EVERY (steps between kept encoders) and SEEDS override the sizes (smoke runs only).
set -euo pipefail
STAGE=${1:?usage: fmnist_mae_long.sh pretrain|compare [OUT_DIR]}
OUT=${2:-runs/fmnist-mae-long}
EPOCHS=${EPOCHS:-100}
KEEP_EVERY=${KEEP_EVERY:-5860}  # about 25 epochs of 234 steps
STEPS_PER_EPOCH=234         # 60,000 images in whole batches of 256
export SEEDS=${SEEDS:-3}
TRANSFER=${TRANSFER:-runs/fmnist-transfer-v2}
M="python -m mimkit"
[ -x .venv/bin/python ] && M=".venv/bin/python -m mimkit"
PRE="$OUT/pre/mae"
WARMUP=$(python3 -c "print(round($EPOCHS * 0.05, 3))")
case "$STAGE" in
pretrain)
  $M pretrain --config mae_fmnist_tiny --out "$PRE" --epochs "$EPOCHS" --set train.warmup_epochs="$WARMUP" \
    --set train.keep_every="$KEEP_EVERY" --set train.keep_last=1 --set train.tensorboard=false --set train.log_every=50
  ;;
compare)
  # into the transfer study's comparison on all 60,000 labels (scripts/fmnist_transfer_study.sh classification-60k,
  # same scratch network, baselines and protocols): kNN and the linear probe of every kept encoder, then fine-tuning
  # of the last one
  models=()
  last=$(readlink -f "$PRE/checkpoints/last" || true)
  for dir in "$PRE"/checkpoints/step-*; do  # the kept encoders and the final one (not a leftover best)
    step=$((10#${dir##*step-}))
    if [ $((step % KEEP_EVERY)) -eq 0 ] || [ "$(readlink -f "$dir")" = "$last" ]; then
      models+=("mae_ep$(((step + STEPS_PER_EPOCH / 2) / STEPS_PER_EPOCH))=$dir")
    fi
  done
  [ ${#models[@]} -gt 0 ] || { echo "no kept encoders in $PRE/checkpoints: run the pretrain stage first" >&2; exit 2; }
  study=(bash "$(dirname "$0")/fmnist_transfer_study.sh" classification-60k "$TRANSFER")
  MODELS="${models[*]} scratch" PROTOCOLS=knn,linprobe "${study[@]}"
  MODELS="${models[-1]} scratch" PROTOCOLS=finetune "${study[@]}"
  ;;
*) echo "unknown stage '$STAGE': pretrain or compare" >&2; exit 2 ;;
esac
