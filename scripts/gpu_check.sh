#!/usr/bin/env bash
# GPU checks for the foundation issue, run on a lent GPU machine from the repository root:
#   bash scripts/gpu_check.sh OUT_DIR [FMNIST_DIR]
# 1) a bf16-autocast MAE pretraining run on Fashion-MNIST (held-out loss must fall; checkpoints, figures)
# 2) mimkit bench pretrain, ViT-B/16 MAE at 224 px, batch 256, bf16, against HF ViTMAEForPreTraining (same process)
# 3) the same for a SimMIM ViT-B/16 (mimkit only)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"
record_versions

echo "== 1. MAE pretraining on Fashion-MNIST, bf16 autocast on the GPU"
RUN=${RUN_DIR:-/tmp/mimkit_gpu_run}
rm -rf "$RUN"
$PY -m mimkit pretrain --config mae_fmnist_tiny --out "$RUN" \
  --set device=cuda --set model.name=mim_vit_tiny --set train.steps=600 --set train.eval_every=100 \
  --set train.ckpt_every=300 --set train.log_every=100 --set train.tensorboard=false 2>&1 | tail -n 25 \
  | tee "$OUT/pretrain.log"
cp "$RUN/results.json" "$RUN/metrics.jsonl" "$RUN/figures/loss_curves.png" "$RUN/figures/reconstructions.png" "$OUT/" \
  2>/dev/null || echo "pretraining left no results"

echo "== 2. bench: MAE ViT-B/16 224px batch 256 bf16, mimkit vs HF"
$PY -m mimkit bench pretrain --config mae_vit_base_in1k --set data.name=synthetic --set train.batch_size=256 \
  --steps 30 --warmup 5 --compare hf --out "$OUT/bench_mae_vitb" 2>&1 | tail -n 30

echo "== 3. bench: SimMIM ViT-B/16 224px batch 128 bf16"
$PY -m mimkit bench pretrain --config simmim_vit_base_in1k --set data.name=synthetic --set train.batch_size=128 \
  --steps 20 --warmup 5 --out "$OUT/bench_simmim_vitb" 2>&1 | tail -n 20

echo "== 4. GPU-marked tests"
if $PY -c "import pytest" 2>/dev/null; then $PY -m pytest -q -m gpu tests/test_cli.py 2>&1 | tail -n 5; else echo "pytest not installed here"; fi
