#!/usr/bin/env bash
# The TinyMIM ablation re-run with issue 19's protocols, CPU-sized: the 100-epoch MAE mim_vit_pico (0.68M encoder
# parameters; scripts/fmnist_mae_long.sh, exported and committed) is the teacher, mim_vit_femto (3 blocks x 3 heads,
# width 48, 0.09M) the student, 7.5x smaller (TinyMIM: ViT-B into ViT-S, 4x, and ViT-T, 15x). Students: each target
# (cls, feature, qk, vv, qk+vv) from raw input, qk+vv from masked input (50%), qk+vv from the teacher's block
# TEACHER_LAYER (4 of 6: TinyMIM's 18 of 24) instead of its last, and qk+vv sequentially through a mid-sized student
# (seq_mid: 4 blocks x 3 heads, width 72, 0.25M; then seq: femto taught by seq_mid; TinyMIM's B -> S -> T), each run
# EPOCHS epochs of the 60,000 training images; a MAE-pretrained femto with the same image budget (mae) and with
# MAE_LONG_EPOCHS (mae_long: MIM needs long schedules, distillation converges fast); a random femto (scratch).
# Every femto is compared
# by `mimkit compare` on all 60,000 labels next to the baselines that learn nothing: frozen (kNN, linear probe; the
# teacher too) and fine-tuned (finetune_fmnist_pico's schedule), each cell judged on the test split, SEEDS seeds.
#   bash scripts/fmnist_distill_femto.sh pretrain [OUT_DIR]   # resumable; ~15 min per student on 2 CPU cores
#   bash scripts/fmnist_distill_femto.sh compare [OUT_DIR]    # resumable; frozen cells minutes, fine-tuning longer
#   bash scripts/fmnist_distill_femto.sh keep|restore [OUT_DIR]
# The compare's cell markers and tables are kept in docs/results/fmnist-distill-femto/ (KEEP) and restored from
# there on a new machine, so measured cells are skipped; the compared encoders are exported into KEEP/encoders. MODELS (e.g. "qkvv mae") and PROTOCOLS (e.g. knn,linprobe)
# run a subset (MODELS in the pretrain stage too, where seq_mid is a name: e.g. one lane again after a stop); SEEDS=1, 2, 3 adds seeds. TEACHER (an exported encoder or run), STUDENT_MODEL, EPOCHS and FT_EPOCHS
# override the sizes; EXTRA adds --set words to every command (smoke runs). LANES=2 runs the pretrain stage as two
# single-thread lanes at once (seq_mid, seq, qkvv, qk, vv | cls, feature, qkvv_masked, the layer student, the MAE
# femtos), each lane's output in OUT/lane1.log and lane2.log; the default is one lane with every thread. Whether two
# lanes are faster on a given CPU is for `mimkit bench` or a timed pair of runs to say, not this script.
# Replicas (the fine-tuning seeds of one distilled student measure the protocol's noise, not the distillation's):
#   REPLICA=1 bash scripts/fmnist_distill_femto.sh pretrain [OUT_DIR]   # REPLICATED again with seed 1, in
#     OUT/replica-1 (default REPLICATED: T1's qkvv cls feature; seq there trains its own seq_mid first)
#   REPLICAS="1 2" bash scripts/fmnist_distill_femto.sh compare [OUT_DIR]   # adds NAME_r1, NAME_r2 (REPLICA_SEEDS
#     evaluation seeds each, default 1) for the models of both MODELS (when set) and REPLICATED; keep pools each
#     femto with the replicas exported into KEEP/encoders, NAME_runs=NAME,NAME_r1,... (compare --pool), once
#     every one has cells, and contrasts the pools (T1-T4's pairs)
set -euo pipefail
STAGE=${1:?usage: fmnist_distill_femto.sh pretrain|compare|keep|restore [OUT_DIR]}
OUT=${2:-runs/fmnist-distill-femto}
TEACHER=${TEACHER:-docs/results/fmnist-transfer/encoders/mae_ep100.safetensors}
STUDENT_MODEL=${STUDENT_MODEL:-mim_vit_femto}
EPOCHS=${EPOCHS:-10}
MAE_LONG_EPOCHS=${MAE_LONG_EPOCHS:-50}
TEACHER_LAYER=${TEACHER_LAYER:-4}
FT_EPOCHS=${FT_EPOCHS:-15}
SEEDS=${SEEDS:-3}
KEEP=${KEEP:-docs/results/fmnist-distill-femto}
REPLICA=${REPLICA:-0}
REPLICAS=${REPLICAS:-}
REPLICATED=${REPLICATED:-qkvv cls feature}
REPLICA_SEEDS=${REPLICA_SEEDS:-1}
[[ $REPLICA =~ ^(0|[1-9][0-9]*)$ ]] || { echo "REPLICA=$REPLICA: a replica number (0 is the first run, 1, 2, ...)" >&2; exit 2; }
ROOT=$OUT  # where this replica's runs go
[ "$REPLICA" = 0 ] || ROOT=$OUT/replica-$REPLICA
source "$(dirname "$0")/lib/mimkit.sh"
source "$(dirname "$0")/lib/compare_keep.sh"
warmup() { python3 -c "print(round($1 * $2, 3))"; }  # warmup EPOCHS SHARE: warm-up epochs
read -r -a extra <<<"${EXTRA:-}"
quiet=(--set train.tensorboard=false --set train.log_every=50 "${extra[@]}")
# student name -> target (the name is also the compare row); the settings beyond the target are in settings()
declare -A TARGETS=([cls]=cls [feature]=feature [qk]=qk [vv]=vv [qkvv]=qk+vv [qkvv_masked]=qk+vv
  [qkvv_layer$TEACHER_LAYER]=qk+vv [seq]=qk+vv)
