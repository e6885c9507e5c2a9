#!/usr/bin/env python3
"""Sums the kernels of one profiled decode step (ncu --csv --print-units base output of
gsa-step-bench --profile, one file per case) by kind, and sets the sum beside the step's wall time
from gsa-step-bench's JSON. Used by deploy/gpu/step-profile.sh; prints a table, writes JSON."""
import argparse
import csv
import json
import os
import re
import sys

GEMM_MARKERS = ("nvjet", "gemm", "gemv", "splitk", "cutlass", "xmma", "cublas")


def short_name(full):
    """A kernel's bare function name from ncu's demangled one ("void gsa::<unnamed>::K<128, 2>(Args)"
    → "K"); a name without those parts comes back as it is."""
    name = full.strip()
    if name.startswith("void "):
        name = name[5:]
    # Anonymous namespaces, as ncu prints them, before cutting at the first template or parameter list.
    name = name.replace("<unnamed>::", "").replace("(anonymous namespace)::", "")
    cut = min((i for i in (name.find("<"), name.find("(")) if i >= 0), default=len(name))
    return name[:cut].split("::")[-1] or full


def kind(full):
    low = full.lower()
    if any(m in low for m in GEMM_MARKERS):
        return "cuBLASLt GEMM"
    return short_name(full)


def number(s):
    s = s.replace(",", "").strip()
    try:
        return float(s)
    except ValueError:
        return None


def read_case(path):
    lines = [ln for ln in open(path, errors="replace") if ln.startswith('"')]
    if not lines:
        raise SystemExit(f"step_profile: {path} has no ncu CSV rows (did the profiled step run?)")
    kernels = {}
    order = []
    for row in csv.DictReader(lines):
        kid = row["ID"]
        if kid not in kernels:
            kernels[kid] = {"name": row["Kernel Name"], "grid": row.get("Grid Size", ""), "block": row.get("Block Size", "")}
            order.append(kid)
        v = number(row["Metric Value"])
        if v is not None:
            kernels[kid][row["Metric Name"]] = v
    return [kernels[k] for k in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("csv", nargs="+", help="ncu-<context>-<batch>-<attention>.csv files")
    ap.add_argument("--step-bench", help="gsa-step-bench --json output with the cases' wall times")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--show", type=int, default=40, help="kernels listed in launch order per case")
    a = ap.parse_args()
    wall = {}
    bench = None
    if a.step_bench and os.path.exists(a.step_bench):
        bench = json.load(open(a.step_bench))
        for c in bench["cases"]:
            wall[(c["context"], c["batch"], c["attention"])] = c["step_ms_p50"]
    out_cases = []
    for path in a.csv:
        m = re.search(r"ncu-(\d+)-(\d+)-(\w+)\.csv$", path)
        key = (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None
        ks = read_case(path)
        total_ns = sum(k.get("gpu__time_duration.sum", 0) for k in ks)
        cats = {}
        for k in ks:
            c = cats.setdefault(kind(k["name"]), {"kind": kind(k["name"]), "count": 0, "ns": 0.0, "dram_read": 0.0, "dram_write": 0.0})
            c["count"] += 1
            c["ns"] += k.get("gpu__time_duration.sum", 0)
            c["dram_read"] += k.get("dram__bytes_read.sum", 0)
            c["dram_write"] += k.get("dram__bytes_write.sum", 0)
        cat_list = sorted(cats.values(), key=lambda c: -c["ns"])
        w = wall.get(key) if key else None
        title = f"context {key[0]}, batch {key[1]}, {key[2]}" if key else path
        print(f"\n== {title}: {len(ks)} kernels, sum {total_ns / 1e6:.3f} ms" +
              (f"; step wall time p50 {w:.3f} ms (outside kernels {w - total_ns / 1e6:.3f} ms)" if w else ""))
        print(f"{'kind':34s} {'count':>6s} {'sum ms':>9s} {'share':>6s} {'mean us':>8s} {'DRAM rd MB':>11s} {'GB/s':>7s}")
        for c in cat_list:
            gbps = (c["dram_read"] + c["dram_write"]) / c["ns"] if c["ns"] else 0
            print(f"{c['kind'][:34]:34s} {c['count']:6d} {c['ns'] / 1e6:9.3f} {100 * c['ns'] / total_ns:5.1f}% "
                  f"{c['ns'] / 1e3 / c['count']:8.1f} {c['dram_read'] / 1e6:11.1f} {gbps:7.0f}")
        print(f"first {min(a.show, len(ks))} kernels in launch order:")
        listed = []
        for k in ks[: a.show]:
            ns = k.get("gpu__time_duration.sum", 0)
            rd = k.get("dram__bytes_read.sum", 0)
            listed.append({"name": short_name(k["name"]), "kind": kind(k["name"]), "us": ns / 1e3,
                           "dram_read_mb": rd / 1e6, "grid": k["grid"], "block": k["block"]})
            print(f"  {short_name(k['name'])[:48]:48s} {ns / 1e3:8.1f} us {rd / 1e6:8.2f} MB {rd / ns if ns else 0:6.0f} GB/s grid {k['grid']}")
        out_cases.append({"context": key[0] if key else None, "batch": key[1] if key else None,
                          "attention": key[2] if key else None, "kernels": len(ks), "kernel_sum_ms": total_ns / 1e6,
                          "step_wall_ms_p50": w, "kinds": [{"kind": c["kind"], "count": c["count"], "ms": c["ns"] / 1e6,
                                                         "dram_read_mb": c["dram_read"] / 1e6,
                                                         "dram_write_mb": c["dram_write"] / 1e6} for c in cat_list],
                          "first_kernels": listed})
    if a.json:
        doc = {"tool": "deploy/gpu/step-profile.sh", "commit": a.commit,
               "what": "every kernel of one decode step (graph replay, ncu --cache-control none --clock-control none, "
                       "kernels serialized) summed by kind, against the step's wall time from gsa-step-bench",
               "card": bench["card"] if bench else None, "cases": out_cases}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
