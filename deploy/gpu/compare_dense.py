#!/usr/bin/env python3
"""Our dense kernels against PyTorch SDPA, shape by shape (issue 6: within 1.25x of SDPA flash).

  python3 deploy/gpu/compare_dense.py KERNEL_BENCH.json SDPA_BASELINE.json [--backend flash]
                                      [--target 1.25] [--json OUT.json]

Joins gsa-kernel-bench's records (decode_dense_attention, prefill_dense_full, prefill_dense_chunk)
with sdpa_baseline.py's "best" entries on (case, L, B) and prints ours / SDPA time per shape
(below 1 means ours is faster). The SDPA figure is the fastest checked variant of --backend
(default flash); the "best SDPA" column takes the fastest backend in the file. Both files should
come from the same card in the same run: a different card name is reported.
Standard library only; importable (tests/gpu-record/make_tables.py uses compare()).
"""
import argparse
import json
import sys

CASES = ("decode_dense_attention", "prefill_dense_full", "prefill_dense_chunk")
DEFAULT_TARGET = 1.25


def compare(kernel_bench, sdpa, backend="flash", target=DEFAULT_TARGET):
    """Rows of the comparison, one per kernel-bench record of a dense case that SDPA also timed."""
    best = {}
    best_any = {}
    for b in sdpa.get("best", []):
        key = (b["case"], int(b["L"]), int(b["B"]))
        if b["backend"] == backend:
            best[key] = b
        if key not in best_any or b["time_us"] < best_any[key]["time_us"]:
            best_any[key] = b
    rows = []
    for r in kernel_bench.get("records", []):
        if r.get("case") not in CASES:
            continue
        key = (r["case"], int(r["L"]), int(r["B"]))
        s = best.get(key)
        a = best_any.get(key)
        if s is None and a is None:
            continue
        row = {"case": r["case"], "L": key[1], "B": key[2], "ours_us": r["time_us"],
               "ours_gbps": r.get("gbps"), "ours_tflops": r.get("tflops")}
        if s is not None:
            row.update({"sdpa_backend": backend, "sdpa_variant": s["variant"], "sdpa_us": s["time_us"],
                        "sdpa_gbps": s.get("gbps"), "sdpa_tflops": s.get("tflops"),
                        "ratio": r["time_us"] / s["time_us"] if s["time_us"] > 0 else None})
            row["within_target"] = row["ratio"] is not None and row["ratio"] <= target
        if a is not None:
            row.update({"best_sdpa_backend": a["backend"], "best_sdpa_variant": a["variant"],
                        "best_sdpa_us": a["time_us"],
                        "ratio_to_best": r["time_us"] / a["time_us"] if a["time_us"] > 0 else None})
        rows.append(row)
    rows.sort(key=lambda x: (CASES.index(x["case"]), x["L"], x["B"]))
    return rows


def summary(rows):
    rated = [r for r in rows if r.get("ratio") is not None]
    out = {"shapes": len(rows), "compared_to_backend": len(rated),
           "within_target": sum(1 for r in rated if r["within_target"])}
    if rated:
        worst = max(rated, key=lambda r: r["ratio"])
        out["worst"] = {"case": worst["case"], "L": worst["L"], "B": worst["B"], "ratio": worst["ratio"]}
    return out


def format_table(rows, backend, target):
    lines = ["%-24s %7s %2s %10s %10s %-9s %7s %4s %12s %7s" % (
        "case", "L", "B", "ours_us", "sdpa_us", "variant", "ratio", "ok", "best_sdpa_us", "ratio")]
    for r in rows:
        ratio = r.get("ratio")
        lines.append("%-24s %7d %2d %10.2f %10s %-9s %7s %4s %12s %7s" % (
            r["case"], r["L"], r["B"], r["ours_us"],
            "%.2f" % r["sdpa_us"] if "sdpa_us" in r else "-", r.get("sdpa_variant", "-"),
            "%.3f" % ratio if ratio is not None else "-",
            ("yes" if r["within_target"] else "NO") if ratio is not None else "-",
            "%.2f %s" % (r["best_sdpa_us"], r["best_sdpa_backend"]) if "best_sdpa_us" in r else "-",
            "%.3f" % r["ratio_to_best"] if r.get("ratio_to_best") is not None else "-"))
    lines.append("ratio = ours / SDPA %s time (<= %.2f meets issue 6's target; < 1: ours faster)" % (backend, target))
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kernel_bench")
    ap.add_argument("sdpa")
    ap.add_argument("--backend", default="flash", help="SDPA backend the target is against (default flash)")
    ap.add_argument("--target", type=float, default=DEFAULT_TARGET, help="ours/SDPA ratio to meet (default 1.25)")
    ap.add_argument("--json", default="", help="also write the rows and a summary here")
    args = ap.parse_args(argv)
    with open(args.kernel_bench) as f:
        kb = json.load(f)
    with open(args.sdpa) as f:
        sd = json.load(f)
    if kb.get("card") != sd.get("card"):
        print("compare_dense: different cards: kernel bench '%s', SDPA '%s'" % (kb.get("card"), sd.get("card")),
              file=sys.stderr)
    rows = compare(kb, sd, args.backend, args.target)
    if not rows:
        print("compare_dense: no shape in common (run both at the same contexts and batches)", file=sys.stderr)
        return 1
    print("ours: %s (commit %s, %s); SDPA: torch %s on %s (commit %s)" % (
        kb.get("card"), kb.get("commit"), kb.get("date"), sd.get("torch_version"), sd.get("card"), sd.get("commit")))
    print(format_table(rows, args.backend, args.target))
    s = summary(rows)
    print("%d of %d shapes within %.2fx of SDPA %s" % (s["within_target"], s["compared_to_backend"], args.target,
                                                      args.backend))
    if args.json:
        out = {"tool": "compare_dense.py", "target_ratio": args.target, "backend": args.backend,
               "kernel_bench": {"file": args.kernel_bench, "card": kb.get("card"), "commit": kb.get("commit"),
                                "date": kb.get("date"), "command_line": kb.get("command_line")},
               "sdpa": {"file": args.sdpa, "card": sd.get("card"), "commit": sd.get("commit"),
                        "date": sd.get("date"), "torch_version": sd.get("torch_version"),
                        "command_line": sd.get("command_line")},
               "summary": s, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
