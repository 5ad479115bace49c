# Sourced by the GPU check scripts: OUT (created), mimkit from the tree on PYTHONPATH, MIMKIT_DATA from the second
# argument, PY, and PyYAML (mimkit's one dependency a bare GPU image may lack) from a carried pure-Python copy.
OUT=${1:?usage: $(basename "$0") OUT_DIR [FMNIST_PARENT_DIR]}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
[ -n "${2:-}" ] && export MIMKIT_DATA=$2
PY=${PYTHON:-python3}
$PY -c "import yaml" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/runs/pylib
