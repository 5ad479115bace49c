#!/usr/bin/env bash
# DS1 of docs/results/claims.md: does a larger ViT over-fit a small pretraining set with long training? Sweep
# scaling_fmnist_overfit_long (SimMIM, femto / pico / nano on 120 images, 40,000 steps of 32, 3 seeds) through
# scripts/fmnist_scaling_study.sh, whose stages it shares: each seed's rows and loss curves are kept in
# docs/results/fmnist-overfit-long (KEEP) and the analysis calls a held-out turn-up inside each run.
#   bash scripts/fmnist_overfit_study.sh sweep SEED [OUT_DIR]   # one seed's 3 runs; resumable; ~45 min on 2 cores
#   bash scripts/fmnist_overfit_study.sh analyze [OUT_DIR]      # KEEP/analysis: results.md, turnup_curves.png
#   bash scripts/fmnist_overfit_study.sh keep|restore [OUT_DIR]
set -euo pipefail
STAGE=${1:?usage: fmnist_overfit_study.sh sweep SEED|analyze|keep|restore [OUT_DIR]}
shift
args=("$STAGE")
case "$STAGE" in
sweep) args+=("${1:?usage: fmnist_overfit_study.sh sweep SEED [OUT_DIR]}"); shift ;;
analyze | keep | restore) ;;
*) echo "unknown stage '$STAGE': sweep, analyze, keep or restore" >&2; exit 2 ;;
esac
export SWEEP=${SWEEP:-scaling_fmnist_overfit_long} KEEP=${KEEP:-docs/results/fmnist-overfit-long}
exec bash "$(dirname "$0")/fmnist_scaling_study.sh" "${args[@]}" "${1:-runs/fmnist-overfit-long}"
