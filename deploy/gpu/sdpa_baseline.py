#!/usr/bin/env python3
"""PyTorch SDPA baseline for gsa-kernel-bench's dense cases (issue 6).

Times torch.nn.functional.scaled_dot_product_attention, with the backend forced through
torch.nn.attention.sdpa_kernel (flash by default), at the shapes gsa-kernel-bench
(kernels/bench/kernel_bench_main.cc) uses for our dense kernels, one layer of gsa-1.7b
(16 query heads, 8 KV heads, d_head 128, bf16, scale 1/sqrt(128)):

  decode_dense_attention  B sequences, one query token each, attending to all L cached tokens
                          q [B,16,1,128], K/V [B,8,L,128]; bytes B*L*8*128*2*2, FLOPs B*L*16*128*4
  prefill_dense_full      B = 1, the whole causal prompt: q [1,16,L,128], K/V [1,8,L,128]
                          FLOPs 2*2*(L^2/2)*16*128 (the kernel bench's count)
  prefill_dense_chunk     B = 1, the last 2048 prompt rows after L-2048 cached tokens, causal
                          aligned to the bottom right (row j sees keys 0 .. L-2048+j)

Same names, L, B, byte and FLOP counts as the kernel bench, so deploy/gpu/compare_dense.py can
join the two JSON files. How the 16-to-8 head grouping reaches SDPA is a "variant", recorded:
  gqa        SDPA's own enable_gqa=True (K/V stay at 8 heads)
  packed     decode only: the 2 query heads of a KV group become 2 query rows of that group,
             q viewed as [B,8,2,128] against K/V [B,8,L,128] (exact: a decode row is not masked)
  repeat_kv  prefill only, and only when gqa fails (or --all-variants): K/V repeated to 16 heads
             before timing (the copy is not timed, but the kernel then reads twice the K/V)
The fastest variant that passed its check is the figure compared ("best").

Method (as the kernel bench): random bf16 inputs uniform in [-1, 1]; K/V stored [B, L, 8, 128]
(token-major like our cache) and passed as transposed views; a busy-wait (torch.cuda._sleep)
before every timed call so that host launch time is not measured (the host's time to issue each
call is recorded, and flagged if the busy-wait did not cover it); warm-up calls, then reps
between CUDA events, median reported; prefill reps cut to fit about 1.5 s per case (at least 3);
K/V copies rotated so each case cycles through at least 4x the L2 size. Checks: every variant
against a float32 reference (no TF32) on small odd shapes and at the smallest timed context;
every timed output finite. The CUDA kernels one call launches are recorded (torch.profiler) at the
smallest context, so the record shows which kernel ran.

  python3 deploy/gpu/sdpa_baseline.py --json sdpa-baseline.json --commit $(cat stage/COMMIT)

Writes the JSON and prints a table. Exit status 0; 3 if a check failed; 1 no GPU / no torch.
"""
import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import time

N_HEADS = 16
N_KV_HEADS = 8
D_HEAD = 128
GROUP = N_HEADS // N_KV_HEADS
PREFILL_CHUNK = 2048
KV_BYTES_PER_SLOT = N_KV_HEADS * D_HEAD * 2  # one token's K (or V), all KV heads, bf16
Q_BYTES_PER_ROW = N_HEADS * D_HEAD * 2
SCALE = 1.0 / math.sqrt(D_HEAD)
MAX_PREFILL_COPIES = 16
CASES = ("decode_dense_attention", "prefill_dense_full", "prefill_dense_chunk")


