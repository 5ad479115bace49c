#!/usr/bin/env bash
# The Fashion-MNIST transfer study (issue 19 item 6): MAE, SimMIM, MoCo v3, supervised and scratch mim_vit_pico
# encoders compared by `mimkit compare`, frozen (kNN, linear probe) and fine-tuned, on classification (semantic) and
# four dense geometric tasks, next to the baselines that learn nothing, 3 seeds.
#   bash scripts/fmnist_transfer_study.sh pretrain [OUT_DIR]         # resumable; about 45 minutes on 2 CPU cores
#   bash scripts/fmnist_transfer_study.sh classification [OUT_DIR]   # resumable; about 80 minutes
#   bash scripts/fmnist_transfer_study.sh classification-60k [OUT_DIR]  # every label; ~30 min per fine-tune cell
#   bash scripts/fmnist_transfer_study.sh geometric [OUT_DIR]        # resumable; ~10 min per fine-tune cell (below)
#   bash scripts/fmnist_transfer_study.sh fine-grained [OUT_DIR]     # the four tops only (below)
#   bash scripts/fmnist_transfer_study.sh concept [OUT_DIR]          # supervised on classes 0-4, transfer to 5-9
#   PRE_SEED=1 bash scripts/fmnist_transfer_study.sh pretrain [OUT_DIR]  # the four encoders again with seed 1
#   bash scripts/fmnist_transfer_study.sh attention [OUT_DIR]        # analyse every pretraining seed, then pool
#   bash scripts/fmnist_transfer_study.sh attention-long [OUT_DIR]   # the same at the longest training (below)
# Pretraining: every encoder sees the same 800 steps of 256 images (3.4 epochs of the 60,000 training images): MAE
# is `make demo`'s encoder (mae_fmnist_tiny), SimMIM simmim_fmnist_tiny, MoCo v3 mocov3_fmnist_tiny, supervised
# supervised_fmnist_tiny, each recipe as shipped. Evaluation: 6,000 labelled images (10% class-balanced); kNN and
# the linear probe (probe_fmnist) on frozen features; fine-tuning with the swept schedule of finetune_fmnist_pico
# (batch 128, lr 1e-3, no layer decay, 15 epochs for classification, 10 for localisation); scratch shares the
# pretrained encoders' initialisation scheme (MAE's). Every cell is judged on the test split.
# Attention (the Dark Secrets analyses, issue 19 items 5-6): `analyze report --foreground` of the four encoders and
# a random one on 1,000 test images per pretraining seed (OUT/pre = seed 0, OUT/pre-sN = seed N), then `analyze
# seeds` pools them (mean +- std over pretraining seeds).
# attention-long: the Dark Secrets analyses at the longest training the study has: MAE pretrained 100 epochs (LONG_MAE,
# the committed encoder of scripts/fmnist_mae_long.sh), a supervised pico trained from scratch for 15 epochs on all
# labels (classification-60k's scratch fine-tune cell) and that MAE encoder after its own fine-tuning (its mae_ep100
# cell, paired before/after), next to a random pico; one report per seed whose two cells have finished (the seeds
# vary the supervised model and MAE's fine-tune; the 100-epoch pretraining is one run), pooled by `analyze seeds`.
# geometric: the dense tasks of scripts/fmnist_geometric_tasks.sh (cluttered localisation, keypoints, depth map,
# tracking; GEOMETRIC_TASKS, comma-separated, picks some), a dense head on frozen patch tokens (linprobe) and fine-tuned (TASK_EPOCHS),
# 6,000 training images, next to each task's trivial predictor; 8-13 minutes per fine-tuning cell on 2 cores, so
# the whole (5 models x 4 tasks x 3 seeds) is hours: start with MODELS="mae_ep100=... supervised scratch" (DR4's
# question), LANES=2. Its cells are kept and restored as classification-60k's are. PROTOCOLS there: linprobe
# and/or finetune (compare runs no kNN on a dense task).
# fine-grained: the four tops Fashion-MNIST confuses most (T-shirt, pullover, coat, shirt; data.class_subset), every
# label of them (24,000 images), the 4,000 test images of those classes. concept: the "categories covered by
# supervised pretraining" test: a supervised encoder pretrained on classes 0-4 only (PRE/supervised_0to4, the same
# 800 steps) beside every encoder, all transferred to classes 5-9 (30,000 labels). Both compare with
# classification-60k's protocols, and keep their cells as it does.
# classification-60k: the same comparison on all 60,000 labels, where the fine-tuning recipe reaches 89%; its cell
# markers and tables are kept in docs/results/fmnist-transfer/ (KEEP) and restored from there on a new machine.
# MODELS (e.g. "mae scratch") and PROTOCOLS (e.g. knn,linprobe) run a subset first; SEEDS=1, 2, 3 adds seeds.
# STEPS, FT_EPOCHS, TASK_EPOCHS, FT_WARMUP and SEEDS override the sizes (smoke runs only).
set -euo pipefail
STAGE=${1:?usage: fmnist_transfer_study.sh pretrain|classification|classification-60k|geometric|fine-grained|concept|attention|attention-long|keep|restore [OUT_DIR]}
OUT=${2:-runs/fmnist-transfer}
STEPS=${STEPS:-800}
FT_EPOCHS=${FT_EPOCHS:-15}
TASK_EPOCHS=${TASK_EPOCHS:-10}
GEOMETRIC_TASKS=${GEOMETRIC_TASKS:-cluttered_localization,keypoints,depth,tracking}
FT_WARMUP=${FT_WARMUP:-1}
SEEDS=${SEEDS:-3}
source "$(dirname "$0")/lib/mimkit.sh"
PRE_SEED=${PRE_SEED:-0}
PRE=$OUT/pre
[ "$PRE_SEED" = 0 ] || PRE=$OUT/pre-s$PRE_SEED
DEMO=${MAE:-runs/demo-mae-fmnist}       # make demo's encoder (seed 0, 800 steps); other seeds and smoke runs train
MAE=$DEMO
[ "$STEPS" = 800 ] && [ "$PRE_SEED" = 0 ] || MAE=$PRE/mae
quiet=(--set train.tensorboard=false --set train.log_every=50)
pretrain() {  # pretrain NAME RECIPE: skipped once the run has finished
  [ -f "$PRE/$1/results.json" ] ||
    $M pretrain --config "$2" --out "$PRE/$1" --steps "$STEPS" --set seed="$PRE_SEED" "${quiet[@]}"
}
# SimMIM is the BEiT-style ViT: name the one scratch copies (plain ViT pico, as MAE, MoCo v3 and supervised).
# MODELS picks a subset (e.g. MODELS="mae scratch"): cells are named per model, so a later run with more reuses them.
MODELS=${MODELS:-mae simmim mocov3 supervised scratch}
inits=()
for m in $MODELS; do
  case $m in
  mae) inits+=(--init mae="$MAE") ;;
  scratch) inits+=(--init scratch=scratch:"$MAE") ;;
  simmim | mocov3 | supervised) inits+=(--init "$m=$OUT/pre/$m") ;;
  *=*) inits+=(--init "$m") ;;  # NAME=SOURCE: e.g. a longer MAE run's kept encoder (scripts/fmnist_mae_long.sh)
  *) echo "unknown model '$m' in MODELS: mae simmim mocov3 supervised scratch, or NAME=SOURCE" >&2; exit 2 ;;
  esac
