#!/usr/bin/env bash
# TinyMIM ablation on Fashion-MNIST: a MAE-pretrained mim_vit_small teacher (10 blocks x 8 heads) distilled into a
# mim_vit_pico student (6 blocks x 3 heads) with each target (cls, feature, qk, vv, qk+vv), raw vs masked input, and
# direct vs sequential (small -> tiny -> pico); plus a MAE-pretrained pico with the same number of images.
#   bash scripts/fmnist_distill_study.sh pretrain OUT_DIR [TEACHER_STEPS] [STEPS] [SECONDS_PER_RUN]
#   bash scripts/fmnist_distill_study.sh finetune OUT_DIR      # fine-tunes every student + a from-scratch pico
# SECONDS_PER_RUN (default 0 = none) stops a run early with SIGTERM (it checkpoints first) to fit a fixed budget.
# Models: TEACHER_MODEL, MID_MODEL, STUDENT_MODEL env vars (defaults mim_vit_small, mim_vit_tiny, mim_vit_pico).
set -uo pipefail
PHASE=${1:?usage: $(basename "$0") pretrain|finetune OUT_DIR [TEACHER_STEPS] [STEPS] [SECONDS_PER_RUN]}
OUT=${2:?OUT_DIR}
TSTEPS=${3:-1500}
STEPS=${4:-500}
LIMIT=${5:-0}
source "$(dirname "$0")/lib/mimkit.sh"
DEV=${DEVICE:-auto}
TEACHER_MODEL=${TEACHER_MODEL:-mim_vit_small}
MID_MODEL=${MID_MODEL:-mim_vit_tiny}
STUDENT_MODEL=${STUDENT_MODEL:-mim_vit_pico}
common=(--set device=$DEV --set data.fraction=1.0 --set train.eval_every=250 --set train.log_every=100
        --set train.ckpt_every=100000 --set train.tensorboard=false --set train.eval_samples=1000)
limited() { if [ "$LIMIT" != 0 ]; then timeout -s TERM "$LIMIT" "$@"; else "$@"; fi; }
step() {  # step NAME COMMAND...
  local name=$1; shift
  local t0=$SECONDS
  limited "$@" 2>&1 | grep -E "^\[distill\]|^\[chain\]|final_heldout_loss|error" | tail -n 3
  echo "[study] $name: $(( SECONDS - t0 )) s"
}
if [ "$PHASE" = pretrain ]; then
  step teacher $M pretrain --config mae_fmnist_tiny --out "$OUT/teacher" "${common[@]}" \
    --set model.name=$TEACHER_MODEL --set train.steps=$TSTEPS --set train.warmup_steps=$(( TSTEPS / 15 ))
  dist=(--teacher "$OUT/teacher" "${common[@]}" --set train.steps=$STEPS --set train.warmup_steps=$(( STEPS / 15 )))
  for targets in qk+vv qk vv cls feature; do
    step "$targets" $M distill --student $STUDENT_MODEL --out "$OUT/students/${targets/+/}" "${dist[@]}" \
      --set distill.targets=$targets
  done
  step masked $M distill --student $STUDENT_MODEL --out "$OUT/students/qkvv-masked" "${dist[@]}" \
    --set distill.mask_ratio=0.5
  LIMIT=$(( LIMIT * 2 )) step chain $M distill --chain $MID_MODEL,$STUDENT_MODEL --out "$OUT/chain" "${dist[@]}"
  [ -n "${SKIP_MAE_STUDENT:-}" ] || step mae-student $M pretrain --config mae_fmnist_tiny --out "$OUT/mae-student" "${common[@]}" \
    --set model.name=$STUDENT_MODEL --set train.steps=$STEPS --set train.warmup_steps=$(( STEPS / 15 ))
else
  ft=(--set device=$DEV --set data.fraction=0.1 --set train.epochs=5 --set train.warmup_epochs=0.5
      --set train.log_every=100 --set train.tensorboard=false)
  for run in "$OUT"/students/* "$OUT"/chain/stage2-* "$OUT"/mae-student; do
    name=$(basename "$run")
    step "finetune $name" $M finetune --init "$run" --out "$OUT/finetune/$name" "${ft[@]}"
  done
  step "finetune scratch" $M finetune --init scratch --out "$OUT/finetune/scratch" "${ft[@]}" \
    --set model.name=$STUDENT_MODEL
fi
