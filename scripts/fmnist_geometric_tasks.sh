#!/usr/bin/env bash
# Issue 19, item 3: can a trained model beat each geometric task's trivial predictor by more than 3x the seed
# spread? mim_vit_pico from scratch (MAE's initialisation, no layer decay), fine-tuned on a 10% class-balanced
# subset (6,000 images) for 10 epochs, 3 seeds, judged on 2,000 fixed held-out images; `mimkit compare` adds the
# trivial predictor of each task (mean box, mean keypoints, mean depth map, zero displacement) and the thresholding
# box on the localisation task.
#   bash scripts/fmnist_geometric_tasks.sh [OUT_DIR]     (resumable; CPU: about 45 minutes on 2 cores)
set -euo pipefail
OUT=${1:-runs/fmnist-geometric}
source "$(dirname "$0")/lib/mimkit.sh"
$M compare "${LANES_ARG[@]}" --init scratch=scratch --out "$OUT" --protocols finetune \
  --tasks cluttered_localization,keypoints,depth,tracking --seeds 3 \
  --set model.name=mim_vit_pico --set model.init_scheme=mae --set data.fraction=0.1 \
  --set-finetune train.epochs=10 --set-finetune train.warmup_epochs=1 --set-finetune train.batch_size=128 \
  --set-finetune train.base_lr=2e-3 --set-finetune method.layer_decay=1.0 --set-finetune model.drop_path=0.0 \
  --set-finetune train.eval_samples=2000 --set-finetune train.log_every=50 --set-finetune train.tensorboard=false
