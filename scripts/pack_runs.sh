#!/usr/bin/env bash
# Copy the weights-only essentials of run directories (config, metrics, results, last checkpoint's model.safetensors
# and meta.json; no optimizer state) into a tar.gz: to bring students back from a lent GPU machine.
#   bash scripts/pack_runs.sh ARCHIVE.tar.gz BASE_DIR RUN_DIR_RELATIVE...
set -euo pipefail
ARCHIVE=$1; BASE=$2; shift 2
STAGE=$(mktemp -d)
for rel in "$@"; do
  src="$BASE/$rel"; dst="$STAGE/$rel"
  mkdir -p "$dst/checkpoints/last"
  for f in config.yaml results.json linprobe.json knn.json metrics.jsonl chain.json; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/"; done
  [ -d "$src/checkpoints/last" ] && cp -L "$src/checkpoints/last/model.safetensors" "$src/checkpoints/last/meta.json" \
    "$dst/checkpoints/last/"
done
tar czf "$ARCHIVE" -C "$STAGE" "$@"
rm -rf "$STAGE"
