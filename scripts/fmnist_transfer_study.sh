#!/usr/bin/env bash
# The Fashion-MNIST transfer study: MAE, SimMIM, MoCo v3, supervised and scratch encoders (mim_vit_pico) compared by
# `mimkit compare` on classification (semantic) and localisation (geometric), frozen and fine-tuned.
#   bash scripts/fmnist_transfer_study.sh [OUT_DIR]        (CPU: about 40 minutes on 2 cores)
# Pretraining uses a 10% class-balanced subset (6,000 images) so that five models fit a CPU budget; every
# evaluation uses the full 10,000-image test split.
set -euo pipefail
OUT=${1:-runs/fmnist-transfer}
M="python -m mimkit"
[ -x .venv/bin/python ] && M=".venv/bin/python -m mimkit"
common=(--set data.fraction=0.1 --set train.eval_every=100 --set train.log_every=50 --set train.tensorboard=false)
$M pretrain --config mae_fmnist_tiny --out "$OUT/pre/mae" "${common[@]}" --set train.steps=300 --set train.warmup_steps=20
$M pretrain --config simmim_fmnist_tiny --out "$OUT/pre/simmim" "${common[@]}" --set model.family=vit --set train.base_lr=2e-4 --set train.steps=300 --set train.warmup_steps=20
$M pretrain --config supervised_fmnist_tiny --out "$OUT/pre/supervised" "${common[@]}" --set train.epochs=null \
  --set train.steps=300 --set train.warmup_steps=20
$M pretrain --config mocov3_fmnist_tiny --out "$OUT/pre/mocov3" "${common[@]}" --set train.steps=150 --set train.warmup_steps=10
$M compare --init mae="$OUT/pre/mae" --init simmim="$OUT/pre/simmim" --init mocov3="$OUT/pre/mocov3" \
  --init supervised="$OUT/pre/supervised" --init scratch=scratch --out "$OUT/compare" \
  --tasks classification,localization --set model.name=mim_vit_pico \
  --set-probe data.fraction=0.1 \
  --set-finetune data.fraction=0.1 --set-finetune train.epochs=3 --set-finetune train.warmup_epochs=0.5
