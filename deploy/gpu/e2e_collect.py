#!/usr/bin/env python3
"""Collects deploy/gpu/e2e-bench.sh's runs into one record, OUT_DIR/e2e-bench.json.

  python3 deploy/gpu/e2e_collect.py OUT_DIR --card C --commit X --command CMD [--model-dir D --shape S
      --dtype T --output-len N --batch B --contexts "C1 C2" --modes "default dense"]

Reads OUT_DIR/runs/index.tsv (one line a gsa-bench run: name, mode, context, prompt tokens, kind,
requests, output length, exit status, wall ms, command), each run's gsa-bench JSON and the
server-log lines of its requests, and OUT_DIR/server.log's "serving" line. Prints a summary.
Standard library only.
"""
import argparse
import datetime
import json
import os
import sys

MODE_LABEL = {"default": "gsa", "dense": "dense"}


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def read_index(path):
    runs = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 10:
                    continue
                name, mode, ctx, prompt, kind, n, olen, rc, ms, cmd = parts[:10]
                runs.append({"name": name, "mode": mode, "context": int(ctx), "prompt_tokens": int(prompt),
                             "kind": kind, "requests": int(n), "output_len": int(olen),
                             "rc": rc if rc == "skipped" else int(rc), "wall_ms": int(ms), "command": cmd})
    except OSError:
        pass
    return runs


def summarize_run(out_dir, run):
    """The run's figures from its gsa-bench JSON and server-log lines."""
    base = os.path.join(out_dir, "runs", run["name"])
    bench = load_json(base + ".json")
    server = load_jsonl(base + ".server.jsonl")
    s = dict(run)
    if bench is not None:
        res = bench.get("results", {})
        s["completed"] = res.get("completed")
        s["failed"] = res.get("failed")
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            s[key] = res.get(key)
        s["output_throughput"] = res.get("output_throughput")
        s["duration_s"] = res.get("duration_s")
        s["per_request"] = [{"ttft_ms": r.get("ttft_ms"), "tpot_ms": r.get("tpot_ms"), "e2e_ms": r.get("e2e_ms"),
                             "start_ms": r.get("start_ms"), "output_tokens": r.get("output_tokens"),
                             "status": r.get("status")} for r in bench.get("requests", [])]
        s["model_info"] = bench.get("model_info")
    finished = [e for e in server if e.get("event") == "request_finished"]
    if finished:
        s["server_cached_tokens"] = sum(int(e.get("cached_tokens", 0)) for e in finished)
        s["server_prompt_tokens"] = sum(int(e.get("prompt_tokens", 0)) for e in finished)
        s["server_ttft_ms"] = [e.get("ttft_ms") for e in finished]
    s["server_failed"] = sum(1 for e in server if e.get("event") == "request_failed")
    # The engine's step counters around the run (gsa_engine_step_seconds_total): per step, the time
    # inside the backend (Launch + Collect), the host work the device waited for (sampling,
    # scheduling, building the batch), and the host work done while a step ran (overlapped:
    # detokenizing, streaming).
    m0, m1 = load_json(base + ".metrics-before.json"), load_json(base + ".metrics-after.json")
    if m0 and m1 and m1.get("steps", 0) > m0.get("steps", 0):
        n = m1["steps"] - m0["steps"]
        s["engine_steps"] = int(n)
        s["backend_ms_per_step"] = 1000.0 * (m1.get("backend_s", 0) - m0.get("backend_s", 0)) / n
        s["host_ms_per_step"] = 1000.0 * (m1.get("engine_s", 0) - m0.get("engine_s", 0)) / n
        if "overlapped_s" in m1:
            s["overlapped_ms_per_step"] = 1000.0 * (m1["overlapped_s"] - m0.get("overlapped_s", 0)) / n
    return s


def stat(summary, key, field):
    v = (summary or {}).get(key) or {}
    return v.get(field)


