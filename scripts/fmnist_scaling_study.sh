#!/usr/bin/env bash
# The Fashion-MNIST data-scaling study re-run with issue 19's protocols (sweep scaling_fmnist_v2: SimMIM on 3 ViT
# sizes at patch 8 x 600 / 6,000 / 60,000 images x 300 / 1,000 / 3,000 steps, 3 seeds, every run fine-tuned with
# finetune_fmnist_pico's schedule on 6,000 labels), next to each size trained from random initialisation with the
# same fine-tuning and the baselines that learn nothing (raw-pixel kNN and linear probe, the majority class).
#   bash scripts/fmnist_scaling_study.sh sweep SEED [OUT_DIR]   # one seed's 27 runs; resumable; ~1.5 h on 2 cores
#   bash scripts/fmnist_scaling_study.sh baselines [OUT_DIR]    # per size: compare --init scratch=scratch, 3 seeds
#   bash scripts/fmnist_scaling_study.sh analyze [OUT_DIR]      # scaling analyze of every kept run + baselines
#   bash scripts/fmnist_scaling_study.sh keep|restore [OUT_DIR]
# Small results travel in the repository (KEEP, default docs/results/fmnist-scaling-v2): after each piece, the sweep's
# finished rows are merged into KEEP/results.csv, which the analysis reads (a seed kept there need not run again on
# a new machine; a piece lost with its machine runs again), and the baseline comparisons' cell markers and tables
# are kept as the transfer study's are (a new machine skips their measured cells).
# MODELS (e.g. "mim_vit_pico") runs a subset of the baselines; SEEDS and FT_EPOCHS override their sizes (smoke runs).
# FINETUNE=0 runs a seed's pretraining without its 6,000-label fine-tunes (mimkit sweep --no-finetune): that protocol
# does not resolve pretraining at these lengths (docs/results/fmnist-scaling.md), and DS3 reads the held-out loss.
set -euo pipefail
STAGE=${1:?usage: fmnist_scaling_study.sh sweep SEED|baselines|analyze|keep|restore [OUT_DIR]}
if [ "$STAGE" = sweep ]; then
  SEED=${2:?usage: fmnist_scaling_study.sh sweep SEED [OUT_DIR]}
  shift
fi
OUT=${2:-runs/fmnist-scaling-v2}
SWEEP=${SWEEP:-scaling_fmnist_v2}
SEEDS=${SEEDS:-3}
FT_EPOCHS=${FT_EPOCHS:-15}
MODELS=${MODELS:-mim_vit_femto mim_vit_pico mim_vit_nano}
KEEP=${KEEP:-docs/results/fmnist-scaling-v2}
source "$(dirname "$0")/lib/mimkit.sh"
source "$(dirname "$0")/lib/compare_keep.sh"
keep_rows() {  # the sweep's finished rows into KEEP/results.csv, their curves into KEEP/curves.json (a run's replaced)
  [ -f "$OUT/results.csv" ] || return 0
  mkdir -p "$KEEP"
  python3 - "$OUT" "$KEEP" <<'EOF'
import csv, json, os, sys
out, keep = sys.argv[1], sys.argv[2]
rows, curves = {}, {}
for folder in (keep, out):
    if os.path.isfile(f"{folder}/results.csv"):
        with open(f"{folder}/results.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            rows.update((row["run"], row) for row in reader)
    if os.path.isfile(f"{folder}/curves.json"):
        with open(f"{folder}/curves.json") as fh:
            curves.update(json.load(fh))
with open(f"{keep}/results.csv.tmp", "w", newline="") as fh:
    writer = csv.DictWriter(fh, header)
    writer.writeheader()
    writer.writerows(rows.values())
with open(f"{keep}/curves.json.tmp", "w") as fh:
    json.dump({run: c for run, c in curves.items() if run in rows}, fh)
os.replace(f"{keep}/curves.json.tmp", f"{keep}/curves.json")
os.replace(f"{keep}/results.csv.tmp", f"{keep}/results.csv")
EOF
}
case "$STAGE" in
sweep)
  skip=()
  [ "${FINETUNE:-1}" = 1 ] || skip=(--no-finetune)
  $M sweep --config "$SWEEP" --out "$OUT" --only "*-seed$SEED" "${skip[@]}"
  keep_rows
  ;;
baselines)  # each size from random initialisation: frozen (kNN, linear probe) and fine-tuned as the sweep's runs
  for model in $MODELS; do
    cmp=$OUT/compare-$model
    restore_compare "$KEEP" "$cmp"
    $M compare "${LANES_ARG[@]}" --init scratch=scratch --out "$cmp" --protocols knn,linprobe,finetune --tasks classification \
      --seeds "$SEEDS" --set model.name="$model" --set model.family=vit --set model.patch_size=8 \
      --set data.fraction=0.1 --finetune-config finetune_fmnist_pico --set-finetune train.epochs="$FT_EPOCHS" \
      --set-finetune train.tensorboard=false
    keep_compare "$KEEP" "$cmp"
  done
  ;;
analyze)
  [ -f "$KEEP/results.csv" ] || { echo "no kept sweep rows in $KEEP/results.csv: run the sweep stage first" >&2; exit 2; }
  base=()
  for dir in "$KEEP"/compare-*; do
    if [ -f "$dir/summary.csv" ]; then base+=(--baselines "${dir##*/compare-}=$dir"); fi
  done
  $M scaling analyze "$KEEP/results.csv" --out "$KEEP/analysis" "${base[@]}"
  ;;
keep)
  keep_rows
  keep_or_restore_all keep "$OUT" "$KEEP"
  ;;
restore) keep_or_restore_all restore "$OUT" "$KEEP" ;;
*) echo "unknown stage '$STAGE': sweep, baselines, analyze, keep or restore" >&2; exit 2 ;;
esac
