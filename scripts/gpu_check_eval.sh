#!/usr/bin/env bash
# GPU checks for the evaluation commands, from the repository root on a lent GPU machine:
#   bash scripts/gpu_check_eval.sh OUT_DIR [FMNIST_PARENT_DIR]
# MAE pretraining (bf16) -> finetune (layer decay, mixup/cutmix, RandAugment) -> linprobe -> knn; MoCo v3 pretraining.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"
W=/tmp/mimkit_gpu_eval; rm -rf "$W"
common="--set device=cuda --set train.tensorboard=false"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/device.txt"
$PY -m mimkit pretrain --config mae_fmnist_tiny --out $W/mae $common --set model.name=mim_vit_tiny \
  --set train.steps=400 --set train.eval_every=200 --set train.log_every=100 2>&1 | grep -E "step 400|heldout" | tail -3
$PY -m mimkit finetune --init $W/mae --out $W/ft $common --set train.epochs=2 --set train.warmup_epochs=0.5 \
  --set method.randaug=rand-m9-mstd0.5-inc1 --set method.mixup=0.8 --set method.cutmix=1.0 --set train.log_every=100 \
  2>&1 | grep -E "^\[init\]|step .*/|error" | tail -4
$PY -m mimkit linprobe --init $W/mae --out $W/probe --set device=cuda 2>&1 | grep -E "probe\]|error" | tail -2
$PY -m mimkit knn --init $W/mae --out $W/probe --set device=cuda 2>&1 | grep -E "probe\]|error" | tail -2
cp $W/probe/knn.json "$OUT/knn_results.json"
$PY -m mimkit linprobe --init $W/mae --out $W/probe2 --set device=cuda >/dev/null 2>&1; cp $W/probe2/linprobe.json "$OUT/linprobe_results.json"
cp $W/ft/results.json "$OUT/finetune_results.json"
$PY -m mimkit pretrain --config mocov3_fmnist_tiny --out $W/moco $common --set train.steps=300 \
  --set train.eval_every=100 --set train.log_every=100 2>&1 | grep -E "step 300|error" | tail -2
cp $W/moco/results.json "$OUT/mocov3_results.json"
$PY -m mimkit knn --init $W/moco --out $W/moco_knn --set device=cuda >/dev/null 2>&1; cp $W/moco_knn/knn.json "$OUT/mocov3_knn_results.json"
for f in "$OUT"/*.json; do echo "== $f"; cat "$f"; echo; done