done
every=(--set model.name=mim_vit_pico --set model.init_scheme=mae --finetune-config finetune_fmnist_pico
  --set-finetune train.warmup_epochs="$FT_WARMUP" --set-finetune train.tensorboard=false)
common=("${every[@]}" --set-probe data.fraction=0.1 --set-finetune data.fraction=0.1)  # 6,000 labels
# A compare's small results travel in the repository (KEEP, default docs/results/fmnist-transfer): `keep` copies the
# finished cells' markers and rebuilt tables there, `restore` brings them back into a fresh run directory
# (scripts/lib/compare_keep.sh).
KEEP=${KEEP:-docs/results/fmnist-transfer}
source "$(dirname "$0")/lib/compare_keep.sh"
# the tables' contrasts (compare --contrast, each once both models have cells): MIM against scratch and supervised
# (DR4), the long MAE against the short one, the pretraining methods against each other
PAIRS=(mae_ep100:scratch mae_ep100:supervised mae_ep100:mae mae:scratch mae:supervised supervised:scratch
  mae:mocov3 mae:simmim simmim:supervised mocov3:supervised)
# the 100-epoch MAE's three pretraining runs (scripts/fmnist_mae_long.sh, PRE_SEED 0-2) pooled once all have cells
# (compare --pool: the spread then includes the pretraining's), and the pool against scratch and supervised
PAIRS+=(mae_ep100_runs=mae_ep100,mae_s1_ep100,mae_s2_ep100 mae_ep100_runs:scratch mae_ep100_runs:supervised)
case "$STAGE" in
pretrain)
  if [ "$MAE" = "$PRE/mae" ]; then pretrain mae mae_fmnist_tiny
  else [ -f "$MAE/results.json" ] || $PY -m mimkit.demo --out "$MAE"; fi  # deterministic
  pretrain supervised supervised_fmnist_tiny
  pretrain simmim simmim_fmnist_tiny
  pretrain mocov3 mocov3_fmnist_tiny
  ;;
