#!/usr/bin/env bash
# Frozen-feature kNN (k=20, T=0.07, mean-pooled patch tokens; 6,000 labelled train images, full test split) of every
# run of the scaling_fmnist sweep, then the same `mimkit scaling analyze` with kNN top-1 in the accuracy column:
#   bash scripts/fmnist_scaling_knn.sh [SWEEP_DIR]          (about 10 minutes on 2 CPU cores)
set -euo pipefail
DIR=${1:-runs/fmnist-scaling}
source "$(dirname "$0")/lib/mimkit.sh"
for run in "$DIR"/runs/*/; do
  [ -f "$run/knn/knn.json" ] || [ -f "$run/knn/results.json" ] && continue
  $M knn --init "$run" --out "$run/knn" --set data.fraction=0.1 --set probe.pool=avg > "$run/knn.log" 2>&1
done
$PY - "$DIR" <<'PY'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = list(csv.DictReader(open(out / "results.csv")))
for row in rows:  # the analysis reads its accuracy from finetune_top1: put kNN top-1 there
    knn = Path(row["run_dir"]) / "knn"
    found = knn / "knn.json" if (knn / "knn.json").is_file() else knn / "results.json"  # older runs: results.json
    row["finetune_top1"] = json.loads(found.read_text())["top1"]
with open(out / "results_knn.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
PY
$M scaling analyze "$DIR/results_knn.csv" --out "$DIR/analysis-knn"
