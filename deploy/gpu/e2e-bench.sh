#!/usr/bin/env bash
# On the GPU machine: end-to-end decode speed and time to first token, GSA against dense attention
# on the same gsa-1.7b checkpoint (random bf16 weights) in one gsa-server run (issue 6).
#
#   deploy/gpu/e2e-bench.sh STAGE_DIR OUT_DIR            measure; writes OUT_DIR/e2e-bench.json
#   deploy/gpu/e2e-bench.sh --make-model STAGE_DIR       only make the checkpoint (MODEL_DIR)
#
# STAGE_DIR is deploy/gpu/stage.sh's folder (bin/ with gsa-server, gsa-bench, gsa-make-model,
# libgsa_spm.so; lib/; optional tokenizer.model and COMMIT). For each context C (default 128K then
# 32K) and each attention mode (the model's GSA default, then dense, chosen per request), with
# prompts of P = C - OUT tokens (so decode runs from position C - OUT to C), gsa-bench runs:
#   b1    1 request, OUT tokens: TTFT of a P-token prompt, and the batch-1 decode step
#         (TPOT = (e2e - TTFT) / (OUT - 1): decode only)
#   fill  B distinct prompts (seeded; prompt 0 is b1's), 1 token each: puts them in the prefix cache
#   warm  the same B prompts again, OUT tokens each, all at once: every prompt is served from the
#         prefix cache (only its last block is recomputed), so the B sequences decode together and
#         TPOT is the batch-B decode step, free of other requests' prefills. The server log's
#         cached_tokens and the warm TTFTs show that the cache was hit.
# Each run's gsa-bench JSON, output and server-log lines are kept under OUT_DIR/runs;
# deploy/gpu/e2e_collect.py turns them into OUT_DIR/e2e-bench.json after every run.
#
# Environment (defaults for an H200):
#   MODEL_DIR=/tmp/gsa-1.7b  MODEL_SHAPE=gsa-1.7b  MODEL_DTYPE=bf16   checkpoint (made if missing)
#   E2E_BACKEND=cuda  E2E_CONTEXTS="131072 32768"  E2E_OUTPUT=128  E2E_BATCH=4
#   E2E_MODES="default dense"   GPU_MEM_FRACTION=0.9   SERVER_FLAGS=   (extra gsa-server flags)
#   E2E_DEADLINE=<epoch s>      skip runs that would not finish before it (default: none)
#   E2E_TTFT_GUESS_S=40         assumed TTFT of the longest prompt before one was measured
#   COMMIT=<str>                default: STAGE_DIR/COMMIT
# A CPU dry run: E2E_BACKEND=cpu MODEL_SHAPE=gsa-small MODEL_DTYPE=f32 E2E_CONTEXTS="2048 1024"
#   E2E_OUTPUT=16 MODEL_DIR=/tmp/gsa-small deploy/gpu/e2e-bench.sh STAGE OUT
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
make_only=0
if [ "${1:-}" = "--make-model" ]; then make_only=1; shift; fi
usage="usage: e2e-bench.sh STAGE_DIR OUT_DIR | e2e-bench.sh --make-model STAGE_DIR"
stage=$(cd "${1:?$usage}" && pwd) || exit 2
export LD_LIBRARY_PATH="$stage/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export GSA_SPM_MODULE="$stage/bin/libgsa_spm.so"
model=${MODEL_DIR:-/tmp/gsa-1.7b}
shape=${MODEL_SHAPE:-gsa-1.7b}
dtype=${MODEL_DTYPE:-bf16}
backend=${E2E_BACKEND:-cuda}
read -r -a contexts <<<"${E2E_CONTEXTS:-131072 32768}"
out_len=${E2E_OUTPUT:-128}
batch=${E2E_BATCH:-4}
read -r -a modes <<<"${E2E_MODES:-default dense}"
deadline=${E2E_DEADLINE:-0}
ttft_guess=${E2E_TTFT_GUESS_S:-40}
commit=${COMMIT:-$(cat "$stage/COMMIT" 2>/dev/null || echo unknown)}

