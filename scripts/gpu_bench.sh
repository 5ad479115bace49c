#!/usr/bin/env bash
# The performance table on a lent GPU machine, from the repository root:
#   bash scripts/gpu_bench.sh OUT_DIR
# One `mimkit bench suite` (ViT-B/16 at 224 px, bf16: MAE, SimMIM, distillation, fine-tuning, with and without
# torch.compile, against HuggingFace and official-style timm code; MAE ViT-L/16 batch 256 for memory), then the
# GPU-marked tests, then the fused loss, visible-patch embedding and row gathers against the plain code
# (scripts/step_parts_ab.py; PARTS=0 skips it), then the input pipeline alone (scripts/gpu_loader_bench.sh;
# LOADER=0 skips it). Everything lands in OUT_DIR (bench-suite.json, bench-suite.md, bench-suite.txt,
# bench-suite-breakdown.png: where each row's time goes, bench-traces.tar: Chrome traces of mimkit's profiled
# steps, versions.txt, gpu-tests.txt, step-parts.txt, bench-loader-*.json).
# EXTRA adds suite arguments (a dry run on a CPU: EXTRA="--device cpu --batch 2 --only mae --rounds 1").
# SUITE=0 skips the suite, TESTS=0 the GPU tests: a device command may run 10 minutes at most (the suite is stopped
# at SUITE_LIMIT, default 540 s, so its files still return), so a lent machine takes `LOADER=0 TESTS=0 PARTS=0
# bash scripts/gpu_bench.sh OUT` in one call and `SUITE=0 bash scripts/gpu_bench.sh OUT2` (GPU tests, parts,
# loader) in a second.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"
record_versions
if [ "${SUITE:-1}" = 1 ]; then
  # traces go outside OUT until the end: a command killed at its limit must not leave a dozen files there
  TRACES=$(mktemp -d)
  timeout ${SUITE_LIMIT:-540} $PY -m mimkit bench suite --preset vit-b16 --steps ${STEPS:-15} --warmup ${WARMUP:-5} \
    --out "$OUT/bench-suite.json" --trace-dir "$TRACES/traces" ${EXTRA:-} 2>&1 | tee "$OUT/bench-suite.txt" | tail -n 70
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
if [ -z "${EXTRA:-}" ] && [ "${TESTS:-1}" = 1 ] && $PY -c "import pytest" 2>/dev/null; then
  $PY -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -n 5 | tee "$OUT/gpu-tests.txt"
fi
if [ -z "${EXTRA:-}" ] && [ "${PARTS:-1}" = 1 ]; then
  timeout ${PARTS_LIMIT:-150} $PY "$(dirname "$0")/step_parts_ab.py" all --device cuda --passes 5 2>&1 \
    | grep -v Warning | tee "$OUT/step-parts.txt"
fi
if [ -z "${EXTRA:-}" ] && [ "${LOADER:-1}" = 1 ]; then
  bash "$(dirname "$0")/gpu_loader_bench.sh" "$OUT"
fi