classification)
  $M compare "${LANES_ARG[@]}" "${inits[@]}" --out "$OUT/compare-classification" --protocols knn,linprobe,finetune \
    --tasks classification --seeds "$SEEDS" "${common[@]}" --set-finetune train.epochs="$FT_EPOCHS"
  ;;
classification-60k)  # every label: where the fine-tuning recipe reaches 89%; PROTOCOLS picks a subset (frozen first)
  restore_compare "$KEEP" "$OUT/compare-classification-60k"
  $M compare "${LANES_ARG[@]}" "${inits[@]}" --out "$OUT/compare-classification-60k" --protocols "${PROTOCOLS:-knn,linprobe,finetune}" \
    --tasks classification --seeds "$SEEDS" "${every[@]}" --set-finetune train.epochs="$FT_EPOCHS"
  keep_compare "$KEEP" "$OUT/compare-classification-60k" "${PAIRS[@]}"
  ;;
fine-grained | concept)
  extra=()
  subset="[0,2,4,6]"
  if [ "$STAGE" = concept ]; then
    subset="[5,6,7,8,9]"
    [ -f "$PRE/supervised_0to4/results.json" ] || $M pretrain --config supervised_fmnist_tiny \
      --out "$PRE/supervised_0to4" --steps "$STEPS" --set seed="$PRE_SEED" --set "data.class_subset=[0,1,2,3,4]" \
      "${quiet[@]}"
    extra=(--init supervised_0to4="$PRE/supervised_0to4")
  fi
  restore_compare "$KEEP" "$OUT/compare-$STAGE"
  $M compare "${LANES_ARG[@]}" "${inits[@]}" "${extra[@]}" --out "$OUT/compare-$STAGE" --protocols "${PROTOCOLS:-knn,linprobe,finetune}" \
    --tasks classification --seeds "$SEEDS" "${every[@]}" --set "data.class_subset=$subset" \
    --set-finetune train.epochs="$FT_EPOCHS"
  keep_compare "$KEEP" "$OUT/compare-$STAGE" "${PAIRS[@]}"
  ;;