make_model() {
  local start stamp tok_arg=()
  # The staged tokenizer (the default model's, 8000 pieces) sets the vocabulary; every attention
  # shape stays the named shape's.
  [ -f "$stage/tokenizer.model" ] && tok_arg=(--tokenizer "$stage/tokenizer.model" --vocab-size 8000)
  stamp="$shape $dtype ${tok_arg[*]}"
  # .complete is written last, naming what was made: a partial or different checkpoint is remade.
  if [ -f "$model/config.json" ] && [ "$(cat "$model/.complete" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  start=$(date +%s)
  rm -rf "$model"
  "$stage/bin/gsa-make-model" --shape "$shape" --dtype "$dtype" --out "$model" "${tok_arg[@]}" || return 1
  echo "$stamp" >"$model/.complete"
  echo "e2e-bench: made $model ($shape, $dtype) in $(( $(date +%s) - start )) s"
}

if [ $make_only = 1 ]; then make_model; exit $?; fi
out=${2:?$usage}
mkdir -p "$out/runs" || exit 2
out=$(cd "$out" && pwd)
make_model || { echo "e2e-bench: gsa-make-model failed" >&2; exit 1; }

max_ctx=0
for c in "${contexts[@]}"; do
  if [ "$c" -le "$out_len" ]; then echo "e2e-bench: context $c <= output $out_len" >&2; exit 2; fi
  [ "$c" -gt "$max_ctx" ] && max_ctx=$c
done

card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$card" ] || card="no GPU ($(uname -m), $(nproc) cores)"
server_flags=(--model "$model" --backend "$backend" --port 0 --max-model-len "$max_ctx" --drain-timeout 5
              --metrics-port 0)
[ "$backend" = cuda ] && server_flags+=(--gpu-memory-fraction "${GPU_MEM_FRACTION:-0.9}")
read -r -a extra_flags <<<"${SERVER_FLAGS:-}"
server_flags+=("${extra_flags[@]}")
bench_cmd_line="${E2E_COMMAND:-deploy/gpu/e2e-bench.sh $*}"
printf '%s\n' "$stage/bin/gsa-server ${server_flags[*]}" >"$out/server-command.txt"
: >"$out/runs/index.tsv"

server=""
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$server" 2>/dev/null && kill -KILL "$server" 2>/dev/null
    wait "$server" 2>/dev/null
  fi
  server=""
}
trap cleanup EXIT
trap 'echo "e2e-bench: interrupted" >&2; exit 130' INT TERM

collect() {
  python3 "$here/e2e_collect.py" "$out" --card "$card" --commit "$commit" --command "$bench_cmd_line" \
    --model-dir "$model" --shape "$shape" --dtype "$dtype" --output-len "$out_len" --batch "$batch" \
    --contexts "${contexts[*]}" --modes "${modes[*]}" >"$out/collect.log" 2>&1 ||
    { echo "e2e-bench: e2e_collect.py failed:" >&2; tail -5 "$out/collect.log" >&2; }
}

start=$(date +%s)
"$stage/bin/gsa-server" "${server_flags[@]}" >"$out/server.out" 2>"$out/server.log" &
server=$!
target=""
for _ in $(seq 1 900); do
  target=$(sed -n 's/^gsa-server: listening on //p' "$out/server.out" 2>/dev/null | head -1)
  [ -n "$target" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server"; rc=$?
    echo "e2e-bench: gsa-server exited with status $rc before listening; the end of its log:" >&2
    tail -30 "$out/server.log" >&2
    server=""
    exit 1
  fi
  sleep 0.2
done
if [ -z "$target" ]; then
  echo "e2e-bench: gsa-server did not listen within 180 s; the end of its log:" >&2
  tail -30 "$out/server.log" >&2
  exit 1
fi
echo "e2e-bench: gsa-server up at $target after $(( $(date +%s) - start )) s: $(grep -m1 '"serving"' "$out/server.log")"
cache_tokens=$(grep -m1 '"serving"' "$out/server.log" | grep -o '"cache_tokens":[0-9]*' | grep -o '[0-9]*$')
metrics_port=$(grep -m1 '"serving"' "$out/server.log" | grep -o '"metrics_port":[0-9]*' | grep -o '[0-9]*$')

# scrape FILE -- the server's engine-step counters (steps, host and backend seconds) as JSON, so that
# e2e_collect.py can split each run's decode step into what the backend and the host took.
scrape() {
  [ -n "$metrics_port" ] || return 0
  python3 - "$metrics_port" "$1" <<'PY' 2>/dev/null || true
import json, sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
want = {"gsa_engine_steps_total": "steps", 'gsa_engine_step_seconds_total{part="backend"}': "backend_s",
        'gsa_engine_step_seconds_total{part="engine"}': "engine_s",
        'gsa_engine_step_seconds_total{part="overlapped"}': "overlapped_s"}
got = {}
for line in urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=5).read().decode().splitlines():
    parts = line.rsplit(" ", 1)
    if len(parts) == 2 and parts[0] in want:
        got[want[parts[0]]] = float(parts[1])
json.dump(got, open(path, "w"))
PY
}
if [ -n "$cache_tokens" ] && [ "$cache_tokens" -lt $(( batch * max_ctx )) ]; then
  echo "e2e-bench: the server's cache holds $cache_tokens tokens, fewer than $batch x $max_ctx;" \
       "raise GPU_MEM_FRACTION or lower E2E_BATCH / E2E_CONTEXTS" >&2
  exit 1
