#!/usr/bin/env python3
"""The paper's four rows at small scale, measured by gsa-server itself: for each trained row
(train_rows.sh's output), serve it (dense rows with --attention dense), send held-out windows
(BOS + whole verses, up to 2048 tokens, as train_gsa.py evaluates) with prompt logprobs and
attention statistics, and report held-out perplexity and the share of attention on the first
token, plus mean keys per query and gate means. Writes JSON and prints a Markdown table.

  compare_rows.py --bin build/bin --data DATA_DIR --rows ROWS_DIR --json OUT.json [--windows N] [--readme README.md]
  compare_rows.py --json OUT.json --table-only [--readme README.md]

Python's standard library only; gsa-server and gsa-cli do the work (--backend cpu by default,
the fp32 reference, so the figures do not depend on a GPU).
"""
import argparse
import array
import json
import math
import os
import re
import subprocess
import sys
import time

ROWS = [("baseline", "dense, no gates", True), ("sparse", "sparse only (relu indexer, no gates)", False),
        ("gated", "gated only (dense)", True), ("gsa", "GSA (sigmoid indexer, gates, top-k)", False)]


def read(path, code):
    a = array.array(code)
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def windows(data, T, bos):
    ids, starts = read(f"{data}/heldout.ids", "H"), read(f"{data}/heldout.starts", "I")
    bounds = list(starts) + [len(ids)]
    out, i = [], 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and bounds[j + 1] - bounds[i] <= T - 1:
            j += 1
        out.append([bos] + list(ids[bounds[i]:bounds[j]])[:T - 1])
        i = j
    return out


def serve(bin_dir, model, dense, backend):
    cmd = [f"{bin_dir}/gsa-server", "--model", model, "--port", "0", "--backend", backend,
           "--max-batched-tokens", "2048"]
    if dense:
        cmd += ["--attention", "dense"]
    log = open(f"/tmp/compare_rows_{os.path.basename(model)}.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    for line in proc.stdout:
        m = re.search(r"listening on (\S+)", line)
        if m:
            return proc, m.group(1), cmd
    raise SystemExit(f"compare_rows: {' '.join(cmd)} did not start; see {log.name}")


def table(rec):
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    lines = [f"Command: `{rec['command']}` (commit `{rec['commit']}`, backend {rec['backend']}, "
             f"{rec['windows_per_row']} held-out windows a row).", "",
             "| row | attention | held-out ppl (server) | held-out ppl (training script) | first-token share | "
             "mean keys per query | value gate mean | output gate mean | training steps (of 800) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        lines.append(f"| {r['what']} | {r['attention']} | {r['held_out_ppl_server']:.2f} | "
                     f"{r['held_out_ppl_training_script']:.2f} | {r['first_token_share']:.4f} | "
                     f"{r['mean_selected_k']:.1f} | {fmt(r['value_gate_mean'])} | {fmt(r['output_gate_mean'])} | "
                     f"{r['train']['steps_run']} |")
    return "\n".join(lines)


def write_readme(readme, text):
    s = open(readme).read()
    a, b = "<!-- rows:begin -->", "<!-- rows:end -->"
    if a not in s or b not in s:
        raise SystemExit(f"compare_rows: {readme} has no {a} ... {b} markers")
    s = s[:s.index(a) + len(a)] + "\n" + text + "\n" + s[s.index(b):]
    open(readme, "w").write(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--data")
    ap.add_argument("--rows")
    ap.add_argument("--json", required=True)
    ap.add_argument("--table-only", action="store_true", help="print the table of an existing --json")
    ap.add_argument("--readme", help="also write the table between README's rows markers")
    ap.add_argument("--windows", type=int, default=8, help="held-out windows per row (0 = all)")
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()
    if args.table_only:
        text = table(json.load(open(args.json)))
        print(text)
        if args.readme:
            write_readme(args.readme, text)
        return
    if not (args.data and args.rows):
        ap.error("--data and --rows are needed to measure")
    results = []
    for row, what, dense in ROWS:
        model = os.path.join(args.rows, row)
        cfg = json.load(open(f"{model}/config.json"))
        train = json.load(open(f"{model}/train.json"))
        ws = windows(args.data, cfg["max_position_embeddings"], cfg.get("bos_token_id", 1))
        if args.windows:
            ws = ws[:args.windows]
        proc, addr, server_cmd = serve(args.bin, model, dense, args.backend)
        nll, scored, positions = 0.0, 0, 0
        sums = {"mean_selected_k": 0.0, "first_token_share": 0.0, "value_gate_mean": 0.0, "output_gate_mean": 0.0}
        have = {k: True for k in sums}
        t0 = time.time()
        try:
            for w in ws:
                out = subprocess.run([f"{args.bin}/gsa-cli", "--target", addr, "--prompt-ids", ",".join(map(str, w)),
                                      "--max-tokens", "1", "--temperature", "0", "--prompt-logprobs", "0",
                                      "--attention-stats", "--json"], capture_output=True, text=True, check=True).stdout
                msgs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
                plp = next(m["prompt_logprobs"] for m in msgs if m.get("prompt_logprobs"))
                if len(plp) != len(w):
                    raise SystemExit(f"compare_rows: {len(plp)} prompt logprobs for {len(w)} tokens")
                nll -= sum(p["logprob"] for p in plp[1:])
                scored += len(w) - 1
                st = msgs[-1]["attention_stats"]
                n = int(st["positions"])
                positions += n
                for k in sums:
                    if k in st:
                        sums[k] += st[k] * n
                    else:
                        have[k] = False
        finally:
            proc.terminate()
            proc.wait()
        r = {"row": row, "what": what, "attention": "dense" if dense else "top-k",
             "held_out_ppl_server": math.exp(nll / scored), "held_out_tokens": scored,
             "held_out_ppl_training_script": train["held_out_ppl"],
             "training_script_tokens": train["held_out_tokens"], "positions": positions,
             "server": " ".join(server_cmd), "seconds": time.time() - t0,
             "train": {k: train[k] for k in ("parameters", "steps_run", "best_step", "train_seconds", "device")}}
        for k, ok in have.items():
            r[k] = sums[k] / positions if ok else None
        results.append(r)
        print(json.dumps(r), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with open(args.json, "w") as f:
        json.dump({"command": " ".join(sys.argv), "commit": commit, "backend": args.backend,
                   "windows_per_row": args.windows or "all", "rows": results}, f, indent=1)
    text = table(json.load(open(args.json)))
    print(text)
    if args.readme:
        write_readme(args.readme, text)

if __name__ == "__main__":
    main()
