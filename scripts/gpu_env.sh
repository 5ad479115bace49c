# Sourced by the GPU check scripts: OUT (created), mimkit from the tree on PYTHONPATH, MIMKIT_DATA from the second
# argument, PY, PyYAML (mimkit's one dependency a bare GPU image may lack) from a carried pure-Python copy, and
# record_versions (GPU, driver and library versions into OUT/versions.txt).
OUT=${1:?usage: $(basename "$0") OUT_DIR [FMNIST_PARENT_DIR]}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1  # rows reach OUT/*.txt as they are printed, also from a command killed at its limit
[ -n "${2:-}" ] && export MIMKIT_DATA=$2
PY=${PYTHON:-python3}
$PY -c "import yaml" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/runs/pylib

record_versions() {
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch, timm, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'transformers', transformers.__version__)"
  } > "$OUT/versions.txt" 2>&1
  cat "$OUT/versions.txt"
}
