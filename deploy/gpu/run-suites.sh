#!/usr/bin/env bash
# On the GPU machine: runs the staged GPU suites (deploy/gpu/stage.sh) and writes, under OUT_DIR,
# each suite's gtest JSON and log plus record.json (card, driver, commit, date, per-suite counts).
#
#   deploy/gpu/run-suites.sh STAGE_DIR OUT_DIR [--sanitize] [gtest filter]
#
# --sanitize also runs the kernel suite under compute-sanitizer (memcheck, then racecheck).
set -uo pipefail
stage=$(cd "${1:?usage: run-suites.sh STAGE_DIR OUT_DIR [--sanitize] [filter]}" && pwd)
out=${2:?usage: run-suites.sh STAGE_DIR OUT_DIR [--sanitize] [filter]}
shift 2
sanitize=0
if [ "${1:-}" = "--sanitize" ]; then sanitize=1; shift; fi
filter=${1:-*}
mkdir -p "$out"
root=$(pwd)
export LD_LIBRARY_PATH="$stage/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export GSA_TEST_DATA_DIR="$root/tests/data"
export GSA_SPM_MODULE="$stage/bin/libgsa_spm.so"
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
echo "card: $card"
results=()
for suite in cuda_kernels_test cuda_backend_test; do
  start=$(date +%s)
  "$stage/bin/$suite" --gtest_filter="$filter" --gtest_output="json:$out/$suite.json" >"$out/$suite.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  summary=$(grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$out/$suite.log" | grep -v "\] [A-Za-z]" | tr '\n' ' ')
  echo "== $suite rc=$rc ${secs}s $summary"
  grep -E "^\[  FAILED  \] [A-Za-z]|Failure|error:" "$out/$suite.log" | head -30
  grep -E "^\[ .* \] max|selections agree" "$out/$suite.log" | head -40
  results+=("{\"suite\": \"$suite\", \"rc\": $rc, \"seconds\": $secs, \"filter\": \"$filter\", \"summary\": \"$summary\"}")
done
if [ $sanitize = 1 ]; then
  for tool in memcheck racecheck; do
    start=$(date +%s)
    compute-sanitizer --tool $tool --error-exitcode 99 "$stage/bin/cuda_kernels_test" \
      --gtest_filter="${SANITIZE_FILTER:-*}" >"$out/sanitize-$tool.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    echo "== compute-sanitizer $tool rc=$rc ${secs}s"
    tail -5 "$out/sanitize-$tool.log"
    results+=("{\"suite\": \"compute-sanitizer --tool $tool cuda_kernels_test\", \"rc\": $rc, \"seconds\": $secs, \"filter\": \"${SANITIZE_FILTER:-*}\"}")
  done
fi
commit=$(cat "$stage/COMMIT" 2>/dev/null || echo unknown)
{
  echo "{"
  echo "  \"card\": \"$card\","
  echo "  \"commit\": \"$commit\","
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"runs\": ["
  for i in "${!results[@]}"; do
    sep=","; [ "$i" -eq $(( ${#results[@]} - 1 )) ] && sep=""
    echo "    ${results[$i]}$sep"
  done
  echo "  ]"
  echo "}"
} >"$out/record.json"
