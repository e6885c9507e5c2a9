#!/usr/bin/env bash
# On the GPU machine: a long prompt served end to end on the gsa-1.7b shape (random weights)
# through gsa-server --backend cuda, gsa-cli and gsa-bench, tokens streaming back.
#
#   deploy/gpu/long-context-e2e.sh STAGE_DIR OUT_DIR [PROMPT_TOKENS]   (default 131000)
#
# Writes OUT_DIR/server.log, cli-*.txt and bench-*.json; prints a short summary.
set -uo pipefail
stage=$(cd "${1:?usage: long-context-e2e.sh STAGE_DIR OUT_DIR [PROMPT_TOKENS]}" && pwd)
out=${2:?usage: long-context-e2e.sh STAGE_DIR OUT_DIR [PROMPT_TOKENS]}
tokens=${3:-131000}
mkdir -p "$out"
export LD_LIBRARY_PATH="$stage/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export GSA_SPM_MODULE="$stage/bin/libgsa_spm.so"
model=${MODEL_DIR:-/tmp/gsa-1.7b}
if [ ! -f "$model/config.json" ]; then
  start=$(date +%s)
  tok_arg=()
  # The staged tokenizer (the default model's, 8000 pieces) sets the vocabulary; every attention
  # shape is gsa-1.7b's.
  [ -f "$stage/tokenizer.model" ] && tok_arg=(--tokenizer "$stage/tokenizer.model" --vocab-size 8000)
  "$stage/bin/gsa-make-model" --shape gsa-1.7b --dtype bf16 --out "$model" "${tok_arg[@]}" || exit 1
  echo "made $model in $(( $(date +%s) - start )) s"
fi
port=${PORT:-50061}
"$stage/bin/gsa-server" --model "$model" --backend cuda --port "$port" ${SERVER_FLAGS:-} >"$out/server.out" 2>"$out/server.log" &
server=$!
for _ in $(seq 1 600); do
  grep -q "listening on" "$out/server.out" 2>/dev/null && break
  if ! kill -0 $server 2>/dev/null; then echo "gsa-server exited:"; tail -20 "$out/server.log"; exit 1; fi
  sleep 1
done
grep '"serving"' "$out/server.log" | head -1
target=127.0.0.1:$port
rc=0
# A short prompt, streamed, sparse and dense.
for mode in default dense; do
  "$stage/bin/gsa-cli" --target $target --max-tokens 32 --attention $mode "In the beginning" >"$out/cli-short-$mode.txt" 2>&1 || rc=1
  echo "gsa-cli ($mode): $(head -c 300 "$out/cli-short-$mode.txt" | tr '\n' ' ')"
done
# The long prompt through gsa-cli (prompt ids from a file), then gsa-bench for the timings.
if [ -f "$stage/long-prompt.txt" ]; then
  start=$(date +%s%N)
  "$stage/bin/gsa-cli" --target $target --max-tokens 32 --json --prompt-file "$stage/long-prompt.txt" >"$out/cli-long.jsonl" 2>&1 || rc=1
  echo "gsa-cli long prompt: $(wc -l <"$out/cli-long.jsonl") messages in $(( ($(date +%s%N) - start) / 1000000 )) ms; last: $(tail -c 400 "$out/cli-long.jsonl")"
fi
for mode in default dense; do
  "$stage/bin/gsa-bench" --target $target --num-requests 1 --input-len "$tokens" --output-len 64 \
    --attention $mode --progress off --json "$out/bench-$tokens-$mode.json" >"$out/bench-$tokens-$mode.txt" 2>&1 || rc=1
  echo "gsa-bench $tokens tokens ($mode):"; tail -15 "$out/bench-$tokens-$mode.txt"
done
kill -TERM $server; wait $server
echo "server exit: $?"
tail -3 "$out/server.log"
exit $rc