STUDENTS="qkvv qk vv cls feature qkvv_masked qkvv_layer$TEACHER_LAYER seq"
settings() {  # settings STUDENT: --teacher, --student and the options beyond the target
  case $1 in
  qkvv_masked) echo "--teacher $TEACHER --student $STUDENT_MODEL --set distill.mask_ratio=0.5" ;;
  qkvv_layer*) echo "--teacher $TEACHER --student $STUDENT_MODEL --set distill.teacher_layer=$TEACHER_LAYER" ;;
  seq_mid) echo "--teacher $TEACHER --student mim_vit_pico --set model.embed_dim=72 --set model.depth=4" ;;
  seq) echo "--teacher $ROOT/students/seq_mid --student $STUDENT_MODEL" ;;
  *) echo "--teacher $TEACHER --student $STUDENT_MODEL" ;;
  esac
}
finished() { [ -f "$1/results.json" ]; }
encoder_of() {  # encoder_of NAME RUN: the finished run's final encoder, exported once into KEEP/encoders (about 0.4 MB,
  # committed): the comparison names its models by these files, which it keys by content, so its kept cells and the
  # fine-tuning still to run need no run directory on a new machine. FILE.from records which run it came from (the
  # digest of its results.json): a kept file from another run (a retrained one, or another OUT with the same KEEP)
  # is refused while that run is here, never compared in its place.
  local file=$KEEP/encoders/$1.safetensors digest
  if finished "$2"; then
    digest=$(sha256sum "$2/results.json" | cut -c1-16)
    if [ -f "$file" ] && [ -f "$file.json" ] && [ -f "$file.from" ]; then
      [ "$(cut -d' ' -f1 "$file.from")" = "$digest" ] || {
        echo "$1: $file was exported from another run ($(cut -d' ' -f2- "$file.from")) than $2: delete it to" \
          "compare this run (its cells run again), or give this study its own KEEP folder" >&2
        exit 2
      }
    else  # not exported yet, or cut short between the weights and their sidecars
      { mkdir -p "$KEEP/encoders" && $M export "$2" --out "$file" >&2; } || { echo "$1: export of $2 failed" >&2; exit 2; }
      echo "$digest $2" >"$file.from"
    fi
  elif [ ! -f "$file" ] || [ ! -f "$file.json" ]; then
    echo "$1: $2 has not finished (the pretrain stage trains it) and $file is not kept" >&2
    exit 2
  fi
  echo "$file"
}
# the tables' contrasts (compare --contrast): T1 relation targets vs the others, T2 teacher layer, T3 raw vs masked
# input, T4 sequential vs direct; the students against the MAE femtos and scratch
PAIRS=(qkvv:cls qkvv:feature qkvv:qk qkvv:vv "qkvv_layer$TEACHER_LAYER:qkvv" qkvv:qkvv_masked seq:qkvv qkvv:mae
  qkvv:mae_long mae_long:mae qkvv:scratch)
