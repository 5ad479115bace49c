#!/usr/bin/env bash
# Does MAE beat scratch once it has trained long enough? (issue 19 item 6, issue 21 DR4/DR5.) The demo's MAE encoder
# (3.4 epochs) fine-tunes no better than a random one of the same architecture (docs/results/fmnist-combined-task.md,
# fmnist-finetune-protocol.md); MAE is known to need hundreds of epochs on small data sets. One MAE run of
# mim_vit_pico on the 60,000 training images keeps its encoder every KEEP_EVERY steps (train.keep_every); `compare`
# then evaluates each kept encoder against scratch and the baselines that learn nothing, 3 seeds. The same run's
# kept encoders, fine-tuned, are the length axis of claim DS2 (does the held-out loss track fine-tuning?).
#   bash scripts/fmnist_mae_long.sh pretrain [OUT_DIR]   # resumable; 100 epochs: about 2.4-3.1 hours on 2 CPU cores
#   bash scripts/fmnist_mae_long.sh compare [OUT_DIR]    # resumable; frozen cells minutes, fine-tuning ~30 min/seed
#   bash scripts/fmnist_mae_long.sh length [OUT_DIR]     # fine-tune the kept encoders at LENGTHS epochs (~30 min each)
#   bash scripts/fmnist_mae_long.sh ds2 [OUT_DIR]        # held-out loss vs fine-tuned top-1 along every run: DS2_KEEP
# PRE_SEED=1 (2, ...) trains and evaluates a second pretraining run (OUT_DIR/pre-s1/mae, its encoders mae_s1_epN);
# once seeds 1 and 2 have cells (frozen ones come first), the transfer study's keep pools mae_ep100, mae_s1_ep100,
# mae_s2_ep100 into one row, mae_ep100_runs (compare --pool), and contrasts it with scratch and supervised; a column
# some seed has no cell in yet says "k of 3 replicas" and gives no verdict.
# Pretraining: the demo's recipe (mae_fmnist_tiny: mask 0.75, norm-pix, batch 256, lr 1.5e-4, AdamW 0.9/0.95) for
# EPOCHS epochs with 5% warm-up (MAE's 40 of 800), ~1,100 img/s alone. KEEP_EVERY (default 2340 steps, 10 epochs)
# is a multiple of the 234-step epoch, where the run measures its held-out loss, so each kept encoder has its own.
# (Seed 0's run kept every 5,860 steps, about 25 epochs; those folders are gone, its final encoder is committed.)
# Comparison: every kept encoder (mae_epN) joins the transfer study's comparison on all 60,000 labels (TRANSFER,
# default runs/fmnist-transfer-v2, whose pretrain stage must have run: its scratch network is the demo's
# architecture), frozen (kNN, linear probe) for each, fine-tuned (finetune_fmnist_pico) for the last, every cell
# judged on the test split; results kept in docs/results/fmnist-transfer/. `length` fine-tunes the kept encoders at
# LENGTHS epochs (default "10 20 50") and the final one, LENGTH_SEEDS fine-tuning seeds each (default 1: the final
# encoder's 3 seeds measure the spread); `ds2` turns every run's fine-tuned encoders into a scaling table
# (`mimkit scaling kept`, merged into DS2_KEEP, default docs/results/fmnist-mae-length) and analyses it.
# EPOCHS, KEEP_EVERY and SEEDS override the sizes (smoke runs only).
set -euo pipefail
STAGE=${1:?usage: fmnist_mae_long.sh pretrain|compare|length|ds2 [OUT_DIR]}
OUT=${2:-runs/fmnist-mae-long}
EPOCHS=${EPOCHS:-100}
KEEP_EVERY=${KEEP_EVERY:-2340}  # 10 epochs of 234 steps
STEPS_PER_EPOCH=234         # 60,000 images in whole batches of 256
export SEEDS=${SEEDS:-3}
PRE_SEED=${PRE_SEED:-0}
LENGTHS=${LENGTHS:-10 20 50}
LENGTH_SEEDS=${LENGTH_SEEDS:-1}
TRANSFER=${TRANSFER:-runs/fmnist-transfer-v2}
source "$(dirname "$0")/lib/mimkit.sh"
ENCODERS=${ENCODERS:-docs/results/fmnist-transfer/encoders}
TABLES=${TABLES:-docs/results/fmnist-transfer/compare-classification-60k}  # the comparison's kept results.csv
DS2_KEEP=${DS2_KEEP:-docs/results/fmnist-mae-length}
epochs() { echo $((($1 + STEPS_PER_EPOCH / 2) / STEPS_PER_EPOCH)); }  # a step count in whole epochs
pre_of() { [ "$1" = 0 ] && echo "$OUT/pre/mae" || echo "$OUT/pre-s$1/mae"; }
name_of() { [ "$1" = 0 ] && echo mae || echo "mae_s$1"; }  # seed 0's encoders keep their first names
PRE=$(pre_of "$PRE_SEED")
NAME=$(name_of "$PRE_SEED")
WARMUP=$(python3 -c "print(round($EPOCHS * 0.05, 3))")
final_encoder() {  # a finished run's final encoder, exported once into ENCODERS (2.7 MB, committed), so a new machine
  # without the run directory still evaluates it; else the newest one committed for this seed
  if [ -f "$PRE/results.json" ]; then
    local step file
    step=$(grep -o '"step": *[0-9]*' "$PRE/results.json" | grep -o '[0-9]*$') || {
      echo "$PRE/results.json names no step: is it a finished pretraining run?" >&2
      exit 2
    }
    file=$ENCODERS/${NAME}_ep$(epochs "$step").safetensors
    [ -f "$file" ] || { mkdir -p "$ENCODERS" && $M export "$PRE" --out "$file" >&2; }  # stdout is the answer
    echo "$file"
  else
    ls "$ENCODERS/${NAME}"_ep*.safetensors 2>/dev/null | sort -V | tail -1 || true
  fi
}
kept_encoders() {  # NAME=DIR of the run's kept encoders (not the rolling last or best), the final one excepted
  local dir step name
  for dir in "$PRE"/checkpoints/step-*; do
    [ -d "$dir" ] || continue
    step=$((10#${dir##*step-}))
    name=${NAME}_ep$(epochs "$step")
    if [ $((step % KEEP_EVERY)) -eq 0 ] && [ "$name" != "$(basename "$1" .safetensors)" ]; then
      echo "$name=$dir"
    fi
  done
}
study=(bash "$(dirname "$0")/fmnist_transfer_study.sh" classification-60k "$TRANSFER")
case "$STAGE" in
pretrain)
  $M pretrain --config mae_fmnist_tiny --out "$PRE" --epochs "$EPOCHS" --set train.warmup_epochs="$WARMUP" \
    --set train.keep_every="$KEEP_EVERY" --set train.keep_last=1 --set train.tensorboard=false \
    --set train.log_every=50 --set seed="$PRE_SEED"
  ;;
compare)
  # into the transfer study's comparison on all 60,000 labels (scripts/fmnist_transfer_study.sh classification-60k,
  # same scratch network, baselines and protocols): kNN and the linear probe of every kept encoder, and once the run
  # has finished, of its final encoder, which is also fine-tuned
  final=$(final_encoder)
  mapfile -t models < <(kept_encoders "$final")
  [ -z "$final" ] || models+=("$(basename "$final" .safetensors)=$final")
  [ ${#models[@]} -gt 0 ] || { echo "no kept encoders in $PRE/checkpoints: run the pretrain stage first" >&2; exit 2; }
  MODELS="${models[*]} scratch" PROTOCOLS=knn,linprobe "${study[@]}"
  [ -z "$final" ] || MODELS="${models[-1]} scratch" PROTOCOLS=finetune "${study[@]}"
  ;;
length)
  # fine-tune the kept encoders at LENGTHS epochs and the final one (LENGTH_SEEDS seeds each): DS2's length axis
  [ -f "$PRE/results.json" ] || { echo "$PRE has not finished: run the pretrain stage first" >&2; exit 2; }
  final=$(final_encoder)
  models=()
  for spec in $(kept_encoders "$final"); do
    epoch=${spec%%=*}
    epoch=${epoch##*_ep}
    [[ " $LENGTHS " == *" $epoch "* ]] && models+=("$spec")
  done
  models+=("$(basename "$final" .safetensors)=$final")
  MODELS="${models[*]}" PROTOCOLS=finetune SEEDS=$LENGTH_SEEDS "${study[@]}"
  ;;
ds2)
  # every finished run's fine-tuned encoders as one scaling table (held-out loss at each kept step, fine-tuned top-1
  # from the comparison's kept results.csv), merged into DS2_KEEP so a run whose folder is gone keeps its rows
  # a run whose final encoder the comparison has not fine-tuned yet (its `length` still to run) waits, named
  runs=()
  for seed_pre in "$OUT"/pre/mae "$OUT"/pre-s*/mae; do
    [ -f "$seed_pre/results.json" ] || continue
    [ "$seed_pre" = "$OUT/pre/mae" ] && seed=0 || { seed=${seed_pre%/mae}; seed=${seed##*pre-s}; }
    [[ $seed =~ ^[0-9]+$ ]] || { echo "skipping $seed_pre: not a pretraining seed's folder (pre-sN)" >&2; continue; }
    PRE=$seed_pre NAME=$(name_of "$seed")
    final=$(final_encoder)
    final=$(basename "$final" .safetensors)
    if ! grep -q "^$final,[^,]*,finetune,classification,[^,]*,False," "$TABLES/results.csv" 2>/dev/null; then
      echo "skipping $seed_pre: $final has no fine-tuned score in $TABLES yet (PRE_SEED=$seed ... length)" >&2
      continue
    fi
    runs+=("$seed_pre=$final")
  done
  [ ${#runs[@]} -gt 0 ] || [ -f "$DS2_KEEP/results.csv" ] || { echo "no finished run in $OUT/pre*" >&2; exit 2; }
  [ ${#runs[@]} -eq 0 ] || $M scaling kept "${runs[@]}" --compare "$TABLES" --out "$DS2_KEEP" --merge
  # read against the comparison's scratch pico and the baselines that learn nothing (same labels, same test split)
  $M scaling analyze "$DS2_KEEP/results.csv" --out "$DS2_KEEP/analysis" --baselines mim_vit_pico="$TABLES"
  ;;
*) echo "unknown stage '$STAGE': pretrain, compare, length or ds2" >&2; exit 2 ;;
esac
