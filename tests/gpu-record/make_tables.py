#!/usr/bin/env python3
"""Markdown tables from the GPU records in this folder (the README's benchmark section).

  python3 tests/gpu-record/make_tables.py                      print the tables
  python3 tests/gpu-record/make_tables.py --write-readme README.md
        replace what lies between <!-- bench:begin --> and <!-- bench:end --> in README.md
  python3 tests/gpu-record/make_tables.py --check README.md    exit 1 if README.md is not up to date

Reads kernel-bench.json (gsa-kernel-bench), sdpa-baseline.json (deploy/gpu/sdpa_baseline.py),
e2e-bench.json (deploy/gpu/e2e-bench.sh) and, while there is no e2e-bench.json, the older
long-context-e2e.json; a missing file leaves its table out (with the command that makes it).
Every table names its file, card, commit and the command that produced it. Standard library only.
"""
import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def load(directory, name):
    path = os.path.join(directory, name)
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None
    except ValueError as e:
        print("make_tables: %s is not valid JSON: %s" % (path, e), file=sys.stderr)
        return None


def deploy_module(name):
    """deploy/gpu/NAME.py as a module (the tools that write the records own their parsing)."""
    path = os.path.join(ROOT, "deploy", "gpu", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compare_module():
    return deploy_module("compare_dense")


def num(v, fmt="%.1f"):
    return fmt % v if isinstance(v, (int, float)) else "–"


def ctx(L):
    return "%dK" % (L // 1024) if L % 1024 == 0 else str(L)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def source_line(name, rec, command):
    return "`tests/gpu-record/%s`: %s, commit `%s`, %s. Command: `%s`" % (
        name, rec.get("card", "?"), rec.get("commit", "?"), rec.get("date", "?"), command)


def timeline_table(recs):
    """The fused selection's per-block phase timeline (decode_select_fused's "timeline") at the
    longest context, one column per batch size: mean µs per block of each phase."""
    timed = [r for r in recs if r["case"] == "decode_select_fused" and r.get("timeline")]
    if not timed:
        return []
    L = max(r["L"] for r in timed)
    cols = sorted((r for r in timed if r["L"] == L), key=lambda r: r["B"])
    names = [p["until"] for p in cols[0]["timeline"]["phases"]]
    rows = []
    for i, name in enumerate(names):
        cells = []
        for r in cols:
            ph = r["timeline"]["phases"]
            cells.append(num(ph[i]["mean_us"], "%.2f") if i < len(ph) else "–")
        rows.append(["until " + name.replace(" | ", " / ")] + cells)  # "|" would split the cell
    rows.append(["first block start → last block end"] +
                [num(r["timeline"].get("first_start_to_last_end_us"), "%.1f") for r in cols])
    rows.append(["launch, event-timed"] + [num(r["time_us"], "%.1f") for r in cols])
    return ["Where the fused selection's time goes at %s (`timeline` in the record: every block reads clock64 at "
            "each phase boundary, `DecodeSelectArgs::marks`, over %s more launches; mean µs per block; a barrier's "
            "time includes waiting for the row's slowest block):" % (ctx(L), cols[0]["timeline"].get("launches", "?")),
            "", table(["phase", *["B = %d" % r["B"] for r in cols]], rows), ""]


def kernel_tables(kb):
    recs = kb.get("records", [])
    by = {(r["case"], r["L"], r["B"]): r for r in recs}
    out = ["### Kernels, one gsa-1.7b layer (gsa-kernel-bench)", "",
           source_line("kernel-bench.json", kb, kb.get("command_line", "?")), ""]
    ce = kb.get("ceilings", {})
    if ce:
        out += ["Ceilings measured in the same run: copy %s GB/s (read + write), bf16 matrix product %s TFLOP/s." % (
            num(ce.get("copy_gbps"), "%.0f"), num(ce.get("bf16_tflops"), "%.0f")), ""]
    rows = []
    for (case, L, B), r in sorted(by.items(), key=lambda x: (x[0][1], x[0][2])):
        if case != "decode_dense_attention":
            continue
        g = by.get(("gsa_decode", L, B))
        u = by.get(("gsa_decode_unfused", L, B))
        f8 = by.get(("gsa_decode_fp8", L, B))
        frac = r.get("fraction_of_ceiling")
        gfrac = g.get("fraction_of_ceiling") if g else None
        rows.append([ctx(L), B, num(r["time_us"]), "%s (%s)" % (num(r.get("gbps"), "%.0f"),
                                                                 num(100 * frac, "%.0f%%") if frac else "–"),
                     "%s (%s)" % (num(g["time_us"]), num(100 * gfrac, "%.0f%%") if gfrac else "–") if g else "–",
                     num(u["time_us"]) if u else "–",
                     "%s (%s)" % (num(f8["time_us"]), num(f8.get("selection_overlap_vs_bf16"), "%.3f")) if f8 else "–",
                     num(g.get("dense_over_gsa"), "%.2f×") if g else "–",
                     num(f8.get("dense_over_gsa"), "%.2f×") if f8 else "–"])
    if rows:
        out += ["Decode attention (B rows, one query token each, over L cached tokens). GSA = the fused selection "
                "(indexer + k + top-k in one cooperative launch) + sparse attention, its bytes as a share of the copy "
                "ceiling; separate = the same with the indexer and top-k launched separately; fp8 = fp8 indexer keys, "
                "with the share of the bf16 keys' selected positions they keep:", "",
                table(["L", "B", "dense µs", "dense GB/s (of copy)", "GSA µs (bytes of copy)", "separate µs",
                       "fp8 µs (kept)", "dense / GSA", "dense / fp8"], rows), ""]
    out += timeline_table(recs)
    rows = []
    for L in sorted({r["L"] for r in recs if r["case"] == "prefill_dense_full"}):
        full, chunk, gsa = by.get(("prefill_dense_full", L, 1)), by.get(("prefill_dense_chunk", L, 1)), \
            by.get(("prefill_gsa_chunk", L, 1))
        def ms(case):
            r = by.get((case, L, 1))
            return num(r["time_us"] / 1000, "%.2f") if r else "–"

        def indexer():
            # The engine's kernel (wgmma on this card), the per-warp mma.sync kernel in parentheses.
            txt = ms("prefill_indexer_chunk")
            if by.get(("prefill_indexer_chunk_per_warp", L, 1)):
                txt += " (%s)" % ms("prefill_indexer_chunk_per_warp")
            return txt

        def gsa_txt():
            # The engine's chunk (PrefillSelect where it runs), the separate launches in parentheses.
            if not gsa:
                return "–"
            sep = by.get(("prefill_gsa_chunk_separate", L, 1))
            txt = num(gsa["time_us"] / 1000, "%.2f")
            return txt + (" (%s)" % num(sep["time_us"] / 1000, "%.2f") if sep else "")

        def select_txt():
            # PrefillSelect alone, fixed k; the variance rule in parentheses.
            r, v = by.get(("prefill_select_chunk", L, 1)), by.get(("prefill_select_chunk_variance", L, 1))
            if not r:
                return "–"
            txt = num(r["time_us"] / 1000, "%.2f")
            return txt + (" (%s)" % num(v["time_us"] / 1000, "%.2f") if v else "")

        def sparse(pattern):
            # The engine's path (union tiles where they pay) with every row gathered on its own in
            # parentheses; then how many tiles took the union path and their mean union.
            r, rows_only = by.get(("prefill_sparse_" + pattern, L, 1)), by.get(("prefill_sparse_%s_rows" % pattern, L, 1))
            if not r:
                return "–"
            txt = num(r["time_us"] / 1000, "%.2f")
            if rows_only:
                txt += " (%s)" % num(rows_only["time_us"] / 1000, "%.2f")
            if "tiles" in r:
                txt += "; %s/%s tiles, %s keys" % (r.get("tiles_on_union_path"), r.get("tiles"),
                                                   num(r.get("mean_union_tokens"), "%.0f"))
            return txt

        rows.append([ctx(L),
                     "%s (%s TFLOP/s)" % (num(full["time_us"] / 1000, "%.2f"), num(full.get("tflops"), "%.0f"))
                     if full else "–",
                     "%s (%s TFLOP/s)" % (num(chunk["time_us"] / 1000, "%.2f"), num(chunk.get("tflops"), "%.0f"))
                     if chunk else "–",
                     gsa_txt(),
                     num(gsa.get("dense_over_gsa"), "%.2f×") if gsa else "–",
                     select_txt(), indexer(), ms("prefill_topk_chunk"), sparse("random"), sparse("clustered")])
    if rows:
        out += ["Prefill (B = 1; chunk = the prompt's last 2048 rows; GSA = the selection of random-weight scores "
                "(near-random positions) + sparse attention on it. The selection: `kernels::PrefillSelect` where most of "
                "the chunk's rows have 16K candidates or more (the engine now takes it only from 96K, where it measured "
                "faster: at 32K and 64K the figure in parentheses is the engine's) (a sampled threshold per row, the "
                "indexer keeping only the scores above it, "
                "k by SelectionCounts, the top-k from those lists), in parentheses the separate launches (IndexerScores "
                "+ SelectionCounts + TopK, the 1 GB of scores written and read back). Its parts, each timed alone: "
                "PrefillSelect with the fixed k = 2048 (in parentheses the variance rule, k_max 4096), the indexer's "
                "scores, the top-k, and the sparse attention on two fixed selection patterns of 2048 positions per "
                "row: random, and clustered (the recent 512 plus 3 spans of 512 shared by every row; 4095 distinct "
                "positions in the chunk). Sparse attention is the engine's path (kernels/sparse_prefill.h: tiles of "
                "128 rows load the union of their selections once where the cost rule says it pays, the other rows "
                "are gathered one by one), in parentheses every row gathered on its own; then the tiles that took "
                "the union path and their mean union in keys. The indexer is the engine's kernel for prefill chunks "
                "(Hopper wgmma), in parentheses the per-warp mma.sync kernel it replaced there:", "",
                table(["L", "dense, whole prompt ms", "dense, chunk ms", "GSA, chunk ms (separate)", "dense / GSA (chunk)",
                       "PrefillSelect ms (variance)", "indexer ms (per-warp)", "top-k ms", "sparse, random ms",
                       "sparse, clustered ms"], rows), ""]
    return out


def sdpa_tables(kb, sd):
    cmp = compare_module()
    out = ["### Dense kernels against PyTorch SDPA (issue 6: ours within %.2f× of SDPA flash)" % cmp.DEFAULT_TARGET,
           ""]
    if sd is None:
        out += ["Not recorded yet: `deploy/gpu/sdpa_baseline.py` writes `sdpa-baseline.json` "
                "(see `deploy/gpu/bench-all.sh`).", ""]
        return out
    out += [source_line("sdpa-baseline.json", sd, sd.get("command_line", "?")) +
            "; torch %s, CUDA %s, cuDNN %s." % (sd.get("torch_version"), sd.get("torch_cuda"), sd.get("cudnn_version")),
            ""]
    if kb is None:
        out += ["(no kernel-bench.json to compare with)", ""]
        return out
    if kb.get("card") != sd.get("card"):
        out += ["**Different cards**: ours on %s, SDPA on %s." % (kb.get("card"), sd.get("card")), ""]
    if kb.get("commit") != sd.get("commit"):
        out += ["Ours measured at commit `%s`, SDPA recorded with commit `%s`." % (kb.get("commit"), sd.get("commit")),
                ""]
    rows = cmp.compare(kb, sd, "flash", cmp.DEFAULT_TARGET)
    if not rows:
        out += ["(no shape in common)", ""]
        return out
    names = {"decode_dense_attention": "decode", "prefill_dense_full": "prefill, whole prompt",
             "prefill_dense_chunk": "prefill, 2048-row chunk"}
    body = []
    for r in rows:
        ratio = r.get("ratio")
        body.append([names[r["case"]], ctx(r["L"]), r["B"], num(r["ours_us"]),
                     "%s (%s)" % (num(r["sdpa_us"]), r["sdpa_variant"]) if "sdpa_us" in r else "–",
                     ("**%s**" % num(ratio, "%.2f") if ratio > cmp.DEFAULT_TARGET else num(ratio, "%.2f"))
                     if ratio is not None else "–",
                     "%s (%s)" % (num(r["best_sdpa_us"]), r["best_sdpa_backend"]) if "best_sdpa_us" in r else "–",
                     num(r.get("ratio_to_best"), "%.2f")])
    s = cmp.summary(rows)
    out += [table(["case", "L", "B", "ours µs", "SDPA flash µs (variant)", "ours / flash", "fastest SDPA µs (backend)",
                   "ours / fastest"], body), "",
            "%d of %d shapes within %.2f× of SDPA flash (bold: over). Ours includes the output gate and reads a paged "
            "cache; SDPA reads contiguous K/V. `gqa`: `enable_gqa=True`; `packed`: the 2 query heads of a KV group "
            "as 2 query rows." % (s["within_target"], s["compared_to_backend"], cmp.DEFAULT_TARGET), ""]
    return out


def e2e_tables(e2e, old):
    out = ["### End to end: gsa-server + gsa-bench, GSA against dense", ""]
    if e2e is not None:
        out += [source_line("e2e-bench.json", e2e, e2e.get("command", "?")), ""]
        srv = e2e.get("server", {})
        model = e2e.get("model", {})
        info = model.get("info") or {}
        out += ["Server: `%s` (%s, cache %s tokens). Model: %s shapes, %s random weights, vocabulary %s, k = %s." % (
            srv.get("command", "?"), srv.get("device", "?"), srv.get("cache_tokens", "?"), model.get("shape", "?"),
            model.get("dtype", "?"), info.get("vocab_size", "?"), info.get("k_base", "?")), ""]
        cases = e2e.get("cases", [])
        host = any(isinstance(c.get("host_ms_per_step"), (int, float)) for c in cases)
        overlap = any(isinstance(c.get("overlapped_ms_per_step"), (int, float)) for c in cases)
        rows = []
        for c in sorted(cases, key=lambda c: (c["context"], c["batch"], c["attention"] != "gsa")):
            note = "" if c.get("ok") else "failed"
            if c["batch"] > 1 and not c.get("prefix_cache_hit"):
                note = (note + "; " if note else "") + "prefill not excluded"
            rows.append([ctx(c["context"]), c["batch"], c["attention"], num(c.get("ttft_ms") / 1000, "%.2f")
                         if isinstance(c.get("ttft_ms"), (int, float)) else "–",
                         num(c.get("decode_step_ms"), "%.2f"), num(c.get("itl_ms_p50"), "%.2f"),
                         num(c.get("decode_tokens_per_s"), "%.0f")] +
                        ([num(c.get("host_ms_per_step"), "%.3f")] if host else []) +
                        ([num(c.get("overlapped_ms_per_step"), "%.3f")] if overlap else []) + [note])
        out += [table(["context", "batch", "attention", "TTFT s", "decode step ms", "ITL p50 ms",
                       "decode tokens/s"] + (["host ms / step"] if host else []) +
                      (["overlapped ms / step"] if overlap else []) + ["note"], rows), ""]
        if host and overlap:
            out += ["host ms / step: the server's `gsa_engine_step_seconds_total{part=\"engine\"}` over the run's "
                    "engine steps: host work the GPU waits for (sampling, scheduling, building and launching the "
                    "batch). overlapped ms / step: `{part=\"overlapped\"}`, host work done while the next step "
                    "runs (detokenizing, streaming). The run's prefill steps included.", ""]
        elif host:
            out += ["host ms / step: the server's `gsa_engine_step_seconds_total{part=\"engine\"}` over the run's "
                    "engine steps (scheduling, batch building, sampling, detokenizing, streaming; the run's "
                    "prefill steps included).", ""]
        comp = e2e.get("comparisons", [])
        if comp:
            rows = [[ctx(r["context"]), r["batch"], num(r["dense_over_gsa_step"], "%.2f×"),
                     num(r.get("gsa_over_dense_ttft"), "%.2f×")]
                    for r in sorted(comp, key=lambda r: (r["context"], r["batch"]))]
            out += [table(["context", "batch", "decode step dense / GSA", "TTFT GSA / dense"], rows), ""]
        t = e2e.get("target")
        if t:
            out += ["Target (%s): %s." % (t["what"], "met" if t.get("met") else "not met, %s" % num(
                t.get("dense_over_gsa"), "%.2f×")), ""]
        out += ["Prompts are %s tokens, so decode runs up to the context; decode step = (e2e − TTFT) / (tokens − 1) "
                "per request; batch %s: distinct prompts prefilled first, then sent again at once and served from "
                "the prefix cache, so the step is decode only. One TTFT sample each." % (
                    ", ".join(str(v) for v in e2e.get("settings", {}).get("prompt_tokens", {}).values()),
                    e2e.get("settings", {}).get("batch", "?")), ""]
        return out
    if old is not None:
        out += [source_line("long-context-e2e.json", old, old.get("command", "?")), ""]
        rows = []
        for key, label in (("gsa_bench_sparse_default", "gsa"), ("gsa_bench_dense", "dense")):
            r = old.get(key)
            if r:
                rows.append([r.get("prompt_tokens"), 1, label, num(r.get("ttft_ms", 0) / 1000, "%.2f"),
                             num(r.get("tpot_ms"), "%.2f"), num(r.get("itl_ms_p50"), "%.2f"),
                             num(1000.0 / r["tpot_ms"], "%.0f") if r.get("tpot_ms") else "–"])
        out += [table(["prompt tokens", "batch", "attention", "TTFT s", "decode step ms", "ITL p50 ms",
                       "decode tokens/s"], rows), ""]
        if old.get("note"):
            out += [old["note"], ""]
        out += ["Batch 4 and 32K, GSA against dense: not recorded yet (`deploy/gpu/e2e-bench.sh` writes "
                "`e2e-bench.json`).", ""]
        return out
    return out + ["Not recorded yet: `deploy/gpu/e2e-bench.sh` writes `e2e-bench.json`.", ""]


def step_tables(now, first, cublas, before, prof, prof_before):
    # Kinds as step_profile.py names them (older records kept ncu's demangled names).
    kernel_kind = deploy_module("step_profile").short_name
    out = ["### A decode step without the server: gsa-step-bench", ""]
    if now is None:
        return out + ["Not recorded yet: `deploy/gpu/step-profile.sh` writes `step-bench.json`.", ""]
    out += [source_line("step-bench.json", now, now.get("command", "?")), ""]
    out += ["Wall time of `CudaBackend::Step` per decode step (plan, metadata upload, CUDA graph, logits copy, "
            "synchronize; no scheduler, sampling or gRPC), p50 of %s steps; distinct random prompts of context − 64 "
            "tokens per sequence; %s. Columns: this record; the first small-row-product build "
            "(`step-bench-928adfb.json`, commit %s); that build with every product through cuBLASLt (`--cublas-only`, "
            "`step-bench-cublas.json`, commit %s, the A/B of `kernels::SmallLinear`); before this work "
            "(`step-bench-before.json`, commit %s)." % (
                now.get("settings", {}).get("steps", "?"), now.get("card", "?"), (first or {}).get("commit", "–"),
                (cublas or {}).get("commit", "–"), (before or {}).get("commit", "–")), ""]

    def index(rec):
        return {(c["context"], c["batch"], c["attention"]): c["step_ms_p50"] for c in (rec or {}).get("cases", [])}

    n, fs, cb, bf = index(now), index(first), index(cublas), index(before)
    rows = []
    for key in sorted(n, key=lambda k: (k[0], k[1], k[2] != "gsa")):
        L, B, attn = key
        dense = n.get((L, B, "dense"))
        rows.append([ctx(L), B, attn, num(n[key], "%.3f"), num(fs.get(key), "%.3f") if key in fs else "–",
                     num(cb.get(key), "%.3f") if key in cb else "–",
                     num(bf.get(key), "%.3f") if key in bf else "–",
                     num(dense / n[key], "%.2f×") if attn == "gsa" and dense else ""])
    out += [table(["context", "batch", "attention", "step ms", "928adfb", "928adfb, cuBLASLt only", "before",
                   "dense / GSA"], rows), ""]

    def kinds(rec, L, B):
        for c in (rec or {}).get("cases", []):
            if c.get("context") == L and c.get("batch") == B and c.get("attention") == "gsa":
                return c
        return None

    if prof is not None:
        for c in prof.get("cases", []):
            old = kinds(prof_before, c["context"], c["batch"])
            out += ["Every kernel of one GSA decode step at %s, batch %s, under Nsight Compute (kernels serialized, "
                    "natural clocks, warm caches: the sum exceeds the step's wall time, which overlaps launches), "
                    "`step-profile.json` (commit %s)%s:" % (
                        ctx(c["context"]), c["batch"], prof.get("commit", "?"),
                        "; before: `step-profile-before.json` (commit %s)" % prof_before.get("commit") if old else ""),
                    ""]
            rows = [[kernel_kind(k["kind"]), k["count"], num(k["ms"], "%.3f"), num(100.0 * k["ms"] / c["kernel_sum_ms"], "%.0f%%"),
                     num((k["dram_read_mb"] + k.get("dram_write_mb", 0)) / k["ms"] / 1e3, "%.2f") if k["ms"] else "–"]
                    for k in c["kinds"]]
            rows.append(["all", c["kernels"], num(c["kernel_sum_ms"], "%.3f"), "100%", ""])
            if old:
                rows.append(["all, before", old["kernels"], num(old["kernel_sum_ms"], "%.3f"), "", ""])
            out += [table(["kernel", "launches", "ms", "share", "DRAM TB/s"], rows), ""]
            if old:
                rows = [[kernel_kind(k["kind"]), k["count"], num(k["ms"], "%.3f")] for k in old["kinds"]]
                out += ["Before:", "", table(["kernel", "launches", "ms"], rows), ""]
    return out


def render(directory):
    kb = load(directory, "kernel-bench.json")
    sd = load(directory, "sdpa-baseline.json")
    e2e = load(directory, "e2e-bench.json")
    old = load(directory, "long-context-e2e.json")
    lines = ["<!-- Generated by `python3 tests/gpu-record/make_tables.py --write-readme README.md` from the JSON "
             "records in tests/gpu-record/; edit those, not these tables. -->", ""]
    lines += e2e_tables(e2e, old)
    lines += step_tables(load(directory, "step-bench.json"), load(directory, "step-bench-928adfb.json"),
                         load(directory, "step-bench-cublas.json"),
                         load(directory, "step-bench-before.json"), load(directory, "step-profile.json"),
                         load(directory, "step-profile-before.json"))
    lines += sdpa_tables(kb, sd)
    if kb is not None:
        lines += kernel_tables(kb)
    else:
        lines += ["### Kernels (gsa-kernel-bench)", "", "Not recorded yet: `kernel-bench.json`.", ""]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def splice(text, body):
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < 0 or e < b:
        raise ValueError("README has no %s ... %s markers" % (BEGIN, END))
    return text[:b + len(BEGIN)] + "\n" + body + text[e:]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=HERE, help="folder of the JSON records (default: this script's)")
    ap.add_argument("--write-readme", metavar="README", help="replace the tables between the markers in this file")
    ap.add_argument("--check", metavar="README", help="exit 1 if this file's tables are not what the records give")
    args = ap.parse_args(argv)
    body = render(args.dir)
    target = args.write_readme or args.check
    if not target:
        sys.stdout.write(body)
        return 0
    with open(target) as f:
        text = f.read()
    try:
        new = splice(text, body)
    except ValueError as e:
        print("make_tables: %s: %s" % (target, e), file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print("make_tables: %s is out of date; run make_tables.py --write-readme %s" % (target, target),
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(target, "w") as f:
            f.write(new)
        print("make_tables: updated %s" % target)
    else:
        print("make_tables: %s already up to date" % target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