def int_list(text):
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        v = int(item)
        if v not in out:
            out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Time PyTorch SDPA (flash backend by default) at gsa-kernel-bench's dense shapes.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int_list, default=[4096, 16384, 32768, 65536, 131072],
                    help="contexts L, comma-separated (default 4096,16384,32768,65536,131072)")
    ap.add_argument("--batches", type=int_list, default=[1, 4, 8], help="decode batch sizes (default 1,4,8)")
    ap.add_argument("--prefill-max", type=int, default=131072,
                    help="prefill cases for contexts <= this (default 131072; 0: none)")
    ap.add_argument("--backends", default="flash",
                    help="comma-separated SDPA backends: flash, cudnn, efficient, math (default flash)")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per case, median reported (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first, >= 1 (default 3)")
    ap.add_argument("--prefill-budget-ms", type=float, default=1500.0,
                    help="prefill cases cut their reps to about this much GPU time (default 1500)")
    ap.add_argument("--spin-us", type=float, default=500.0,
                    help="busy-wait before each timed call, longer than the host needs to issue one (default 500)")
    ap.add_argument("--rotate-mib", type=int, default=0, help="rotate K/V copies over >= N MiB (default 0: 4 x L2)")
    ap.add_argument("--max-gib", type=float, default=100.0, help="skip cases needing more device memory (default 100)")
    ap.add_argument("--all-variants", action="store_true", help="also time repeat_kv for prefill when gqa works")
    ap.add_argument("--no-profile", action="store_true", help="do not record kernel names with torch.profiler")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--commit", default=os.environ.get("GSA_COMMIT", "unknown"),
                    help="the commit measured (default $GSA_COMMIT or 'unknown')")
    ap.add_argument("--json", default="", help="write the results to this file")
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.reps < 1:
        ap.error("--warmup and --reps must be >= 1")
    for L in args.contexts:
        if L < PREFILL_CHUNK or L % 64 != 0:
            ap.error("--contexts: %d is not a multiple of 64 >= %d" % (L, PREFILL_CHUNK))
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backend_list:
        if b not in ("flash", "cudnn", "efficient", "math"):
            ap.error("--backends: unknown backend '%s'" % b)
    return args


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.bias import causal_lower_right
    except ImportError as e:  # pragma: no cover - the GPU machine has torch
        print("sdpa_baseline: cannot import torch: %s" % e, file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("sdpa_baseline: no CUDA device", file=sys.stderr)
        return 1

    started = time.time()
    dev = torch.device("cuda", args.device)
    torch.cuda.set_device(dev)
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference is plain fp32
    torch.backends.cudnn.allow_tf32 = False
    props = torch.cuda.get_device_properties(dev)
    l2 = int(getattr(props, "L2_cache_size", 0) or (50 << 20))
    rotate_bytes = args.rotate_mib << 20 if args.rotate_mib > 0 else 4 * l2
    bf16 = torch.bfloat16
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    backend_enum = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}

    def rand(*shape):
        return torch.empty(*shape, dtype=bf16, device=dev).uniform_(-1.0, 1.0, generator=gen)

    # Busy-wait calibration: torch.cuda._sleep spins for a number of clock cycles.
    torch.cuda._sleep(1000)
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    torch.cuda._sleep(2000000)
    ev1.record()
    ev1.synchronize()
    cycles_per_us = 2000000.0 / max(ev0.elapsed_time(ev1) * 1000.0, 1e-3)
    spin_cycles = int(args.spin_us * cycles_per_us)

    def time_calls(fn, budget_ms):
        """fn(i) runs call i. Warm-up (the last warm-up call timed, to plan reps under a budget)."""
        it = 0
        for _ in range(args.warmup - 1):
            torch.cuda._sleep(spin_cycles)
            fn(it)
            it += 1
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(spin_cycles)
        s.record()
        fn(it)
        e.record()
        e.synchronize()
        it += 1
        warm_ms = s.elapsed_time(e)
        n = args.reps
        if budget_ms > 0 and warm_ms > 0 and budget_ms / warm_ms < n:
            n = max(min(3, args.reps), int(budget_ms / warm_ms))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        host = []
        for r in range(n):
            torch.cuda._sleep(spin_cycles)
            starts[r].record()
            h0 = time.perf_counter()
            fn(it + r)
            host.append((time.perf_counter() - h0) * 1e6)
            ends[r].record()
        torch.cuda.synchronize()
        samples = [starts[r].elapsed_time(ends[r]) * 1000.0 for r in range(n)]
        # The busy-wait hides the host's time to issue a call only if it is longer than that time.
        return {"time_us": statistics.median(samples), "time_us_min": min(samples),
                "time_us_max": max(samples), "reps": n, "samples_us": samples,
                "host_issue_us": statistics.median(host), "spin_covers_host": max(host) < 0.9 * args.spin_us}

    def reference(q, k, v, causal_offset):
        """float32 attention; q [B,16,Lq,D], k/v [B,8,Lk,D]; causal_offset None (no mask) or the
        diagonal of the bottom-right-aligned mask (row i sees keys j <= i + offset)."""
        qf = q.float()
        kf = k.float().repeat_interleave(GROUP, dim=1)
        vf = v.float().repeat_interleave(GROUP, dim=1)
        s = torch.matmul(qf, kf.transpose(-1, -2)) * SCALE
        if causal_offset is not None:
            lq, lk = s.shape[-2], s.shape[-1]
            keep = torch.ones(lq, lk, dtype=torch.bool, device=dev).tril(diagonal=causal_offset)
            s = s.masked_fill(~keep, float("-inf"))
        p = torch.softmax(s, dim=-1)
        del s
        return torch.matmul(p, vf)

    def kernel_names(fn):
        if args.no_profile:
            return None
        try:
            from torch.profiler import ProfilerActivity, profile
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn(0)
                torch.cuda.synchronize()
            names = set()
            for ev in prof.events():
                dt = getattr(ev, "device_type", None)
                if dt is not None and str(dt).endswith("CUDA"):
                    names.add(ev.name)
            return sorted(names)
        except Exception as e:  # the profiler is a nicety; never fail the run for it
            return ["(profiler failed: %s)" % str(e)[:200]]

    # Inputs of one case -----------------------------------------------------------------------
    def decode_inputs(L, B, copies):
        return [(rand(B, N_HEADS, D_HEAD), rand(B, L, N_KV_HEADS, D_HEAD), rand(B, L, N_KV_HEADS, D_HEAD))
                for _ in range(copies)]

    def decode_fns(inputs, B):
        n = len(inputs)

        def gqa(i):
            q, k, v = inputs[i % n]
            return F.scaled_dot_product_attention(q.view(B, N_HEADS, 1, D_HEAD), k.transpose(1, 2),
                                                  v.transpose(1, 2), enable_gqa=True)

        def packed(i):
            q, k, v = inputs[i % n]
            # Head 2g+j of q is row j of KV group g; the output [B, 8, 2, 128] is read back the same way
            # (reshaped to [B, 16, 1, 128] only by the check: a reshape here could add a copy kernel).
            return F.scaled_dot_product_attention(q.view(B, N_KV_HEADS, GROUP, D_HEAD), k.transpose(1, 2),
                                                  v.transpose(1, 2))

        return {"gqa": gqa, "packed": packed}

    def decode_ref(inputs, B):
        q, k, v = inputs[0]
        return reference(q.view(B, N_HEADS, 1, D_HEAD), k.transpose(1, 2), v.transpose(1, 2), None)

    def prefill_inputs(L, rows, copies):
        # q/out rows of the whole prompt or of the chunk; K/V of the whole prompt.
        return [(rand(1, rows, N_HEADS, D_HEAD), rand(1, L, N_KV_HEADS, D_HEAD), rand(1, L, N_KV_HEADS, D_HEAD))
                for _ in range(copies)]

    def prefill_fns(inputs, L, rows, variants):
        n = len(inputs)
        chunk = rows != L
        mask = causal_lower_right(rows, L) if chunk else None
        fns = {}

        def call(q, k, v, gqa):
            if chunk:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

        if "gqa" in variants:
            def gqa(i):
                q, k, v = inputs[i % n]
                return call(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), True)
            fns["gqa"] = gqa
        if "repeat_kv" in variants:
            rep = [(k.transpose(1, 2).repeat_interleave(GROUP, dim=1), v.transpose(1, 2).repeat_interleave(GROUP, dim=1))
                   for (_, k, v) in inputs]

            def repeat_kv(i):
                q = inputs[i % n][0]
                k16, v16 = rep[i % n]
                return call(q.transpose(1, 2), k16, v16, False)
            fns["repeat_kv"] = repeat_kv
        return fns

    def prefill_ref(inputs, L, rows):
        q, k, v = inputs[0]
        return reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), L - rows)

    def compare(out, ref):
        out = out.float()
        err = (out - ref).abs().max().item()
        scale = ref.abs().max().item()
        finite = bool(torch.isfinite(out).all().item())
        ok = finite and err <= 0.02 * scale + 1e-4
        return {"max_abs_err": err, "max_abs_ref": scale, "finite": finite, "ok": ok}

    def output_ok(out):
        o = out.float()
        finite = bool(torch.isfinite(o).all().item())
        zeros = int((o == 0).sum().item())
        if not finite:
            return "non-finite outputs"
        if zeros * 100 > o.numel():
            return "%d of %d outputs are exactly zero" % (zeros, o.numel())
        return ""

    def free_bytes():
        free, _ = torch.cuda.mem_get_info(dev)
        return free

    def flops_bytes(case, L, B):
        if case == "decode_dense_attention":
            return B * L * N_HEADS * D_HEAD * 4.0, B * L * 2.0 * KV_BYTES_PER_SLOT
        if case == "prefill_dense_full":
            return (2.0 * 2.0 * (L * float(L) / 2.0) * N_HEADS * D_HEAD,
                    L * (2.0 * Q_BYTES_PER_ROW + 2.0 * KV_BYTES_PER_SLOT))
        C = PREFILL_CHUNK
        c0 = L - C
        pairs = float(C) * c0 + C * (C + 1) / 2.0
        return pairs * N_HEADS * D_HEAD * 4.0, C * 2.0 * Q_BYTES_PER_ROW + L * 2.0 * KV_BYTES_PER_SLOT

    records, failures, checks, skipped = [], [], [], []
    check_ok = {}  # (case, backend, variant) -> bool

    def run_check(what, case, backend, variant, fn, ref_fn, shape):
        try:
            with sdpa_kernel(backend_enum[backend]):
                out = fn(0)
            torch.cuda.synchronize()
            ref = ref_fn()
            c = compare(out.reshape(ref.shape), ref)
        except Exception as e:  # the backend cannot run this variant: unsupported, not wrong
            c = {"ok": False, "unsupported": True, "error": "%s: %s" % (type(e).__name__, str(e)[:300])}
            torch.cuda.synchronize()
        c.update({"what": what, "case": case, "backend": backend, "variant": variant, "shape": shape})
        checks.append(c)
        key = (case, backend, variant)
        check_ok[key] = check_ok.get(key, True) and c["ok"]
        status = "ok" if c["ok"] else ("unsupported" if c.get("unsupported") else "FAILED")
        detail = c.get("error") or "max|err| %.3g of max|ref| %.3g" % (c["max_abs_err"], c["max_abs_ref"])
        print("  check %-22s %-9s %-9s %-34s %s (%s)" % (case, backend, variant, what, status, detail), flush=True)
        return c["ok"]

    def add_record(case, L, B, backend, variant, fn, budget_ms, first_context):
        flops, nbytes = flops_bytes(case, L, B)
        try:
            with sdpa_kernel(backend_enum[backend]):
                t = time_calls(fn, budget_ms)
                last = fn(0)
                torch.cuda.synchronize()
                problem = output_ok(last)
                kernels = kernel_names(fn) if first_context else None
        except Exception as e:
            failures.append({"case": case, "L": L, "B": B, "backend": backend, "variant": variant,
                             "error": "%s: %s" % (type(e).__name__, str(e)[:300])})
            print("  %-24s L=%-7d B=%-2d %-9s %-9s failed: %s" % (case, L, B, backend, variant, failures[-1]["error"]),
                  flush=True)
            torch.cuda.synchronize()
            return
        secs = t["time_us"] * 1e-6
        rec = {"case": case, "group": "decode" if case.startswith("decode") else "prefill", "L": L, "B": B,
               "backend": backend, "variant": variant, "time_us": t["time_us"], "time_us_min": t["time_us_min"],
               "time_us_max": t["time_us_max"], "reps": t["reps"], "bytes": nbytes, "flops": flops,
               "gbps": nbytes / secs / 1e9, "tflops": flops / secs / 1e12,
               "output_check": problem or "ok", "host_issue_us": t["host_issue_us"],
               "spin_covers_host": t["spin_covers_host"], "samples_us": t["samples_us"]}
        if case == "prefill_dense_chunk":
            rec["rows"] = PREFILL_CHUNK
            rec["chunk_first_position"] = L - PREFILL_CHUNK
        elif case == "prefill_dense_full":
            rec["rows"] = L
        else:
            rec["rows"] = B
        if kernels is not None:
            rec["cuda_kernels"] = kernels
        records.append(rec)
        print("  %-24s L=%-7d B=%-2d %-9s %-9s %10.2f us  %8.1f GB/s %7.1f TFLOP/s  (%d reps, host %.0f us)%s%s" % (
            case, L, B, backend, variant, t["time_us"], rec["gbps"], rec["tflops"], t["reps"], t["host_issue_us"],
            "" if t["spin_covers_host"] else "  HOST SLOWER THAN THE BUSY-WAIT: raise --spin-us",
            "" if not problem else "  OUTPUT CHECK FAILED: " + problem), flush=True)

    print("sdpa_baseline: %s, %d SMs, %.1f GiB, L2 %.1f MiB; torch %s (CUDA %s, cuDNN %s); commit %s" % (
        props.name, props.multi_processor_count, props.total_memory / 2**30, l2 / 2**20, torch.__version__,
        torch.version.cuda, torch.backends.cudnn.version(), args.commit), flush=True)
    print("rotating K/V over >= %.0f MiB; spin %.0f us (%.0f cycles/us); %d warm-up + %d timed calls per case" % (
        rotate_bytes / 2**20, args.spin_us, cycles_per_us, args.warmup, args.reps), flush=True)

    def measure_backend(backend):
        # Small odd-shaped checks of every variant --------------------------------------------------
        print("[%s: checks, small shapes]" % backend, flush=True)
        B, L = 3, 1000
        ins = [(rand(B, N_HEADS, D_HEAD) * 3, rand(B, L, N_KV_HEADS, D_HEAD), rand(B, L, N_KV_HEADS, D_HEAD))]
        for variant, fn in decode_fns(ins, B).items():
            run_check("small B=3 L=1000", "decode_dense_attention", backend, variant, fn,
                      lambda: decode_ref(ins, B), [B, L])
        for case, L, rows in (("prefill_dense_full", 704, 704), ("prefill_dense_chunk", 1000, 232)):
            pins = [(rand(1, rows, N_HEADS, D_HEAD) * 3, rand(1, L, N_KV_HEADS, D_HEAD), rand(1, L, N_KV_HEADS, D_HEAD))]
            for variant, fn in prefill_fns(pins, L, rows, ("gqa", "repeat_kv")).items():
                run_check("small L=%d rows=%d" % (L, rows), case, backend, variant, fn,
                          lambda: prefill_ref(pins, L, rows), [1, L, rows])
        del ins, pins
        torch.cuda.empty_cache()

        # Decode -------------------------------------------------------------------------------------
        first_L = min(args.contexts)
        for L in args.contexts:
            for B in args.batches:
                kv_bytes = 2 * B * L * KV_BYTES_PER_SLOT
                copies = max(1, -(-rotate_bytes // kv_bytes))
                need = copies * (kv_bytes + B * Q_BYTES_PER_ROW) + 64 * B * Q_BYTES_PER_ROW
                why = fits(need)
                if why:
                    skipped.append({"case": "decode_dense_attention", "L": L, "B": B, "backend": backend,
                                    "reason": why})
                    print("[%s decode L=%d B=%d] skipped: %s" % (backend, L, B, why), flush=True)
                    continue
                print("[%s decode L=%d B=%d] %d K/V copies, %.2f GiB" % (backend, L, B, copies, need / 2**30),
                      flush=True)
                ins = decode_inputs(L, B, copies)
                for variant, fn in decode_fns(ins, B).items():
                    if L == first_L:
                        run_check("timed shape B=%d L=%d" % (B, L), "decode_dense_attention", backend, variant, fn,
                                  lambda: decode_ref(ins, B), [B, L])
                    add_record("decode_dense_attention", L, B, backend, variant, fn, 0, L == first_L)
                del ins
                torch.cuda.empty_cache()

        # Prefill ------------------------------------------------------------------------------------
        for L in prefill_contexts:
            for case, rows in (("prefill_dense_full", L), ("prefill_dense_chunk", PREFILL_CHUNK)):
                kv_bytes = 2 * L * KV_BYTES_PER_SLOT
                copies = max(1, min(MAX_PREFILL_COPIES, -(-rotate_bytes // kv_bytes)))
                # inputs, room for repeat_kv's copies and the output, and the reference at the first L
                need = copies * (2 * kv_bytes + rows * Q_BYTES_PER_ROW) + 2 * rows * Q_BYTES_PER_ROW
                if L == first_P:
                    need += 4 * N_HEADS * rows * L * 4
                why = fits(need)
                if why:
                    skipped.append({"case": case, "L": L, "B": 1, "backend": backend, "reason": why})
                    print("[%s %s L=%d] skipped: %s" % (backend, case, L, why), flush=True)
                    continue
                print("[%s %s L=%d] %d K/V copies" % (backend, case, L, copies), flush=True)
                ins = prefill_inputs(L, rows, copies)
                variants = ["gqa", "repeat_kv"] if args.all_variants else ["gqa"]
                if not check_ok.get((case, backend, "gqa"), False) and "repeat_kv" not in variants:
                    variants.append("repeat_kv")  # gqa failed its small check: fall back
                for variant, fn in prefill_fns(ins, L, rows, variants).items():
                    if L == first_P:
                        run_check("timed shape L=%d rows=%d" % (L, rows), case, backend, variant, fn,
                                  lambda: prefill_ref(ins, L, rows), [1, L, rows])
                        torch.cuda.empty_cache()
                    add_record(case, L, 1, backend, variant, fn, args.prefill_budget_ms, L == first_P)
                del ins
                torch.cuda.empty_cache()

    def fits(need):
        if need > args.max_gib * 2**30:
            return "needs %.2f GiB, over --max-gib" % (need / 2**30)
        if need + 2**30 > free_bytes():
            return "needs %.2f GiB (+1 GiB margin), %.2f GiB free" % (need / 2**30, free_bytes() / 2**30)
        return ""

    def best_of():
        """The fastest variant per (case, L, B, backend) among those whose checks passed."""
        best = {}
        for r in records:
            if r["output_check"] != "ok" or not check_ok.get((r["case"], r["backend"], r["variant"]), False):
                continue
            key = (r["case"], r["L"], r["B"], r["backend"])
            if key not in best or r["time_us"] < best[key]["time_us"]:
                best[key] = r
        return [{"case": r["case"], "L": r["L"], "B": r["B"], "backend": r["backend"], "variant": r["variant"],
                 "time_us": r["time_us"], "gbps": r["gbps"], "tflops": r["tflops"]} for r in best.values()]

    def failed_checks():
        # A wrong result fails the run; a variant a backend cannot run is only recorded (unsupported).
        return (sum(1 for c in checks if not c["ok"] and not c.get("unsupported")) +
                sum(1 for r in records if r["output_check"] != "ok"))

    def write_json(done):
        if not args.json:
            return
        n_failed = failed_checks()
        status = "ok" if n_failed == 0 else "%d checks failed" % n_failed
        if done != args.backend_list:
            status = "partial (backends done: %s); %s" % (",".join(done) or "none", status)
        out = {
            "tool": "sdpa_baseline.py",
            "what": "PyTorch scaled_dot_product_attention at gsa-kernel-bench's dense decode and prefill shapes "
                    "(one gsa-1.7b layer), backend forced with torch.nn.attention.sdpa_kernel",
            "card": props.name,
            "sm_count": props.multi_processor_count,
            "compute_capability": "%d.%d" % (props.major, props.minor),
            "memory_bytes": props.total_memory,
            "l2_bytes": l2,
            "torch_version": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "python": sys.version.split()[0],
            "commit": args.commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command_line": " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv)),
            "settings": {"contexts": args.contexts, "batches": args.batches, "prefill_max": args.prefill_max,
                         "backends": args.backend_list, "reps": args.reps, "warmup": args.warmup,
                         "prefill_budget_ms": args.prefill_budget_ms, "spin_us": args.spin_us,
                         "spin_cycles": spin_cycles, "rotate_bytes": rotate_bytes, "seed": args.seed,
                         "all_variants": args.all_variants},
            "shapes": {"n_heads": N_HEADS, "n_kv_heads": N_KV_HEADS, "d_head": D_HEAD, "dtype": "bf16",
                       "scale": SCALE, "prefill_chunk": PREFILL_CHUNK,
                       "kv_layout": "[B, L, 8, 128] (token-major), passed as transposed [B, 8, L, 128] views",
                       "output_gate": "none (ours applies a sigmoid gate)"},
            "variants": {
                "gqa": "enable_gqa=True: K/V at 8 heads",
                "packed": "decode: q viewed [B, 8, 2, 128] (the 2 query heads of a KV group as 2 query rows), "
                          "no mask",
                "repeat_kv": "prefill fallback: K/V repeated to 16 heads before timing (untimed copy; the kernel "
                             "reads 2x K/V)",
                "chunk_mask": "prefill_dense_chunk: attn_mask=torch.nn.attention.bias.causal_lower_right(2048, L)",
            },
            "method": "median of timed calls between CUDA events after warm-up; torch.cuda._sleep busy-wait before "
                      "each call keeps host launch time out; random bf16 inputs uniform in [-1, 1]; K/V copies "
                      "rotated over at least rotate_bytes (prefill: at most 16 copies); prefill reps cut to "
                      "~prefill_budget_ms; every variant checked against a float32 reference (no TF32) on small "
                      "shapes and at the smallest timed context; the fastest variant whose checks passed is 'best'",
            "status": status,
            "wall_seconds": round(time.time() - started, 1),
            "records": records,
            "best": best_of(),
            "failures": failures,
            "skipped": skipped,
            "checks_failed": n_failed,
            "unsupported": sorted({"%s/%s/%s" % (c["case"], c["backend"], c["variant"])
                                   for c in checks if c.get("unsupported")}),
            "checks": checks,
        }
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
        print("wrote %s (%s)" % (args.json, status), flush=True)

    prefill_contexts = [L for L in args.contexts if L <= args.prefill_max]
    first_P = min(prefill_contexts) if prefill_contexts else 0
    done = []
    # One backend at a time, the record written after each: a backend that brings the process down
    # (or a time limit) leaves the earlier backends' figures on disk.
    for backend in args.backend_list:
        measure_backend(backend)
        done.append(backend)
        write_json(done)

    best_list = best_of()
    for c in CASES:
        if c.startswith("prefill") and not prefill_contexts:
            continue
        for b in args.backend_list:
            if not any(r["case"] == c and r["backend"] == b for r in best_list):
                print("sdpa_baseline: no checked figure for %s with backend %s" % (c, b), file=sys.stderr)
    n_failed = failed_checks()
    print("\n%-24s %7s %2s %-9s %-9s %11s %9s %8s" % ("case", "L", "B", "backend", "variant", "median_us", "GB/s",
                                                       "TFLOP/s"))
    for r in sorted(best_list, key=lambda r: (CASES.index(r["case"]), r["L"], r["B"], r["backend"])):
        print("%-24s %7d %2d %-9s %-9s %11.2f %9.1f %8.1f" % (r["case"], r["L"], r["B"], r["backend"], r["variant"],
                                                            r["time_us"], r["gbps"], r["tflops"]))
    print("\ncard %s; torch %s; %.0f s; %s" % (props.name, torch.__version__, time.time() - started,
                                              "ok" if n_failed == 0 else "%d checks failed" % n_failed))
    return 0 if n_failed == 0 else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