def build(args):
    out_dir = args.out_dir
    runs = [summarize_run(out_dir, r) for r in read_index(os.path.join(out_dir, "runs", "index.tsv"))]
    by_name = {r["name"]: r for r in runs}
    serving = {}
    for e in load_jsonl(os.path.join(out_dir, "server.log")):
        if e.get("event") == "serving":
            serving = e
            break
    try:
        with open(os.path.join(out_dir, "server-command.txt")) as f:
            server_command = f.read().strip()
    except OSError:
        server_command = None
    model_info = next((r["model_info"] for r in runs if r.get("model_info")), None)

    contexts = [int(c) for c in args.contexts.split()] if args.contexts else sorted({r["context"] for r in runs})
    modes = args.modes.split() if args.modes else ["default", "dense"]
    B = args.batch
    cases = []
    for ctx in contexts:
        for mode in modes:
            label = MODE_LABEL.get(mode, mode)
            b1 = by_name.get("b1-%s-%d" % (mode, ctx))
            if b1 is not None and b1["rc"] != "skipped":
                step = stat(b1, "tpot_ms", "mean")
                cases.append({
                    "attention": label, "context": ctx, "prompt_tokens": b1["prompt_tokens"], "batch": 1,
                    "output_tokens": b1["output_len"], "ok": b1["rc"] == 0 and not b1.get("failed"),
                    "ttft_ms": stat(b1, "ttft_ms", "mean"),
                    "decode_step_ms": step, "itl_ms_p50": stat(b1, "itl_ms", "p50"),
                    "itl_ms_p99": stat(b1, "itl_ms", "p99"),
                    "decode_tokens_per_s": 1000.0 / step if step else None,
                    "engine_steps": b1.get("engine_steps"), "backend_ms_per_step": b1.get("backend_ms_per_step"),
                    "host_ms_per_step": b1.get("host_ms_per_step"),
                    "overlapped_ms_per_step": b1.get("overlapped_ms_per_step"),
                    "how": "one request; TTFT = send to first token; decode step = (e2e - TTFT) / (tokens - 1); "
                           "backend/host ms per step: the server's gsa_engine_step_seconds_total over the run's "
                           "steps (the prefill steps included)",
                    "command": b1["command"]})
            warm = by_name.get("warm-%s-%d" % (mode, ctx))
            fill = by_name.get("fill-%s-%d" % (mode, ctx))
            if warm is not None and warm["rc"] != "skipped":
                step = stat(warm, "tpot_ms", "mean")
                per = [r["tpot_ms"] for r in warm.get("per_request", []) if r.get("tpot_ms") is not None]
                wttft = [r["ttft_ms"] for r in warm.get("per_request", []) if r.get("ttft_ms") is not None]
                cached = warm.get("server_cached_tokens")
                prompts = warm.get("server_prompt_tokens")
                hit = (cached is not None and prompts and cached >= 0.9 * prompts)
                cases.append({
                    "attention": label, "context": ctx, "prompt_tokens": warm["prompt_tokens"], "batch": B,
                    "output_tokens": warm["output_len"], "ok": warm["rc"] == 0 and not warm.get("failed"),
                    "decode_step_ms": step,
                    "decode_step_ms_min": min(per) if per else None,
                    "decode_step_ms_max": max(per) if per else None,
                    "itl_ms_p50": stat(warm, "itl_ms", "p50"), "itl_ms_p99": stat(warm, "itl_ms", "p99"),
                    "decode_tokens_per_s": B * 1000.0 / step if step else None,
                    "per_sequence_tokens_per_s": 1000.0 / step if step else None,
                    "warm_ttft_ms_max": max(wttft) if wttft else None,
                    "prefix_cached_tokens": cached, "prompt_tokens_total": prompts,
                    "prefix_cache_hit": bool(hit),
                    "engine_steps": warm.get("engine_steps"), "backend_ms_per_step": warm.get("backend_ms_per_step"),
                    "host_ms_per_step": warm.get("host_ms_per_step"),
                    "overlapped_ms_per_step": warm.get("overlapped_ms_per_step"),
                    "fill_ttft_ms_max": stat(fill, "ttft_ms", "max") if fill else None,
                    "how": "%d distinct prompts prefilled first (fill run), then sent again at once: served from the "
                           "prefix cache, they decode together; decode step = mean over the %d requests of "
                           "(e2e - TTFT) / (tokens - 1)" % (B, B),
                    "command": warm["command"],
                    "fill_command": fill["command"] if fill else None})
    comparisons = []
    for ctx in contexts:
        for b in (1, B):
            g = next((c for c in cases if c["attention"] == "gsa" and c["context"] == ctx and c["batch"] == b), None)
            d = next((c for c in cases if c["attention"] == "dense" and c["context"] == ctx and c["batch"] == b), None)
            if not g or not d or not g.get("decode_step_ms") or not d.get("decode_step_ms"):
                continue
            row = {"context": ctx, "batch": b, "gsa_step_ms": g["decode_step_ms"], "dense_step_ms": d["decode_step_ms"],
                   "dense_over_gsa_step": d["decode_step_ms"] / g["decode_step_ms"]}
            if b == 1 and g.get("ttft_ms") and d.get("ttft_ms"):
                row.update({"gsa_ttft_ms": g["ttft_ms"], "dense_ttft_ms": d["ttft_ms"],
                            "gsa_over_dense_ttft": g["ttft_ms"] / d["ttft_ms"]})
            comparisons.append(row)
    target = None
    if contexts:
        big = max(contexts)
        row = next((r for r in comparisons if r["context"] == big and r["batch"] == B), None)
        target = {"what": "decode step at %d context, batch %d: dense / GSA >= 5 (issue 6)" % (big, B),
                  "dense_over_gsa": row["dense_over_gsa_step"] if row else None,
                  "met": bool(row and row["dense_over_gsa_step"] >= 5.0)}

    record = {
        "tool": "deploy/gpu/e2e-bench.sh",
        "what": "end-to-end decode step, decode tokens/s and time to first token through gsa-server and gsa-bench, "
                "GSA (the model's attention) against dense (per request, --attention dense) on one checkpoint in one "
                "server run; random bf16 weights on the %s shapes" % args.shape,
        "card": args.card,
        "commit": args.commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": args.command,
        "server": {"command": server_command,
                   "backend": serving.get("backend"), "device": serving.get("device"),
                   "cache_tokens": serving.get("cache_tokens"), "block_size": serving.get("block_size"),
                   "max_model_len": serving.get("max_model_len")},
        "model": {"dir": args.model_dir, "shape": args.shape, "dtype": args.dtype,
                  "info": model_info},
        "settings": {"contexts": contexts, "output_tokens": args.output_len, "batch": B, "modes": modes,
                     "prompt_tokens": {str(c): c - args.output_len for c in contexts},
                     "seed": "gsa-bench --seed = context (prompts distinct within a run; b1's prompt is the "
                             "first of the batch)"},
        "method": "per context and attention: b1 = one request (TTFT, batch-1 decode step); fill = the batch's "
                  "prompts prefilled with 1 output token; warm = the same prompts again, all at once, served from "
                  "the prefix cache so only decode remains (batch-B decode step). TPOT excludes TTFT. One sample "
                  "per TTFT.",
        "cases": cases,
        "comparisons": comparisons,
        "target": target,
        "runs": [{k: v for k, v in r.items() if k not in ("model_info",)} for r in runs],
    }
    return record


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--card", default="unknown")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--command", default="")
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--shape", default="gsa-1.7b")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--contexts", default="")
    ap.add_argument("--modes", default="")
    ap.add_argument("--json", default="", help="default OUT_DIR/e2e-bench.json")
    args = ap.parse_args(argv)
    record = build(args)
    path = args.json or os.path.join(args.out_dir, "e2e-bench.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)

    def f(v, fmt="%.2f"):
        return fmt % v if isinstance(v, (int, float)) else "-"

    print("%-6s %7s %5s %10s %10s %10s %12s %10s %10s  %s" % ("attn", "context", "batch", "ttft_ms", "step_ms",
                                                             "itl_p50", "tokens/s", "backend_ms", "host_ms", "note"))
    for c in record["cases"]:
        note = "" if c["ok"] else "FAILED"
        if c["batch"] > 1 and not c.get("prefix_cache_hit"):
            note += " no prefix-cache hit: step includes prefill"
        print("%-6s %7d %5d %10s %10s %10s %12s %10s %10s  %s" % (
            c["attention"], c["context"], c["batch"], f(c.get("ttft_ms"), "%.1f"), f(c.get("decode_step_ms"), "%.3f"),
            f(c.get("itl_ms_p50"), "%.3f"), f(c.get("decode_tokens_per_s"), "%.1f"),
            f(c.get("backend_ms_per_step"), "%.3f"), f(c.get("host_ms_per_step"), "%.3f"), note))
    for r in record["comparisons"]:
        extra = ""
        if "gsa_over_dense_ttft" in r:
            extra = "; TTFT GSA/dense %.2fx" % r["gsa_over_dense_ttft"]
        print("context %d batch %d: dense/GSA decode step %.2fx%s" % (r["context"], r["batch"], r["dense_over_gsa_step"],
                                                                     extra))
    if record["target"]:
        t = record["target"]
        print("target (%s): %s" % (t["what"], "met" if t["met"] else "not met (%s)" % f(t["dense_over_gsa"])))
    print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