fi

# run NAME MODE CONTEXT KIND REQUESTS OUTPUT_LEN GUESS_S -- one gsa-bench call, recorded.
fails=0
skipped=0
run() {
  local name=$1 mode=$2 ctx=$3 kind=$4 n=$5 olen=$6 guess=$7
  local prompt=$(( ctx - out_len )) now left rc t0 before lim
  now=$(date +%s)
  if [ "$deadline" -gt 0 ]; then
    left=$(( deadline - now ))
    if [ "$left" -lt $(( guess + 15 )) ]; then
      echo "e2e-bench: skipping $name: ${left}s left, needs about ${guess}s"
      skipped=$(( skipped + 1 ))
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$mode" "$ctx" "$prompt" "$kind" "$n" "$olen" \
        skipped 0 "-" >>"$out/runs/index.tsv"
      return 1
    fi
    lim=$(( left - 10 ))
  else
    lim=1800
  fi
  local cmd=("$stage/bin/gsa-bench" --target "$target" --num-requests "$n" --concurrency "$n"
             --input-len "$prompt" --output-len "$olen" --attention "$mode" --seed "$ctx"
             --timeout-s "$lim" --progress off --json "$out/runs/$name.json")
  before=$(wc -l <"$out/server.log")
  scrape "$out/runs/$name.metrics-before.json"
  t0=$(date +%s%N)
  timeout "$lim" "${cmd[@]}" >"$out/runs/$name.txt" 2>&1
  rc=$?
  scrape "$out/runs/$name.metrics-after.json"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  tail -n +"$(( before + 1 ))" "$out/server.log" | grep '"request_' >"$out/runs/$name.server.jsonl"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$mode" "$ctx" "$prompt" "$kind" "$n" "$olen" "$rc" \
    "$ms" "${cmd[*]}" >>"$out/runs/index.tsv"
  local summary
  summary=$(grep -E '^(TTFT|TPOT|ITL) ' "$out/runs/$name.txt" | awk '{printf "%s mean %s p50 %s; ", $1, $2, $3}')
  echo "e2e-bench: $name rc=$rc ${ms} ms: $summary"
  if [ $rc -ne 0 ]; then
    fails=$(( fails + 1 ))
    tail -5 "$out/runs/$name.txt"
    if ! kill -0 "$server" 2>/dev/null; then
      echo "e2e-bench: gsa-server died; the end of its log:" >&2
      tail -30 "$out/server.log" >&2
      collect
      exit 1
    fi
  fi
  collect
  return $rc
}

# Short warm-up per mode (first-call allocations, cuBLASLt heuristics): recorded, not reported.
for mode in "${modes[@]}"; do
  run "warmup-$mode" "$mode" 640 warmup 2 16 30
done
for ctx in "${contexts[@]}"; do
  for mode in "${modes[@]}"; do
    guess=$(( ttft_guess * ctx / max_ctx + 10 ))
    run "b1-$mode-$ctx" "$mode" "$ctx" b1 1 "$out_len" "$guess" || continue
    # fill: batch-1 more prompts prefilled, one after another; estimate from the b1 TTFT.
    ttft_s=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(d["results"]["ttft_ms"]["mean"]/1000)+1)' \
      "$out/runs/b1-$mode-$ctx.json" 2>/dev/null || echo "$guess")
    run "fill-$mode-$ctx" "$mode" "$ctx" fill "$batch" 1 $(( (batch - 1) * ttft_s * 12 / 10 + 10 )) || continue
    run "warm-$mode-$ctx" "$mode" "$ctx" warm "$batch" "$out_len" 20
  done
done

cleanup
tail -3 "$out/server.log" >"$out/server-tail.txt"
collect
cat "$out/collect.log"
echo "e2e-bench: done in $(( $(date +%s) - start )) s, $fails failed and $skipped skipped runs; $out/e2e-bench.json"
[ $fails -eq 0 ]
