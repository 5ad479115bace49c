#!/usr/bin/env bash
# The performance measurements on a lent GPU machine, from the repository root:
#   bash scripts/gpu_bench.sh OUT_DIR
# Stages, in this order, each stopped at its own time limit so that whatever it finished comes back:
#   suite     `mimkit bench suite` (ViT-B/16 at 224 px, bf16, against HuggingFace and official-style timm code, with
#             the time breakdown and the Chrome traces of mimkit's rows); ONLY picks its workloads (default all:
#             mae,simmim,distill,finetune,memory); SUITE_LIMIT (default 540 s)
#   tests     the GPU-marked tests; TESTS_LIMIT (default 150 s)
#   pipeline  MAE ViT-B/16 fed from JPEG tar shards through mimkit's own input pipeline (WebDataset, JPEGs decoded
#             by nvjpeg: data.decode=device) next to the same step on batches already on the device
#             (`mimkit bench pretrain --pipeline`), compiled (PIPE_COMPILE, default true), both profiled for where
#             the time goes (PIPE_BREAKDOWN steps, default 1); PIPELINE_LIMIT (150 s)
#   graphs    the same MAE step with CUDA graphs (train.compile=reduce-overhead) next to plain compile;
#             GRAPHS_LIMIT (180 s)
#   parts     fused losses, visible-patch embedding and row gathers against the plain code
#             (scripts/step_parts_ab.py); PARTS_LIMIT (150 s)
#   loader    the input pipeline alone (scripts/gpu_loader_bench.sh)
# STAGES picks them (default "suite tests parts loader"). A device command may run 10 minutes at most, so a lent
# machine splits them over calls, e.g. STAGES="suite tests" ONLY=mae,simmim, then
# STAGES="pipeline graphs parts" plus ONLY=memory for the ViT-L memory rows.
# Everything lands in OUT_DIR: bench-suite/{results.json,report.md,breakdown.png}, bench-suite.txt,
# bench-traces.tar, versions.txt, gpu-tests.txt, bench-pipeline/results.json, bench-pipeline.txt, bench-graphs.txt,
# step-parts.txt, bench-loader-*/results.json.
# DRY=1 shrinks every stage for a dry run on a CPU (tiny shapes, two steps; the tests stage is skipped there).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"
STAGES=${STAGES:-suite tests parts loader}
DRY=${DRY:-0}
has() { [[ " $STAGES " == *" $1 "* ]]; }
record_versions
if [ "$DRY" = 1 ]; then
  DEV=cpu; SUITE_ARGS="--device cpu --batch 2 --rounds 1 --steps 1 --warmup 1"; BATCH=${BATCH:-4}; STEPS=2
  SHARD_COUNT=16; PER_SHARD=8; PIPE_SETS=${PIPE_SETS:-"--set data.num_workers=1"}
else
  DEV=cuda; SUITE_ARGS="--preset vit-b16 --steps ${STEPS:-15} --warmup ${WARMUP:-5}"; BATCH=${BATCH:-256}
  STEPS=${STEPS:-30}; SHARD_COUNT=${SHARD_COUNT:-3072}; PIPE_SETS=${PIPE_SETS:-"--set data.num_workers=4"}
fi
ONLY_ARGS=${ONLY:+--only $ONLY}

if has suite; then
  # traces go outside OUT until the end: a command killed at its limit must not leave a dozen files there
  TRACES=$(mktemp -d)
  timeout ${SUITE_LIMIT:-540} $PY -m mimkit bench suite $SUITE_ARGS $ONLY_ARGS --out "$OUT/bench-suite" \
    --trace-dir "$TRACES/traces" ${EXTRA:-} 2>&1 | tee "$OUT/bench-suite.txt" | tail -n 70
  # a lent machine returns at most 8 files of 16 MiB: the traces travel as one tar, MAE's alone if all are too big
  if [ -d "$TRACES/traces" ]; then
    tar -C "$TRACES" -cf "$OUT/bench-traces.tar" traces
    if [ "$(stat -c %s "$OUT/bench-traces.tar")" -gt 15000000 ]; then
      rm -f "$OUT/bench-traces.tar"
      (cd "$TRACES" && ls traces/mae-*.json.gz >/dev/null 2>&1 && tar -cf "$OUT/bench-traces.tar" traces/mae-*.json.gz)
      [ -f "$OUT/bench-traces.tar" ] && [ "$(stat -c %s "$OUT/bench-traces.tar")" -gt 15000000 ] \
        && rm -f "$OUT/bench-traces.tar"
    fi
  fi
  rm -rf "$TRACES"
fi

if has tests && [ "$DRY" != 1 ] && $PY -c "import pytest" 2>/dev/null; then
  # no captured logs (inductor's DEBUG lines buried the one failure's message on the first H200 run)
  timeout ${TESTS_LIMIT:-150} $PY -m pytest -q -p no:cacheprovider -p no:logging --tb=short -m gpu -rfE \
    --continue-on-collection-errors tests 2>&1 | tee "$OUT/gpu-tests.txt" | tail -n 60
fi

# MAE ViT-B/16 at BATCH on the device: the one config the pipeline and graphs stages time
mae_bench() {
  $PY -m mimkit bench pretrain --config mae_vit_base_in1k --steps $STEPS --warmup 5 --set device=$DEV \
    --set train.batch_size=$BATCH --set data.val_root=null "$@"
}
if has pipeline; then
  SHARDS=$(mktemp -d)
  {
    $PY -m mimkit shards --data synthetic --count $SHARD_COUNT --per-shard ${PER_SHARD:-256} --image-size 500x375 --out "$SHARDS"
    timeout ${PIPELINE_LIMIT:-150} bash -c "$(declare -f mae_bench); PY=$PY DEV=$DEV BATCH=$BATCH STEPS=$STEPS \
      mae_bench --pipeline --breakdown-steps ${PIPE_BREAKDOWN:-1} --set train.compile=${PIPE_COMPILE:-true} --set data.name=webdataset \
      --set data.root=$SHARDS --set data.decode=${DECODE:-device} $PIPE_SETS --out $OUT/bench-pipeline"
  } 2>&1 | grep -v Warning | tail -n 40 | tee "$OUT/bench-pipeline.txt"
  rm -rf "$SHARDS"
fi

if has graphs; then
  for mode in ${GRAPH_MODES:-true reduce-overhead}; do
    echo "== train.compile=$mode"
    timeout $(( ${GRAPHS_LIMIT:-180} / 2 )) bash -c "$(declare -f mae_bench); PY=$PY DEV=$DEV BATCH=$BATCH \
      STEPS=$STEPS mae_bench --breakdown-steps 0 --set data.name=synthetic --set train.compile=$mode \
      --out /tmp/graphs" >/dev/null 2>&1
    $PY -c "import json; r = json.load(open('/tmp/graphs/results.json'))['mimkit']; \
print(f\"{r['img_per_s']:.0f} img/s, {r['step_ms']:.1f} ms/step, peak {r['peak_memory_mb'] or 0:.0f} MB\")" 2>&1
    rm -rf /tmp/graphs
  done 2>&1 | tee "$OUT/bench-graphs.txt"
fi

if has parts; then
  timeout ${PARTS_LIMIT:-150} $PY "$(dirname "$0")/step_parts_ab.py" all --device $DEV --passes 5 2>&1 \
    | grep -v Warning | tee "$OUT/step-parts.txt"
fi

if has loader && [ "$DRY" != 1 ]; then
  bash "$(dirname "$0")/gpu_loader_bench.sh" "$OUT"
fi
