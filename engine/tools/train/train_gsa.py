#!/usr/bin/env python3
"""Trains a small GSA model (or one of the paper's comparison rows) on the King James Bible and
saves it in the reference checkpoint format that gsa-server loads.

The forward pass is MODEL.md's function, written once (`forward` below) and used for training,
for evaluation and for the golden check, so what trains is what the server runs:
  RMSNorm in fp32; fused-free projections; value gate (G2) before RoPE; rotate-half RoPE with
  fp32 angles; compact indexer keys; I(t,s) = sum_j wI_j * phi(qI_j.kI_s / sqrt(d_I) + bI_j);
  top-k_t with MODEL.md's tie rule (equal scores: the later position wins); causal variance-
  adaptive k; softmax attention over the selected positions; output gate (G1); SwiGLU MLP.

Training recipe (the same for every row; `--row` picks the variant of MODEL.md's table):
  gsa       sigmoid indexer, value and output gates, top-k selection
  sparse    relu indexer, no gates, top-k selection (DSA-style)
  gated     gates on, dense attention (indexer trained but unused)
  baseline  no gates, dense attention
  The language-model loss never reaches the indexer (top-k is not differentiable). The indexer
  learns, as in DeepSeek's DSA, from a KL term towards the model's own dense attention
  distribution (summed over heads, detached), from detached layer inputs, so it cannot change
  what the model computes. Sparse rows train dense for the first --dense-warmup share of steps
  while their indexer catches up, then with top-k selection. bf16 autocast for products; the
  indexer in fp32; evaluation in fp32 without TF32.

Modes:
  train_gsa.py --data DIR --row gsa --out DIR [--steps N ...]   train, evaluate, save
  train_gsa.py --check-golden CASE_DIR [CASE_DIR ...]           forward in float64 vs golden
  train_gsa.py --eval MODEL_DIR --data DIR                      held-out perplexity of a checkpoint

Needs PyTorch (>= 1.13) and numpy; no other package (safetensors is read and written here).
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# safetensors (the format is a little-endian u64 header size, a JSON header, then raw tensors)

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    out = {}
    base = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        raw = bytearray(blob[base + b:base + e])
        t = torch.frombuffer(raw, dtype=dtype) if e > b else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def write_safetensors(path, tensors, metadata=None):
    header, chunks, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for c in chunks:
            f.write(c)


# ----------------------------------------------------------------------------------------------
# config

DEFAULTS = dict(d_model=4096, n_heads=32, n_kv_heads=8, d_head=None, n_layers=32, d_ffn=11008,
                vocab_size=128256, d_indexer=64, n_indexer_heads=4, indexer_activation="sigmoid",
                k_base=2048, k_min=256, k_max=4096, use_adaptive_k=True, adaptive_k_temperature=1.0,
                adaptive_k_method="variance", use_value_gate=True, use_output_gate=True,
                gate_activation="sigmoid", rope_base=10000.0, rope_scaling=None,
                max_position_embeddings=131072, norm_eps=1e-5, tie_word_embeddings=False)

# The default model's shape: ~18M parameters, 36 MB in bf16 with tied embeddings.
SMALL = dict(d_model=384, n_heads=6, n_kv_heads=3, d_head=64, n_layers=8, d_ffn=1024,
             vocab_size=8000, d_indexer=64, n_indexer_heads=4, k_base=256, k_min=64, k_max=512,
             use_adaptive_k=True, adaptive_k_method="variance", adaptive_k_temperature=1.0,
             gate_activation="sigmoid", rope_base=10000.0, rope_scaling=None,
             max_position_embeddings=2048, norm_eps=1e-5, tie_word_embeddings=True,
             bos_token_id=1, eos_token_id=2)

ROWS = {
    "gsa": dict(indexer_activation="sigmoid", use_value_gate=True, use_output_gate=True, sparse=True),
    "sparse": dict(indexer_activation="relu", use_value_gate=False, use_output_gate=False, sparse=True),
    "gated": dict(indexer_activation="sigmoid", use_value_gate=True, use_output_gate=True, sparse=False),
    "baseline": dict(indexer_activation="sigmoid", use_value_gate=False, use_output_gate=False,
                     sparse=False),
}


def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k in DEFAULTS or k in ("bos_token_id", "eos_token_id")})
    if cfg["d_head"] is None:
        cfg["d_head"] = cfg["d_model"] // cfg["n_heads"]
    if cfg["rope_scaling"] not in (None, {}) and cfg["rope_scaling"].get("type") not in (None, "dynamic_ntk"):
        raise SystemExit("train_gsa: rope_scaling other than none is not implemented here")
    if cfg["use_adaptive_k"] and cfg["adaptive_k_method"] != "variance":
        raise SystemExit("train_gsa: only the variance adaptive-k method is implemented here")
    return cfg


# ----------------------------------------------------------------------------------------------
# parameters


def param_specs(cfg):
    d, H, Hk, dh = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"]
    HI, dI, V, Fd = cfg["n_indexer_heads"], cfg["d_indexer"], cfg["vocab_size"], cfg["d_ffn"]
    s = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = (V, d)
    for L in range(cfg["n_layers"]):
        p = f"model.layers.{L}."
        a = p + "self_attn."
        s.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                  a + "q_proj.weight": (H * dh, d), a + "k_proj.weight": (Hk * dh, d),
                  a + "v_proj.weight": (Hk * dh, d), a + "o_proj.weight": (d, H * dh),
                  a + "indexer.q_proj.weight": (HI * dI, d), a + "indexer.k_proj.weight": (dI, d),
                  a + "indexer.weight_proj.weight": (HI, d), a + "indexer.weight_proj.bias": (HI,),
                  a + "indexer.bias": (HI,),
                  p + "mlp.gate_proj.weight": (Fd, d), p + "mlp.up_proj.weight": (Fd, d),
                  p + "mlp.down_proj.weight": (d, Fd)})
        if cfg["use_value_gate"]:
            s[a + "value_gate.gate_proj.weight"] = (Hk * dh, d)
            s[a + "value_gate.gate_proj.bias"] = (Hk * dh,)
        if cfg["use_output_gate"]:
            s[a + "output_gate.gate_proj.weight"] = (H * dh, d)
            s[a + "output_gate.gate_proj.bias"] = (H * dh,)
    return s


def init_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in param_specs(cfg).items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = torch.ones(shape)
        elif name.endswith("gate_proj.bias"):
            t = torch.full(shape, 0.5)  # gates start mostly open, as the reference's gate_bias_init
        elif name.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            std = 0.02
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                std = 0.02 / math.sqrt(2 * cfg["n_layers"])
            t = torch.randn(shape, generator=g) * std
        out[name] = t
    return out


# ----------------------------------------------------------------------------------------------
# the function (MODEL.md)


def rms_norm(x, w, eps):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * w.float()).to(x.dtype) if x.dtype != torch.float64 else y * w.double()


def gate_act(z, kind):
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "tanh":
        return (torch.tanh(z) + 1) / 2
    if kind == "silu":
        return F.silu(z)
    raise SystemExit(f"train_gsa: unknown gate_activation {kind}")


def rope_tables(cfg, T, device, dtype):
    dh = cfg["d_head"]
    inv = 1.0 / (cfg["rope_base"] ** (torch.arange(0, dh, 2, dtype=torch.float32, device=device) / dh))
    ang = torch.arange(T, dtype=torch.float32, device=device)[:, None] * inv[None, :]  # fp32 angles
    ang = torch.cat([ang, ang], -1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):  # x [B, heads, T, dh]
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def select(I, cfg, causal):
    """I [B,T,T] indexer scores (future positions arbitrary). Returns the bool mask of kept keys
    [B,T,T] and k_t [B,T]: the k_t largest past scores, equal scores resolved to the later position."""
    B, T, _ = I.shape
    t = torch.arange(T, device=I.device)
    n = (t + 1).to(I.dtype)
    if cfg["use_adaptive_k"]:
        Iz = I.masked_fill(~causal, 0)
        mean = Iz.sum(-1) / n
        var = ((I - mean[..., None]).masked_fill(~causal, 0) ** 2).sum(-1) / n
        ref = var.cumsum(-1) / n
        k = torch.floor(cfg["k_base"] * (0.5 + 1.0 / (1.0 + cfg["adaptive_k_temperature"] * var / (ref + 1e-8))))
        k = k.clamp(cfg["k_min"], cfg["k_max"]).long()
    else:
        k = torch.full((B, T), cfg["k_base"], dtype=torch.long, device=I.device)
    k = torch.minimum(k, (t + 1)[None, :])
    # Stable descending sort of the reversed row: among equal scores the later position comes first.
    scores = torch.nan_to_num(I, nan=-math.inf).masked_fill(~causal, -math.inf)
    rev = scores.flip(-1)
    order = torch.sort(rev, dim=-1, descending=True, stable=True).indices
    keep_sorted = torch.arange(T, device=I.device)[None, None, :] < k[..., None]
    keep = torch.zeros(B, T, T, dtype=torch.bool, device=I.device)
    keep.scatter_(-1, order, keep_sorted)
    return keep.flip(-1), k


def forward(params, cfg, ids, sparse, want_selected=False, indexer_loss=False, dropout=0.0):
    """ids [B,T] → logits [B,T,V]. With indexer_loss: also the summed KL of the indexers."""
    B, T = ids.shape
    d, H, Hk, dh = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"]
    HI, dI = cfg["n_indexer_heads"], cfg["d_indexer"]
    rep = H // Hk
    emb = params["model.embed_tokens.weight"]
    dtype = emb.dtype
    h = emb[ids]
    cos, sin = rope_tables(cfg, T, ids.device, dtype if dtype == torch.float64 else torch.float32)
    causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
    selected, kl_total = [], torch.zeros((), device=ids.device)
    for L in range(cfg["n_layers"]):
        p = f"model.layers.{L}."
        a = p + "self_attn."
        x = rms_norm(h, params[p + "input_layernorm.weight"], cfg["norm_eps"])
        q = (x @ params[a + "q_proj.weight"].t()).view(B, T, H, dh).transpose(1, 2)
        k = (x @ params[a + "k_proj.weight"].t()).view(B, T, Hk, dh).transpose(1, 2)
        v = x @ params[a + "v_proj.weight"].t()
        if cfg["use_value_gate"]:
            v = v * gate_act(x @ params[a + "value_gate.gate_proj.weight"].t()
                             + params[a + "value_gate.gate_proj.bias"], cfg["gate_activation"])
        v = v.view(B, T, Hk, dh).transpose(1, 2)
        q = apply_rope(q, cos.to(q.dtype), sin.to(q.dtype))
        k = apply_rope(k, cos.to(k.dtype), sin.to(k.dtype))
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s_raw = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # [B,H,T,T]
        need_indexer = sparse or indexer_loss or want_selected
        if need_indexer:
            # The indexer, in fp32 (fp64 in the golden check), from detached inputs when training.
            ix = x.detach().float() if x.dtype != torch.float64 else x
            with torch.autocast(device_type=ids.device.type, enabled=False):
                kI = ix @ params[a + "indexer.k_proj.weight"].to(ix.dtype).t()  # [B,T,dI]
                qI = (ix @ params[a + "indexer.q_proj.weight"].to(ix.dtype).t()).view(B, T, HI, dI)
                wI = torch.sigmoid(ix @ params[a + "indexer.weight_proj.weight"].to(ix.dtype).t()
                                   + params[a + "indexer.weight_proj.bias"].to(ix.dtype))  # [B,T,HI]
                logit = torch.einsum("bthd,bsd->bhts", qI, kI) / math.sqrt(dI)
                logit = logit + params[a + "indexer.bias"].to(ix.dtype)[None, :, None, None]
                phi = torch.sigmoid(logit) if cfg["indexer_activation"] == "sigmoid" else F.relu(logit)
                I = torch.einsum("bht,bhts->bts", wI.transpose(1, 2), phi)  # [B,T,T]
        if sparse:
            with torch.no_grad():
                keep, kt = select(I.detach(), cfg, causal)
            allowed = keep & causal
            if want_selected:
                selected.append((keep, kt))
        else:
            allowed = causal[None].expand(B, T, T)
        s = s_raw.masked_fill(~allowed[:, None], -math.inf)
        pr = torch.softmax(s.float(), dim=-1).to(v.dtype)
        if indexer_loss:
            with torch.no_grad():
                dense = s_raw.float().masked_fill(~causal, -math.inf)
                target = torch.softmax(dense, -1).mean(1)  # [B,T,T], rows sum to 1
            with torch.autocast(device_type=ids.device.type, enabled=False):
                logq = torch.log_softmax(I.masked_fill(~causal, -math.inf), -1)
                kl = (target * (torch.log(target.clamp_min(1e-30)) - logq.masked_fill(~causal, 0)))
                kl_total = kl_total + kl.masked_fill(~causal, 0).sum(-1).mean()
        o = (pr @ v).transpose(1, 2).reshape(B, T, H * dh)
        if cfg["use_output_gate"]:
            o = o * gate_act(x @ params[a + "output_gate.gate_proj.weight"].t()
                             + params[a + "output_gate.gate_proj.bias"], cfg["gate_activation"])
        o = o @ params[a + "o_proj.weight"].t()
        if dropout > 0:
            o = F.dropout(o, dropout, True)
        h = h + o
        y = rms_norm(h, params[p + "post_attention_layernorm.weight"], cfg["norm_eps"])
        m = (F.silu(y @ params[p + "mlp.gate_proj.weight"].t()) * (y @ params[p + "mlp.up_proj.weight"].t())) \
            @ params[p + "mlp.down_proj.weight"].t()
        if dropout > 0:
            m = F.dropout(m, dropout, True)
        h = h + m
    h = rms_norm(h, params["model.norm.weight"], cfg["norm_eps"])
    lm = params["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    logits = h @ lm.t()
    return logits, selected, kl_total


# ----------------------------------------------------------------------------------------------
# golden check


def check_golden(case_dir):
    cfg = load_config(case_dir)
    params = {k: v.double() for k, v in read_safetensors(os.path.join(case_dir, "model.safetensors")).items()}
    expected = set(param_specs(cfg))
    if set(params) - expected - {"lm_head.weight"} or expected - set(params):
        raise SystemExit(f"{case_dir}: tensor names differ from MODEL.md's: "
                         f"missing {sorted(expected - set(params))}, extra {sorted(set(params) - expected)}")
    gold = read_safetensors(os.path.join(case_dir, "golden.safetensors"))
    ids = gold["input_ids"].long()[None]
    with torch.no_grad():
        logits, selected, _ = forward(params, cfg, ids, sparse=True, want_selected=True)
    dmax = (logits[0] - gold["logits"].double()).abs().max().item()
    sel_ok, sel_total = 0, 0
    T = ids.shape[1]
    for L, (keep, kt) in enumerate(selected):
        g = gold[f"layer{L}.selected"]
        for t in range(T):
            mine = set(torch.nonzero(keep[0, t]).flatten().tolist())
            theirs = set(x for x in g[t].tolist() if x >= 0)
            sel_ok += mine == theirs
            sel_total += 1
    ok = dmax <= 1e-4 and sel_ok == sel_total
    print(f"golden {os.path.basename(case_dir.rstrip('/'))}: logits max|d| {dmax:.3g} (limit 1e-4), "
          f"selected sets equal {sel_ok}/{sel_total}: {'PASS' if ok else 'FAIL'}")
    return ok


def make_fixture(model_dir, data, out):
    """A parity fixture for the server's tests: this script's forward pass in float64 on the
    checkpoint as saved. input_ids = BOS + about 600 held-out tokens (long enough that top-k keeps
    fewer than all positions), logits at some positions, and 24 greedy tokens after
    BOS + "In the beginning"."""
    cfg = load_config(model_dir)
    params = {k: v.double() for k, v in read_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    held_ids, held_starts = load_split(data, "heldout")
    ids = torch.tensor(eval_windows(held_ids, held_starts, 600, cfg["bos_token_id"])[0])[None]
    with torch.no_grad():
        logits, selected, _ = forward(params, cfg, ids, sparse=True, want_selected=True)
    T = ids.shape[1]
    positions = sorted(set(list(range(0, T, 40)) + list(range(T - 8, T))))
    kept = [float(kt[0].double().mean()) for _, kt in selected]
    enc = subprocess.run(["spm_encode", f"--model={model_dir}/tokenizer.model", "--output_format=id"],
                         input="In the beginning\n", capture_output=True, text=True, check=True).stdout
    prompt = [cfg["bos_token_id"]] + [int(t) for t in enc.split()]
    seq, margins = list(prompt), []
    with torch.no_grad():
        for _ in range(24):
            lg, _, _ = forward(params, cfg, torch.tensor(seq)[None], sparse=True)
            top = torch.topk(lg[0, -1], 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
    write_safetensors(out, {"input_ids": ids[0].long(), "positions": torch.tensor(positions).long(),
                            "logits": logits[0, positions].float(),
                            "greedy_prompt": torch.tensor(prompt).long(),
                            "greedy_tokens": torch.tensor(seq[len(prompt):]).long()},
                      {"model": model_dir, "made_by": "train_gsa.py --make-fixture (float64)",
                       "mean_k_per_layer": json.dumps([round(k, 2) for k in kept]),
                       "min_greedy_margin": min(margins)})
    print(json.dumps({"tokens": T, "positions": len(positions), "mean_k_per_layer": kept,
                      "greedy": seq[len(prompt):], "min_greedy_margin": min(margins)}))


# ----------------------------------------------------------------------------------------------
# data


def load_split(data, split):
    ids = np.fromfile(os.path.join(data, f"{split}.ids"), dtype="<u2").astype(np.int64)
    starts = np.fromfile(os.path.join(data, f"{split}.starts"), dtype="<u4").astype(np.int64)
    return ids, starts


def eval_windows(ids, starts, T, bos):
    """Held-out windows: BOS + whole consecutive verses, at most T tokens each; every token scored."""
    out, i = [], 0
    bounds = list(starts) + [len(ids)]
    while i < len(starts):
        j = i + 1
        while j < len(starts) and bounds[j + 1] - bounds[i] <= T - 1:
            j += 1
        out.append(np.concatenate([[bos], ids[bounds[i]:bounds[j]]])[:T])
        i = j
    return out


@torch.no_grad()
def held_out_loss(params, cfg, windows, sparse, device):
    prev = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    fp = {k: v.float() for k, v in params.items()}
    total, count = 0.0, 0
    for w in windows:
        x = torch.tensor(w, device=device)[None]
        logits, _, _ = forward(fp, cfg, x[:, :-1], sparse)
        total += F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = prev
    return total / count, count


# ----------------------------------------------------------------------------------------------
# training


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def train(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    row = ROWS[args.row]
    cfg = dict(DEFAULTS)
    cfg.update(SMALL)
    cfg.update({k: v for k, v in row.items() if k != "sparse"})
    sparse = row["sparse"]
    T = args.seq_len
    train_ids, train_starts = load_split(args.data, "train")
    held_ids, held_starts = load_split(args.data, "heldout")
    windows = eval_windows(held_ids, held_starts, T, cfg["bos_token_id"])
    if args.max_eval_windows:
        windows = windows[:args.max_eval_windows]
    starts = train_starts[train_starts + T <= len(train_ids)]
    params = {k: v.to(device).requires_grad_(True) for k, v in init_params(cfg, args.seed).items()}
    idx_names = [n for n in params if ".indexer." in n]
    lm_names = [n for n in params if ".indexer." not in n]
    decay = [params[n] for n in lm_names if params[n].dim() == 2]
    no_decay = [params[n] for n in lm_names if params[n].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0},
                             {"params": [params[n] for n in idx_names], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    train_indexer = sparse  # dense rows never use their indexer; it stays at its initialisation
    gen = np.random.default_rng(args.seed)
    log, best = [], None
    t0 = time.time()
    n_params = sum(p.numel() for p in params.values())
    print(f"row {args.row}: {n_params / 1e6:.2f}M parameters, {len(train_ids)} train tokens, "
          f"{sum(len(w) - 1 for w in windows)} held-out tokens in {len(windows)} windows", flush=True)
    budget_s = args.max_minutes * 60
    step = 0
    while True:
        step += 1
        # Progress through the budget: --steps or --max-minutes, whichever runs out first, so the
        # cosine schedule always completes.
        progress = min(1.0, max(step / args.steps, (time.time() - t0) / budget_s))
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        use_sparse = sparse and progress > args.dense_warmup
        pick = gen.choice(starts, size=args.batch, replace=False)
        batch = np.stack([np.concatenate([[cfg["bos_token_id"]], train_ids[s:s + T]]) for s in pick])
        x = torch.from_numpy(batch).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, _, kl = forward(params, cfg, x[:, :-1], use_sparse,
                                    indexer_loss=train_indexer, dropout=args.dropout)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        (loss + kl / cfg["n_layers"]).backward()
        torch.nn.utils.clip_grad_norm_([params[n] for n in lm_names], 1.0)
        if train_indexer:
            torch.nn.utils.clip_grad_norm_([params[n] for n in idx_names], 1.0)
        opt.step()
        if step % args.log_every == 0 or step == 1:
            print(f"step {step} loss {loss.item():.4f} indexer_kl {kl.item() / cfg['n_layers']:.4f} "
                  f"lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        last = progress >= 1.0
        if step % args.eval_every == 0 or last:
            hl, _ = held_out_loss(params, cfg, windows, sparse, device)
            log.append({"step": step, "train_loss": loss.item(), "held_out_loss": hl,
                        "seconds": time.time() - t0})
            print(f"eval step {step}: held-out loss {hl:.4f} ppl {math.exp(hl):.2f}", flush=True)
            if best is None or hl < best[0]:
                best = (hl, step, {k: v.detach().to(torch.bfloat16).cpu().clone() for k, v in params.items()})
        if last:
            if step < args.steps:
                print(f"stopped at step {step} of {args.steps}: --max-minutes {args.max_minutes} reached",
                      flush=True)
            break
    seconds = time.time() - t0
    # Keep the best evaluation's weights, rounded to bf16 as shipped; re-evaluate them as saved.
    hl_best, best_step, saved = best
    held_bf16, n_tokens = held_out_loss({k: v.to(device) for k, v in saved.items()}, cfg, windows, sparse, device)
    os.makedirs(args.out, exist_ok=True)
    config = {k: cfg[k] for k in cfg}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    write_safetensors(os.path.join(args.out, "model.safetensors"), saved,
                      {"format": "pt", "trained_by": "engine/tools/train/train_gsa.py", "row": args.row})
    shutil.copy(os.path.join(args.data, "tokenizer.model"), os.path.join(args.out, "tokenizer.model"))
    record = {"row": args.row, "attention": "top-k" if sparse else "dense", "parameters": n_params,
              "held_out_loss": held_bf16, "held_out_ppl": math.exp(held_bf16), "held_out_tokens": n_tokens,
              "best_step": best_step, "steps_run": log[-1]["step"] if log else 0, "train_seconds": seconds,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "commit": args.commit or git_commit(),
              "command": " ".join(sys.argv), "settings": {k: v for k, v in vars(args).items()
                                                          if k not in ("check_golden", "eval")},
              "data": json.load(open(os.path.join(args.data, "data.json"))), "evals": log}
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"row {args.row}: held-out ppl {record['held_out_ppl']:.3f} (bf16 weights, step {best_step}), "
          f"{seconds:.0f}s, saved {args.out}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-golden", nargs="+", metavar="CASE_DIR")
    ap.add_argument("--eval", metavar="MODEL_DIR")
    ap.add_argument("--make-fixture", nargs=2, metavar=("MODEL_DIR", "OUT_FILE"),
                    help="write the server tests' parity fixture (needs --data and spm_encode)")
    ap.add_argument("--dense", action="store_true", help="--eval: dense attention (the dense rows)")
    ap.add_argument("--data", help="prepare_kjv.py's output directory")
    ap.add_argument("--row", choices=sorted(ROWS), default="gsa")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--dense-warmup", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-minutes", type=float, default=9.0)
    ap.add_argument("--max-eval-windows", type=int, default=0, help="0 = all (smoke tests use a few)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--commit", default="")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.check_golden:
        ok = all([check_golden(c) for c in args.check_golden])
        sys.exit(0 if ok else 1)
    if args.make_fixture:
        make_fixture(args.make_fixture[0], args.data, args.make_fixture[1])
        return
    if args.eval:
        cfg = load_config(args.eval)
        params = {k: v.to(args.device) for k, v in read_safetensors(os.path.join(args.eval, "model.safetensors")).items()}
        ids, starts = load_split(args.data, "heldout")
        hl, n = held_out_loss(params, cfg, eval_windows(ids, starts, cfg["max_position_embeddings"],
                                                        cfg.get("bos_token_id", 1)), not args.dense,
                              torch.device(args.device))
        print(json.dumps({"model": args.eval, "held_out_loss": hl, "held_out_ppl": math.exp(hl), "tokens": n}))
        return
    if not (args.data and args.out):
        ap.error("training needs --data and --out")
    train(args)


if __name__ == "__main__":
    main()
