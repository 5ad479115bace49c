#!/usr/bin/env bash
# The distillation study's pretraining phase on a lent GPU machine, packed for the trip back (weights only):
#   bash scripts/gpu_distill_study.sh OUT_DIR [FMNIST_PARENT_DIR]
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"
W=/tmp/mimkit_distill; rm -rf "$W"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
  date -u; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
DEVICE=cuda PYTHON=$PY bash scripts/fmnist_distill_study.sh pretrain "$W" "${TEACHER_STEPS:-1200}" "${STEPS:-500}" \
  "${LIMIT:-48}" 2>&1 | tee "$OUT/study.log"
P=scripts/pack_runs.sh
bash $P "$OUT/students_a.tar.gz" "$W" students/qkvv students/qk students/vv
bash $P "$OUT/students_b.tar.gz" "$W" students/cls students/feature students/qkvv-masked
bash $P "$OUT/students_c.tar.gz" "$W" chain/stage2-mim_vit_pico
(cd "$W" && tar czf "$OUT/logs.tar.gz" teacher/*.json teacher/*.yaml teacher/*.jsonl chain/*.json \
  chain/stage1-*/*.json chain/stage1-*/*.yaml chain/stage1-*/*.jsonl)
ls -la "$OUT"
