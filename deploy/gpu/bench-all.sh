#!/usr/bin/env bash
# On the GPU machine, in one call and a wall-time budget: gsa-kernel-bench, the PyTorch SDPA
# baseline at the same shapes and their comparison, then the end-to-end GSA-against-dense benchmark
# (issue 6). The gsa-1.7b checkpoint is made in the background while the GPU runs the first two.
#
#   deploy/gpu/bench-all.sh STAGE_DIR OUT_DIR [BUDGET_S]        (default 550 s)
#
# STAGE_DIR: `deploy/gpu/stage.sh build stage gsa-server gsa-cli gsa-bench gsa-make-model
# gsa-kernel-bench`, plus stage/tokenizer.model and stage/COMMIT. OUT_DIR gets six files:
#   kernel-bench.json   gsa-kernel-bench --prefill-max 131072
#   sdpa-baseline.json  deploy/gpu/sdpa_baseline.py --backends flash,cudnn
#   dense-vs-sdpa.json  deploy/gpu/compare_dense.py of the two
#   e2e-bench.json      deploy/gpu/e2e-bench.sh (128K and 32K, batch 1 and 4, GSA and dense)
#   summary.txt         everything printed here
#   logs.tar.gz         the tools' logs, the server log, every gsa-bench run
# Copy the four JSON files into tests/gpu-record/ and run tests/gpu-record/make_tables.py
# --write-readme README.md.
set -uo pipefail
usage="usage: bench-all.sh STAGE_DIR OUT_DIR [BUDGET_S]"
stage=$(cd "${1:?$usage}" && pwd) || exit 2
mkdir -p "${2:?$usage}" || exit 2
out=$(cd "$2" && pwd)
budget=${3:-550}
here=$(cd "$(dirname "$0")" && pwd)

main() {
  local t0 deadline commit work mpid rc
  t0=$(date +%s)
  deadline=$(( t0 + budget ))
  commit=$(cat "$stage/COMMIT" 2>/dev/null || echo unknown)
  work=$(mktemp -d /tmp/bench-all.XXXXXX)
  export LD_LIBRARY_PATH="$stage/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  echo "bench-all: commit $commit, budget ${budget}s, $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  for b in gsa-kernel-bench gsa-server gsa-bench gsa-make-model; do
    [ -x "$stage/bin/$b" ] || echo "bench-all: $stage/bin/$b is missing"
  done

  bash "$here/e2e-bench.sh" --make-model "$stage" >"$work/make-model.log" 2>&1 &
  mpid=$!

  echo "== gsa-kernel-bench ($(( $(date +%s) - t0 )) s)"
  timeout 200 "$stage/bin/gsa-kernel-bench" --prefill-max 131072 --json "$out/kernel-bench.json" \
    --commit "$commit" >"$work/kernel-bench.log" 2>&1
  rc=$?
  echo "gsa-kernel-bench rc=$rc"
  [ $rc -ne 0 ] && tail -5 "$work/kernel-bench.log"
  grep -E "^(case|decode_dense|gsa_decode|prefill_dense|prefill_gsa)|^card|CHECK FAILED|skipped" \
    "$work/kernel-bench.log" | head -60

  echo "== sdpa_baseline.py ($(( $(date +%s) - t0 )) s)"
  timeout 150 python3 "$here/sdpa_baseline.py" --backends flash,cudnn --json "$out/sdpa-baseline.json" \
    --commit "$commit" >"$work/sdpa-baseline.log" 2>&1
  rc=$?
  echo "sdpa_baseline.py rc=$rc"
  grep -E "check .*(FAILED|unsupported)|failed:|no checked figure|Error" "$work/sdpa-baseline.log" | head -20
  sed -n '/^case /,$p' "$work/sdpa-baseline.log" | head -70
  [ $rc -ne 0 ] && tail -5 "$work/sdpa-baseline.log"

  echo "== compare_dense.py ($(( $(date +%s) - t0 )) s)"
  if [ -f "$out/kernel-bench.json" ] && [ -f "$out/sdpa-baseline.json" ]; then
    python3 "$here/compare_dense.py" "$out/kernel-bench.json" "$out/sdpa-baseline.json" \
      --json "$out/dense-vs-sdpa.json" 2>&1 | tee "$work/compare.log"
  fi

  echo "== model ($(( $(date +%s) - t0 )) s)"
  wait "$mpid"
  rc=$?
  cat "$work/make-model.log"
  if [ $rc -ne 0 ]; then
    echo "bench-all: making the model failed (rc=$rc)"
  else
    echo "== e2e-bench.sh ($(( $(date +%s) - t0 )) s; deadline in $(( deadline - $(date +%s) )) s)"
    E2E_DEADLINE=$deadline COMMIT="$commit" \
      E2E_COMMAND="deploy/gpu/e2e-bench.sh STAGE OUT (run by deploy/gpu/bench-all.sh)" \
      bash "$here/e2e-bench.sh" "$stage" "$work/e2e" 2>&1 | tee "$work/e2e.log"
    echo "e2e-bench.sh rc=${PIPESTATUS[0]}"
    [ -f "$work/e2e/e2e-bench.json" ] && cp "$work/e2e/e2e-bench.json" "$out/"
  fi

  tar czf "$out/logs.tar.gz" -C "$work" . 2>/dev/null
  echo "bench-all: done in $(( $(date +%s) - t0 )) s; in $out: $(cd "$out" && echo *)"
}

main 2>&1 | tee "$out/summary.txt"
exit "${PIPESTATUS[0]}"
