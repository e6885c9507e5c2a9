#!/usr/bin/env bash
# Where a decode step's time goes, without the server: gsa-step-bench's wall time per step
# (graphs, as the server runs) and, under Nsight Compute, every kernel of one profiled step summed
# by kind (deploy/gpu/step_profile.py). Issue 6: the end-to-end decode step.
#
#   deploy/gpu/step-profile.sh STAGE_DIR OUT_DIR
#
# STAGE_DIR: deploy/gpu/stage.sh's folder with gsa-step-bench and gsa-make-model in bin/ (and the
# default model's tokenizer.model, which sets the vocabulary to 8000 as in e2e-bench.sh).
# Environment: MODEL_DIR (default /tmp/gsa-1.7b, made if missing), STEP_CONTEXTS (default
# "4096,32768,131072"), STEP_BATCH ("1,4"), PROFILE_CASES ("4096:1:gsa 4096:4:gsa 131072:4:gsa";
# context:batch:attention, empty for none), AB_CONTEXTS ("4096,131072": the same steps with every
# product through cuBLASLt, gsa-step-bench --cublas-only; empty for none), COMMIT.
# OUT_DIR gets step-bench.json/.txt, step-bench-cublas.json/.txt, ncu-<case>.csv and
# step-profile.json/.txt.
set -euo pipefail
usage="usage: step-profile.sh STAGE_DIR OUT_DIR"
stage=$(cd "${1:?$usage}" && pwd)
out=${2:?$usage}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$stage/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export GSA_SPM_MODULE="$stage/bin/libgsa_spm.so"
model=${MODEL_DIR:-/tmp/gsa-1.7b}
commit=${COMMIT:-$(cat "$stage/COMMIT" 2>/dev/null || echo unknown)}
contexts=${STEP_CONTEXTS:-4096,32768,131072}
batch=${STEP_BATCH:-1,4}
read -r -a cases <<<"${PROFILE_CASES-4096:1:gsa 4096:4:gsa 131072:4:gsa}"

tok_arg=()
[ -f "$stage/tokenizer.model" ] && tok_arg=(--tokenizer "$stage/tokenizer.model" --vocab-size 8000)
stamp="gsa-1.7b bf16 ${tok_arg[*]}"
if [ ! -f "$model/config.json" ] || [ "$(cat "$model/.complete" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$model"
  "$stage/bin/gsa-make-model" --shape gsa-1.7b --dtype bf16 --out "$model" "${tok_arg[@]}"
  echo "$stamp" >"$model/.complete"
fi

"$stage/bin/gsa-step-bench" --model "$model" --contexts "$contexts" --batch "$batch" --commit "$commit" \
  --json "$out/step-bench.json" | tee "$out/step-bench.txt"
ab=${AB_CONTEXTS-4096,131072}
if [ -n "$ab" ]; then
  "$stage/bin/gsa-step-bench" --model "$model" --contexts "$ab" --batch "$batch" --commit "$commit" --cublas-only \
    --json "$out/step-bench-cublas.json" | tee "$out/step-bench-cublas.txt"
fi

if [ ${#cases[@]} -gt 0 ]; then
  if ! command -v ncu >/dev/null; then
    echo "step-profile: ncu is not on PATH; no per-kernel breakdown" | tee "$out/step-profile.txt"
    exit 0
  fi
  csvs=()
  for c in "${cases[@]}"; do
    IFS=: read -r ctx b attn <<<"$c"
    f="$out/ncu-$ctx-$b-$attn.csv"
    # Natural clocks and warm caches: the step as it runs, kernel by kernel (ncu still serializes
    # them, so the sum leaves out the gaps between launches that the wall time includes).
    ncu --profile-from-start off --cache-control none --clock-control none --csv --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \
      "$stage/bin/gsa-step-bench" --model "$model" --contexts "$ctx" --batch "$b" --attention "$attn" \
      --steps 4 --warmup 4 --profile >"$f"
    csvs+=("$f")
  done
  python3 "$here/step_profile.py" --step-bench "$out/step-bench.json" --json "$out/step-profile.json" \
    --commit "$commit" "${csvs[@]}" | tee "$out/step-profile.txt"
fi
