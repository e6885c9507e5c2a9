#!/usr/bin/env bash
# Builds the bundled demo model that gsa-server serves when no --model is given: a sentencepiece
# tokenizer trained on the King James Bible (public domain, Debian's bible-kjv) and a small GSA
# model with random weights (gsa-make-model --shape gsa-small). Called by the build; idempotent.
#   usage: build-default-model.sh GSA_MAKE_MODEL OUT_DIR
set -euo pipefail
make_model=$1
out=$2
work="$out.work"
if ! command -v bible >/dev/null 2>&1 || ! command -v spm_train >/dev/null 2>&1; then
  echo "build-default-model: needs 'bible' (bible-kjv) and 'spm_train' (sentencepiece); run deploy/install-deps.sh" >&2
  exit 1
fi
rm -rf "$work" && mkdir -p "$work"
# One verse a line, without the "Ge1:1 " reference.
bible -f Gen1:1-Rev22:21 | sed -e 's/^[^ ]* //' -e '/^$/d' > "$work/kjv.txt"
lines=$(wc -l < "$work/kjv.txt")
if [ "$lines" -lt 30000 ]; then
  echo "build-default-model: bible printed $lines verses, expected 31102" >&2
  exit 1
fi
spm_train --input="$work/kjv.txt" --model_prefix="$work/tokenizer" --vocab_size=8000 \
  --model_type=bpe --byte_fallback=true --character_coverage=1.0 --num_threads=2 \
  --bos_id=1 --eos_id=2 --unk_id=0 --pad_id=-1 > "$work/spm_train.log" 2>&1 \
  || { tail -20 "$work/spm_train.log" >&2; exit 1; }
"$make_model" --shape gsa-small --vocab-size 8000 --bos-token-id 1 --eos-token-id 2 \
  --tokenizer "$work/tokenizer.model" --seed 1 --out "$work/model" > "$work/make_model.log"
rm -rf "$out" && mv "$work/model" "$out" && rm -rf "$work"
echo "build-default-model: wrote $out"