label_of() { [ "$2" = 0 ] && echo "$1" || echo "${1}_r$2"; }  # label_of NAME REPLICA: the name compared
keep_words() {  # what keep_compare gets: a pool per femto with replicas exported into KEEP/encoders (its first run
  # and every replica kept, whatever REPLICAS or REPLICATED say now), PAIRS, and T1-T4's contrasts between pools
  local m f members pools=" " pair
  for m in $STUDENTS mae mae_long; do
    members=$m
    for f in "$KEEP/encoders/${m}"_r*.safetensors; do
      f=$(basename "$f" .safetensors)
      if [[ $f =~ ^${m}_r[1-9][0-9]*$ ]]; then members+=",$f"; fi
    done
    if [ "$members" != "$m" ]; then echo "${m}_runs=$members" && pools+="${m}_runs "; fi
  done
  echo "${PAIRS[@]}"
  for pair in qkvv_runs:cls_runs qkvv_runs:feature_runs qkvv_runs:qk_runs qkvv_runs:vv_runs \
    "qkvv_layer${TEACHER_LAYER}_runs:qkvv_runs" qkvv_runs:qkvv_masked_runs seq_runs:qkvv_runs; do
    if [[ $pools == *" ${pair%%:*} "* && $pools == *" ${pair#*:} "* ]]; then echo "$pair"; fi
  done
}
case "$STAGE" in
pretrain)
  [ -e "$TEACHER" ] || { echo "no teacher at $TEACHER: run scripts/fmnist_mae_long.sh (pretrain, then compare, which" \
    "exports it) or set TEACHER" >&2; exit 2; }
  # TinyMIM's warm-up share (distill_fmnist_tiny: 50 of 800 steps) for the students; MAE's 5% (40 of 800 epochs)
  seeded=()
  if [ "$REPLICA" != 0 ]; then  # a replica: REPLICATED (seq after its own seq_mid) unless MODELS says otherwise
    seeded=(--set seed="$REPLICA")
    [[ " $REPLICATED " != *" seq "* ]] || REPLICATED="seq_mid $REPLICATED"
    MODELS=${MODELS:-$REPLICATED}
  fi
  for m in ${MODELS:-}; do  # a subset to train (e.g. one lane again after a stop); unknown names stop here
    [[ -n "${TARGETS[$m]:-}" || " seq_mid mae mae_long " == *" $m "* ]] ||
      { echo "unknown model '$m' in MODELS: seq_mid $STUDENTS mae mae_long" >&2; exit 2; }
  done
  wanted() { [[ -z "${MODELS:-}" || " $MODELS " == *" $1 "* ]]; }
  students() {  # students NAME...: distil each unfinished one that MODELS names, in order
    local s how
    for s in "$@"; do
      { wanted "$s" && ! finished "$ROOT/students/$s"; } || continue
      [[ $s != seq ]] || finished "$ROOT/students/seq_mid" ||
        { echo "seq is taught by seq_mid, which has not finished: train seq_mid first (MODELS=\"seq_mid seq\")" >&2; return 2; }
      read -r -a how <<<"$(settings "$s")"
      $M distill "${how[@]}" --out "$ROOT/students/$s" --epochs "$EPOCHS" "${seeded[@]}" \
        --set train.warmup_epochs="$(warmup "$EPOCHS" 1/15)" --set distill.targets="${TARGETS[$s]:-qk+vv}" \
        "${quiet[@]}"
    done
  }
  maes() {  # the MAE femtos with the students' image budget and the longer one
    local spec name dir epochs
    for spec in mae:mae-student:$EPOCHS mae_long:mae-student-long:$MAE_LONG_EPOCHS; do
      IFS=: read -r name dir epochs <<<"$spec"
      { wanted "$name" && ! finished "$ROOT/$dir"; } || continue
      $M pretrain --config mae_fmnist_tiny --out "$ROOT/$dir" --epochs "$epochs" "${seeded[@]}" \
        --set train.warmup_epochs="$(warmup "$epochs" 0.05)" --set model.name="$STUDENT_MODEL" "${quiet[@]}"
    done
  }
  case "${LANES:-1}" in
  1)  # seq_mid first: it teaches seq (no `&&` between these: it would switch off set -e inside the functions)
    students seq_mid $STUDENTS
    maes
    ;;
  2)
    mkdir -p "$ROOT"
    first="seq_mid seq qkvv qk vv"  # seq_mid before seq, in the same lane
    second=$(for s in $STUDENTS; do [[ " $first " == *" $s "* ]] || echo "$s"; done | paste -sd' ')
    echo "two lanes of one thread: $first | $second mae mae_long (output in $ROOT/lane1.log, $ROOT/lane2.log)"
    (export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; students $first) >"$ROOT/lane1.log" 2>&1 &
    lane1=$!
    (export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; students $second; maes) >"$ROOT/lane2.log" 2>&1 &
    lane2=$!
    failed=0
    wait "$lane1" || { echo "lane 1 failed: see $ROOT/lane1.log" >&2; failed=1; }
    wait "$lane2" || { echo "lane 2 failed: see $ROOT/lane2.log" >&2; failed=1; }
    exit "$failed"
    ;;
  *) echo "LANES=${LANES}: 1 or 2" >&2; exit 2 ;;
  esac
  ;;
