#!/usr/bin/env bash
# The input pipeline alone on a lent GPU machine, from the repository root:
#   bash scripts/gpu_loader_bench.sh OUT_DIR
# Writes ImageNet-shaped JPEG tar shards (500x375, about 75 KB each; `mimkit shards --data synthetic`), then times
# `mimkit bench loader` for MAE ViT-B/16 at 224 px (batch 256) with PIL decoding in worker processes
# (data.decode=pil) and with the JPEGs decoded on the GPU (data.decode=device, nvjpeg). Results land in
# OUT_DIR/bench-loader-{pil,device}/results.json and bench-loader.txt. COUNT, WORKERS, DEVICE_WORKERS, STEPS and DEVICE
# shrink it (a dry run on a CPU: COUNT=256 PER_SHARD=64 WORKERS=2 DEVICE_WORKERS=1 STEPS=2 DEVICE=cpu BATCH=32).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"
SHARDS=$(mktemp -d)
$PY -m mimkit shards --data synthetic --count ${COUNT:-4608} --per-shard ${PER_SHARD:-512} --image-size 500x375 \
  --out "$SHARDS" | tee "$OUT/bench-loader.txt"
for run in "pil ${WORKERS:-14}" "device ${DEVICE_WORKERS:-4}"; do
  set -- $run
  $PY -m mimkit bench loader --config mae_vit_base_in1k --steps ${STEPS:-15} --warmup 3 \
    --set data.name=webdataset --set data.root="$SHARDS" --set data.val_root=null --set data.decode=$1 --set data.num_workers=$2 \
    --set device=${DEVICE:-cuda} --set train.batch_size=${BATCH:-256} --out "$OUT/bench-loader-$1" \
    > "$OUT/bench-loader-$1.log" 2>&1 || tail -n 5 "$OUT/bench-loader-$1.log"
  $PY -c "import json, sys; r = json.load(open(sys.argv[1])); c = r['config']; print(f\"decode={c['decode']} \
workers={c['num_workers']} batch={c['batch']} {r['device']}: {r['img_per_s']:.0f} img/s\")" "$OUT/bench-loader-$1/results.json" \
    | tee -a "$OUT/bench-loader.txt"
done
rm -rf "$SHARDS"
