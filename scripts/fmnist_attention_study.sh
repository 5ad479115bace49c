#!/usr/bin/env bash
# Attention study on Fashion-MNIST: MAE, SimMIM, MoCo v3 and supervised mim_vit_small encoders (10 layers x 8 heads)
# pretrained on the full training set, then `mimkit analyze report` on 1,000 held-out images (plus a random network).
#   bash scripts/fmnist_attention_study.sh OUT_DIR [STEPS] [SECONDS_PER_RUN]
# STEPS (default 1500) is per pretraining (MoCo v3 gets half: two views cost about 3x). SECONDS_PER_RUN (default
# 0 = no limit) stops a pretraining early with SIGTERM, which checkpoints first, so the study fits a fixed budget;
# the steps each run reached are in OUT/pre/*/results.json and the log. On a GPU: device=cuda (bf16).
set -uo pipefail
OUT=${1:?usage: $(basename "$0") OUT_DIR [STEPS] [SECONDS_PER_RUN]}
STEPS=${2:-1500}
LIMIT=${3:-0}
source "$(dirname "$0")/lib/mimkit.sh"
DEV=${DEVICE:-auto}
MODEL=${MODEL:-mim_vit_small}
common=(--set device=$DEV --set model.name=$MODEL --set data.fraction=1.0 --set train.eval_every=500
        --set train.log_every=250 --set train.ckpt_every=100000 --set train.tensorboard=false)
run() {  # run NAME RECIPE STEPS
  local t0=$SECONDS
  local lim=()
  [ "$LIMIT" != 0 ] && lim=(timeout -s TERM "$LIMIT")
  "${lim[@]}" $M pretrain --config "$2" --out "$OUT/pre/$1" "${common[@]}" --set train.steps="$3" \
    --set train.warmup_steps=$(( $3 / 15 )) ${4:-} 2>&1 | grep -E "^step|heldout|error|Error" | tail -n 4
  echo "[study] $1: $(( SECONDS - t0 )) s"
}
run supervised supervised_fmnist_tiny "$STEPS" "--set train.epochs=null --set train.warmup_epochs=null"
run mae mae_fmnist_tiny "$STEPS"
run simmim simmim_fmnist_tiny "$STEPS" "--set model.family=vit --set train.base_lr=2e-4"  # as recorded: timm's plain ViT
run mocov3 mocov3_fmnist_tiny $(( STEPS / 2 ))
t0=$SECONDS
$M analyze report --model mae="$OUT/pre/mae" --model simmim="$OUT/pre/simmim" --model mocov3="$OUT/pre/mocov3" \
  --model supervised="$OUT/pre/supervised" --model random=scratch --set model.name=$MODEL --set device=$DEV \
  --images 1000 --out "$OUT/analysis"
echo "[study] analysis: $(( SECONDS - t0 )) s"
