#!/usr/bin/env bash
# Trains the default model and the paper's three comparison rows on one GPU, side by side, with
# one recipe (train_gsa.py's defaults: same data, steps, seed). Checks the forward pass against the
# golden cases first. Made for the GPU machine (python3 with PyTorch and numpy).
#   usage: train_rows.sh DATA_DIR OUT_DIR [train_gsa.py flags...]
#   DATA_DIR: prepare_kjv.py's output. OUT_DIR/<row>/ gets each checkpoint, train.json, train.log.
set -euo pipefail
data=$1
out=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 "$here/train_gsa.py" --device cpu --check-golden "$repo/tests/data/golden/gsa-tiny" \
  "$repo/tests/data/golden/sparse-relu-tiny" | tee "$out/golden.log"
pids=()
for row in gsa sparse gated baseline; do
  python3 "$here/train_gsa.py" --data "$data" --row "$row" --out "$out/$row" "$@" \
    > "$out/$row.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "train_rows: row $i failed" >&2; status=1; }
done
for row in gsa sparse gated baseline; do
  tail -2 "$out/$row.log"
done
exit $status