compare)
  run_of() {  # run_of NAME ROOT: the run directory of a compared femto
    case $1 in
    mae) echo "$2/mae-student" ;;
    mae_long) echo "$2/mae-student-long" ;;
    *) [ -n "${TARGETS[$1]:-}" ] || { echo "unknown model '$1' in MODELS: $STUDENTS mae mae_long" >&2; return 2; }
      echo "$2/students/$1" ;;
    esac
  }
  models=()
  for m in ${MODELS:-$STUDENTS mae mae_long}; do
    run=$(run_of "$m" "$OUT") || exit 2
    file=$(encoder_of "$m" "$run") || exit 2
    models+=(--init "$m=$file")
  done
  replicas=()  # REPLICAS: each replica's runs of REPLICATED (those MODELS names, when set), named NAME_rN
  for r in $(tr ' ' '\n' <<<"$REPLICAS" | awk 'NF && !seen[$0]++'); do  # each number once
    [[ $r =~ ^[1-9][0-9]*$ ]] || { echo "REPLICAS='$REPLICAS': replica numbers 1, 2, ... (0 is the first run)" >&2; exit 2; }
    for m in $REPLICATED; do
      [[ -z "${MODELS:-}" || " $MODELS " == *" $m "* ]] || continue
      run=$(run_of "$m" "$OUT/replica-$r") || exit 2
      file=$(encoder_of "$(label_of "$m" "$r")" "$run") || exit 2
      replicas+=(--init "$(label_of "$m" "$r")=$file")
    done
  done
  file=$(encoder_of mae "$OUT/mae-student") || exit 2
  models+=(--init scratch=scratch:"$file")  # a random femto: the students' architecture
  every=(--set model.name="$STUDENT_MODEL" --set model.init_scheme=mae --finetune-config finetune_fmnist_pico
    --set-finetune train.epochs="$FT_EPOCHS" --set-finetune train.tensorboard=false "${extra[@]}")
  cmp=$OUT/compare-classification-60k
  restore_compare "$KEEP" "$cmp"
  protocols=${PROTOCOLS:-knn,linprobe,finetune}
  frozen=$(echo "$protocols" | tr , '\n' | grep -v '^finetune$' | paste -sd, || true)
  if [ -n "$frozen" ]; then  # the teacher too: what the students are distilled from, frozen
    $M compare "${LANES_ARG[@]}" "${models[@]}" --init teacher="$TEACHER" --out "$cmp" --protocols "$frozen" --tasks classification \
      --seeds "$SEEDS" "${every[@]}"
  fi
  if [[ ,$protocols, == *,finetune,* ]]; then
    $M compare "${LANES_ARG[@]}" "${models[@]}" --out "$cmp" --protocols finetune --tasks classification --seeds "$SEEDS" "${every[@]}"
  fi
  read -r -a words <<<"$(keep_words | paste -sd' ')"  # the replicas' encoders are exported by now
  if [ ${#replicas[@]} -gt 0 ]; then  # the baselines are the first runs' comparison's
    keep_compare "$KEEP" "$cmp" "${words[@]}"  # the first runs' cells kept before the replicas' can fail
    $M compare "${LANES_ARG[@]}" "${replicas[@]}" --out "$cmp" --protocols "$protocols" --tasks classification \
      --seeds "$REPLICA_SEEDS" --no-baselines "${every[@]}"
  fi
  keep_compare "$KEEP" "$cmp" "${words[@]}"
  ;;
keep | restore)
  read -r -a words <<<"$(keep_words | paste -sd' ')"
  keep_or_restore_all "$STAGE" "$OUT" "$KEEP" "${words[@]}"
  ;;
*) echo "unknown stage '$STAGE': pretrain, compare, keep or restore" >&2; exit 2 ;;
esac
