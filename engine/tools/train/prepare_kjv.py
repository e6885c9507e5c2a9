#!/usr/bin/env python3
"""Prepares the training data for train_gsa.py from the King James Bible (public domain).

Needs Debian's bible-kjv (`bible`) and sentencepiece (`spm_train`, `spm_encode`); both come with
deploy/install-deps.sh. Python's standard library only, so it runs where the server builds.

  engine/tools/train/prepare_kjv.py OUT_DIR

Writes into OUT_DIR:
  kjv.txt                 every verse, one a line, without its reference ("Ge1:1 ")
  train.txt, heldout.txt  the split: verses in blocks of 50 in Bible order; block b is held out
                          when b % 20 == 7 (5% of the text, spread over the whole book)
  tokenizer.model         sentencepiece BPE, 8000 pieces, byte fallback, trained on train.txt only
  train.ids, heldout.ids  token ids, little-endian uint16, the verses' encodings back to back
  train.starts, heldout.starts   little-endian uint32: where each verse starts in *.ids
  data.json               counts and the settings above
"""
import array
import json
import os
import subprocess
import sys

VOCAB = 8000
BLOCK = 50
HELD_OUT_EVERY = 20
HELD_OUT_PHASE = 7


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: prepare_kjv.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for tool in ("bible", "spm_train", "spm_encode"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"prepare_kjv: '{tool}' not found; run deploy/install-deps.sh "
                     "(Debian packages bible-kjv and sentencepiece)")
    text = run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True).stdout
    verses = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        ref, _, body = line.partition(" ")
        if body:
            verses.append(body)
    if len(verses) < 31000:
        sys.exit(f"prepare_kjv: bible printed {len(verses)} verses, expected 31102")
    train, held = [], []
    for i, v in enumerate(verses):
        (held if (i // BLOCK) % HELD_OUT_EVERY == HELD_OUT_PHASE else train).append(v)
    for name, vs in (("kjv.txt", verses), ("train.txt", train), ("heldout.txt", held)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("\n".join(vs) + "\n")
    run(["spm_train", f"--input={out}/train.txt", f"--model_prefix={out}/tokenizer",
         f"--vocab_size={VOCAB}", "--model_type=bpe", "--byte_fallback=true",
         "--character_coverage=1.0", "--num_threads=1", "--bos_id=1", "--eos_id=2",
         "--unk_id=0", "--pad_id=-1"], capture_output=True)
    counts = {}
    for split in ("train", "heldout"):
        enc = run(["spm_encode", f"--model={out}/tokenizer.model", "--output_format=id",
                   f"--input={out}/{split}.txt"], capture_output=True, text=True).stdout
        ids, starts = array.array("H"), array.array("I")
        for line in enc.splitlines():
            starts.append(len(ids))
            ids.extend(int(t) for t in line.split())
        if sys.byteorder != "little":
            ids.byteswap()
            starts.byteswap()
        with open(os.path.join(out, f"{split}.ids"), "wb") as f:
            ids.tofile(f)
        with open(os.path.join(out, f"{split}.starts"), "wb") as f:
            starts.tofile(f)
        counts[split] = {"verses": len(starts), "tokens": len(ids)}
    meta = {"source": "bible -f Gen1:1-Rev22:21 (Debian bible-kjv)", "verses": len(verses),
            "block": BLOCK, "held_out": f"block % {HELD_OUT_EVERY} == {HELD_OUT_PHASE}",
            "vocab_size": VOCAB, "bos_id": 1, "eos_id": 2, "splits": counts}
    with open(os.path.join(out, "data.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