geometric)  # GEOMETRIC_TASKS (default: the four of scripts/fmnist_geometric_tasks.sh), kept like classification-60k
  restore_compare "$KEEP" "$OUT/compare-geometric"
  $M compare "${LANES_ARG[@]}" "${inits[@]}" --out "$OUT/compare-geometric" --protocols "${PROTOCOLS:-linprobe,finetune}" \
    --tasks "$GEOMETRIC_TASKS" --seeds "$SEEDS" "${common[@]}" --set-finetune train.epochs="$TASK_EPOCHS"
  keep_compare "$KEEP" "$OUT/compare-geometric" "${PAIRS[@]}"
  ;;
keep | restore)  # every compare of OUT: markers and tables to KEEP, or back from it
  keep_or_restore_all "$STAGE" "$OUT" "$KEEP" "${PAIRS[@]}"
  ;;
attention)
  pooled=()
  for pre in "$OUT"/pre "$OUT"/pre-s*; do
    [ -d "$pre" ] || continue
    seed=0
    [ "$pre" = "$OUT/pre" ] || seed=${pre##*-s}
    mae=$pre/mae
    [ "$seed" = 0 ] && [ "$STEPS" = 800 ] && mae=$DEMO
    missing=$(for m in "$mae" "$pre"/{simmim,mocov3,supervised}; do [ -f "$m/results.json" ] || echo "$m"; done)
    [ -z "$missing" ] || { echo "[study] seed $seed skipped: not pretrained yet: $missing" >&2; continue; }
    an=$OUT/attention/seed$seed
    [ -f "$an/report.html" ] || $M analyze report --model mae="$mae" --model simmim="$pre/simmim" \
      --model mocov3="$pre/mocov3" --model supervised="$pre/supervised" --model random=scratch:"$mae" \
      --set model.name=mim_vit_pico --set model.init_scheme=mae --set seed="$seed" --images 1000 --foreground \
      --out "$an"
    pooled+=(--from "$an")
  done
  [ ${#pooled[@]} -ge 4 ] || { echo "[study] fewer than 2 pretraining seeds analysed: nothing to pool" >&2; exit 0; }
  $M analyze seeds "${pooled[@]}" --out "$OUT/attention/seeds"
  ;;
attention-long)
  LONG_MAE=${LONG_MAE:-docs/results/fmnist-transfer/encoders/mae_ep100.safetensors}
  [ -f "$LONG_MAE" ] || { echo "no 100-epoch MAE encoder at $LONG_MAE: set LONG_MAE" >&2; exit 2; }
  cells=$OUT/compare-classification-60k/cells
  pooled=()
  for seed in 0 1 2; do
    suffix=""
    [ "$seed" = 0 ] || suffix=__seed$seed
    sup=$cells/scratch__finetune__classification$suffix
    ft=$cells/mae_ep100__finetune__classification$suffix
    if [ ! -f "$sup/results.json" ] || [ ! -f "$ft/results.json" ]; then
      echo "[study] seed $seed skipped: fine-tune cells not finished: $sup, $ft" >&2
      continue
    fi
    an=$OUT/attention-long/seed$seed
    [ -f "$an/report.html" ] || $M analyze report --model mae="$LONG_MAE" --model supervised="$sup" \
      --model mae_ft="$ft" --pair mae,mae_ft --model random=scratch:"$sup" --set model.name=mim_vit_pico \
      --set model.init_scheme=mae --set seed="$seed" --images 1000 --foreground --out "$an"
    pooled+=(--from "$an")
  done
  [ ${#pooled[@]} -ge 4 ] || { echo "[study] fewer than 2 seeds analysed: nothing to pool" >&2; exit 0; }
  $M analyze seeds "${pooled[@]}" --out "$OUT/attention-long/seeds"
  ;;
*) echo "unknown stage '$STAGE': pretrain, classification, classification-60k, geometric, fine-grained, concept, attention,\
 attention-long, keep or restore" >&2
  exit 2 ;;
esac
