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
source "$(dirname "$0")/lib/mimkit.sh"
ENCODERS=${ENCODERS:-docs/results/fmnist-transfer/encoders}
epochs() { echo $((($1 + STEPS_PER_EPOCH / 2) / STEPS_PER_EPOCH)); }  # a step count in whole epochs
PRE="$OUT/pre/mae"
WARMUP=$(python3 -c "print(round($EPOCHS * 0.05, 3))")
case "$STAGE" in
pretrain)
  $M pretrain --config mae_fmnist_tiny --out "$PRE" --epochs "$EPOCHS" --set train.warmup_epochs="$WARMUP" \
    --set train.keep_every="$KEEP_EVERY" --set train.keep_last=1 --set train.tensorboard=false --set train.log_every=50
  ;;
compare)
  # into the transfer study's comparison on all 60,000 labels (scripts/fmnist_transfer_study.sh classification-60k,
  # same scratch network, baselines and protocols): kNN and the linear probe of every kept encoder, and once the run
  # has finished, of its final encoder, which is also fine-tuned. The final encoder is exported once into ENCODERS
  # (2.7 MB, committed), so a new machine without the run directory still evaluates it.
  models=()
  final=""
  if [ -f "$PRE/results.json" ]; then
    step=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" "$PRE/results.json")
    final=$ENCODERS/mae_ep$(epochs "$step").safetensors
    [ -f "$final" ] || { mkdir -p "$ENCODERS" && $M export "$PRE" --out "$final"; }
  fi
  [ -n "$final" ] || final=$(ls "$ENCODERS"/mae_ep*.safetensors 2>/dev/null | sort -V | tail -1 || true)
  for dir in "$PRE"/checkpoints/step-*; do  # the kept encoders (not the rolling last or best)
    [ -d "$dir" ] || continue
    step=$((10#${dir##*step-}))
    name=mae_ep$(epochs "$step")
    if [ $((step % KEEP_EVERY)) -eq 0 ] && [ "$name" != "$(basename "$final" .safetensors)" ]; then
      models+=("$name=$dir")
    fi
  done
  [ -z "$final" ] || models+=("$(basename "$final" .safetensors)=$final")
  [ ${#models[@]} -gt 0 ] || { echo "no kept encoders in $PRE/checkpoints: run the pretrain stage first" >&2; exit 2; }
  study=(bash "$(dirname "$0")/fmnist_transfer_study.sh" classification-60k "$TRANSFER")
  MODELS="${models[*]} scratch" PROTOCOLS=knn,linprobe "${study[@]}"
  [ -z "$final" ] || MODELS="${models[-1]} scratch" PROTOCOLS=finetune "${study[@]}"
  ;;
*) echo "unknown stage '$STAGE': pretrain or compare" >&2; exit 2 ;;
esac
