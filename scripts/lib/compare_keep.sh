# Sourced by the study scripts: a `mimkit compare` run in pieces keeps its small results in the repository.
# keep_compare copies each finished cell's marker (cell.json: its config hash and row) into KEEP_DIR, with the tables
# and figure rebuilt from every finished cell (compare --tables-only: each invocation's own tables show only its cells);
# restore_compare puts the markers back into a fresh run directory, so a new machine skips the cells already measured
# (compare accepts a marker whose hash matches the cell's config) and the study goes on where it stopped. A compare
# killed mid-way keeps its finished cells: each marker is written when its cell ends. Both need M (the mimkit command).

keep_compare() {  # keep_compare KEEP_DIR COMPARE_DIR [A:B | NAME=A,B,C ...]: the pools whose every replica has cells
  # are pooled (compare --pool), then the pairs whose two models (or pools) have cells are contrasted
  local dest=$1/$(basename "$2") marker table pair member members complete contrasts=() pools=() pooled=" "
  mkdir -p "$dest/cells"
  for marker in "$2"/cells/*/cell.json; do
    if [ -f "$marker" ]; then cp "$marker" "$dest/cells/$(basename "$(dirname "$marker")").json"; fi
  done
  for pair in "${@:3}"; do
    [[ $pair == *=* ]] || continue
    members=${pair#*=}
    # what compare would refuse, stopping the keep: a malformed word, a repeated model, a name already taken (by
    # a model, or by a pool passed on)
    if ! [[ $pair =~ ^[^=,+]+=[^=,+]+(,[^=,+]+)+$ ]] || [[ ,$members, == *,"${pair%%=*}",* ]] ||
      [ "$(tr , '\n' <<<"$members" | sort -u | wc -l)" != "$(tr , '\n' <<<"$members" | wc -l)" ] ||
      compgen -G "$2/cells/${pair%%=*}__*" >/dev/null || [[ $pooled == *" ${pair%%=*} "* ]]; then
      echo "pool word '$pair' left out of $2: give NAME=A,B[,C...], two or more different models, a new name" >&2
      continue
    fi
    complete=1
    for member in ${members//,/ }; do compgen -G "$2/cells/${member}__*/cell.json" >/dev/null || complete=0; done
    if [ $complete = 1 ]; then pools+=(--pool "$pair") && pooled+="${pair%%=*} "
    else echo "pool ${pair%%=*} left out of $2: a replica without finished cells" >&2; fi
  done
  for pair in "${@:3}"; do
    [[ $pair != *=* ]] || continue
    if _kept_measured "$2" "$pooled" "${pair%%:*}" && _kept_measured "$2" "$pooled" "${pair#*:}"
    then contrasts+=(--contrast "$pair"); else echo "contrast $pair left out of $2: a model without finished cells" >&2; fi
  done
  compgen -G "$2/cells/*/cell.json" >/dev/null || return 0  # no finished cell here: the kept tables stay as they are
  $M compare --out "$2" --tables-only "${pools[@]}" "${contrasts[@]}" >/dev/null
  for table in results.csv summary.csv results.md compare.png contrasts.csv contrasts.png; do
    if [ -f "$2/$table" ]; then cp "$2/$table" "$dest/"; else rm -f "$dest/$table"; fi  # none kept that the tables lost
  done
  return 0
}

restore_compare() {  # restore_compare KEEP_DIR COMPARE_DIR: never replaces a marker already there
  local src=$1/$(basename "$2") marker name
  for marker in "$src"/cells/*.json; do
    [ -f "$marker" ] || continue
    name=$(basename "$marker" .json)
    [ -f "$2/cells/$name/cell.json" ] || { mkdir -p "$2/cells/$name" && cp "$marker" "$2/cells/$name/cell.json"; }
  done
  return 0
}

_kept_measured() {  # _kept_measured COMPARE_DIR " POOL ... " NAME: a pool passed on, or a model with finished cells
  [[ $2 == *" $3 "* ]] || compgen -G "$1/cells/${3}__*/cell.json" >/dev/null
}

keep_or_restore_all() {  # keep_or_restore_all keep|restore OUT KEEP_DIR [A:B | NAME=A,B ...]: every compare-* of
  local from=$2 dir           # OUT, or of KEEP_DIR; keep pools and contrasts them (keep_compare)
  [ "$1" = keep ] || from=$3
  for dir in "$from"/compare-*; do
    if [ -d "$dir" ]; then "$1_compare" "$3" "$2/$(basename "$dir")" "${@:4}"; fi
  done
}
