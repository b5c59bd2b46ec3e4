#!/usr/bin/python3
"""Independent PyTorch reference for In-Place Test-Time Training (arXiv 2604.06169).

Written from the paper and DESIGN.md section 1, not from the C++ engine. It builds two tiny random
decoders (a Llama and a Qwen3 variant) with In-Place TTT, writes them in the Hugging Face layout
(config.json + model.safetensors) and writes the golden numbers the C++ engine must reproduce
(golden.safetensors + golden.json).

All golden numbers are computed in float64 from the float32 weights exactly as written to disk, then
stored as float32. Before writing anything the script checks itself (and exits non-zero on failure):
  (i)   the parallel prefix-sum form equals a naive stream that runs the whole stack chunk by chunk
        (and token by token) with a KV cache and updates W_down explicitly (max abs diff < 1e-10);
  (ii)  eta = 0 equals the plain model (no TTT at all);
  (iii) a sliding window >= T equals full attention.

Usage: /usr/bin/python3 tests/reference/ttt_reference.py --out DIR
Writes DIR/llama/{config.json,model.safetensors,golden.safetensors,golden.json} and DIR/qwen3/...
Deterministic: the same bytes on every run (single-threaded, fixed seeds).
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
DT = torch.float64

# --------------------------------------------------------------------------------------------
# Fixture definitions
# --------------------------------------------------------------------------------------------

LLAMA_CONFIG = {
    "model_type": "llama",
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "sliding_window": None,
    "use_sliding_window": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "ttt_mode": True,
    "ttt_layers": [0, 2],
    "ttt_lr": 0.1,
    "ttt_chunk": 8,
    "ttt_target": "input_embed",
    "ttt_proj": True,
    "ttt_clip": 0.0,
}

QWEN3_CONFIG = {
    "model_type": "qwen3",
    "vocab_size": 101,
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "sliding_window": 12,
    "use_sliding_window": True,
    # HF Qwen3 windows layers i >= max_window_layers; 0 = every layer (what the engine does).
    "max_window_layers": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "ttt_mode": True,
    "ttt_layers": [1],
    "ttt_lr": 0.02,
    "ttt_chunk": 5,
    "ttt_target": "hidden_states",
    "ttt_proj": False,
    "ttt_clip": None,  # chosen below from the chunk norms so that some chunks clip and some don't
}

FIXTURES = [
    # name, config, weight seed, token seed, T, extra windows (golden logprobs_window_W, TTT on)
    ("llama", LLAMA_CONFIG, 1234, 4321, 45, [16]),
    ("qwen3", QWEN3_CONFIG, 5678, 8765, 43, []),
]

# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def make_weights(cfg, seed):
    """Small random normals (float32, rounded once; everything downstream uses these values)."""
    g = torch.Generator().manual_seed(seed)
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    qwen3 = cfg["model_type"] == "qwen3"

    def normal(shape, std):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).float()

    def norm_w(n):  # RMSNorm weights around 1
        return (1.0 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)).float()

    w = {}
    # Tied embeddings double as the LM head: keep them small so logits stay non-degenerate.
    w["model.embed_tokens.weight"] = normal((cfg["vocab_size"], d),
                                            0.1 if cfg["tie_word_embeddings"] else 0.5)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_w(d)
        w[p + "self_attn.q_proj.weight"] = normal((nh * hd, d), 0.1)
        w[p + "self_attn.k_proj.weight"] = normal((nkv * hd, d), 0.1)
        w[p + "self_attn.v_proj.weight"] = normal((nkv * hd, d), 0.1)
        w[p + "self_attn.o_proj.weight"] = normal((d, nh * hd), 0.1)
        if qwen3:
            w[p + "self_attn.q_norm.weight"] = norm_w(hd)
            w[p + "self_attn.k_norm.weight"] = norm_w(hd)
        w[p + "post_attention_layernorm.weight"] = norm_w(d)
        w[p + "mlp.gate_proj.weight"] = normal((f, d), 0.1)
        w[p + "mlp.up_proj.weight"] = normal((f, d), 0.1)
        w[p + "mlp.down_proj.weight"] = normal((d, f), 0.1)
        if i in cfg["ttt_layers"]:
            w[p + "mlp.ttt_conv.weight"] = normal((d, 1, 5), 0.3)
            if cfg["ttt_proj"]:
                w[p + "mlp.ttt_proj.weight"] = normal((d, d), 1.0 / math.sqrt(d))
    w["model.norm.weight"] = norm_w(d)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = normal((cfg["vocab_size"], d), 0.1)
    return w


# --------------------------------------------------------------------------------------------
# The model (float64)
# --------------------------------------------------------------------------------------------


def rms_norm(x, w, eps):
    x = x.to(DT)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(x, positions, theta):
    """x: [n, heads, hd]; positions: [n] absolute positions. HF rotate_half convention."""
    hd = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=DT) / hd)
    freqs = positions.to(DT)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    return x * cos + rotate_half(x) * sin


class Model:
    def __init__(self, cfg, weights32):
        self.cfg = cfg
        self.w = {k: v.to(DT) for k, v in weights32.items()}
        self.L = cfg["num_hidden_layers"]
        self.d = cfg["hidden_size"]
        self.f = cfg["intermediate_size"]
        self.hd = cfg["head_dim"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg["num_key_value_heads"]
        self.eps = cfg["rms_norm_eps"]
        self.theta = cfg["rope_theta"]
        self.qk_norm = cfg["model_type"] == "qwen3"
        self.C = cfg["ttt_chunk"]
        self.ttt_layers = list(cfg["ttt_layers"]) if cfg["ttt_mode"] else []
        self.clip = cfg["ttt_clip"] or 0.0
        self.default_window = cfg["sliding_window"] if cfg.get("use_sliding_window", True) else None

    def P(self, i, name):
        return self.w[f"model.layers.{i}.{name}"]

    def lm_head(self):
        if self.cfg["tie_word_embeddings"]:
            return self.w["model.embed_tokens.weight"]
        return self.w["lm_head.weight"]

    # --- attention pieces ---
    def qkv(self, i, x, positions):
        """x: [n, d] (normed). Returns q [n, nh, hd], k, v [n, nkv, hd] with RoPE applied."""
        n = x.shape[0]
        q = (x @ self.P(i, "self_attn.q_proj.weight").T).view(n, self.nh, self.hd)
        k = (x @ self.P(i, "self_attn.k_proj.weight").T).view(n, self.nkv, self.hd)
        v = (x @ self.P(i, "self_attn.v_proj.weight").T).view(n, self.nkv, self.hd)
        if self.qk_norm:
            q = rms_norm(q, self.P(i, "self_attn.q_norm.weight"), self.eps)
            k = rms_norm(k, self.P(i, "self_attn.k_norm.weight"), self.eps)
        q = rope(q, positions, self.theta)
        k = rope(k, positions, self.theta)
        return q, k, v

    def attend(self, i, q, qpos, k, v, kpos, window):
        """q [n, nh, hd] at qpos; k, v [m, nkv, hd] at kpos. Causal, optional sliding window."""
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)  # HF repeat_kv: head h uses kv head h // rep
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.hd)
        allowed = kpos[None, :] <= qpos[:, None]
        if window is not None:
            allowed = allowed & (kpos[None, :] > qpos[:, None] - window)
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("hqk,khd->qhd", probs, v).reshape(q.shape[0], self.nh * self.hd)
        return out @ self.P(i, "self_attn.o_proj.weight").T

    # --- TTT pieces ---
    def z_of(self, i, h):
        return F.silu(h @ self.P(i, "mlp.gate_proj.weight").T) * (h @ self.P(i, "mlp.up_proj.weight").T)

    def chunk_update(self, i, x0_chunk, z_chunk):
        """dW = V^T Z for one chunk (rows = its tokens), clipped; V = Conv1D(X0) W_target."""
        conv_w = self.P(i, "mlp.ttt_conv.weight")  # [d, 1, 5]
        xc = F.conv1d(x0_chunk.T.unsqueeze(0), conv_w, padding=2, groups=self.d)[0].T  # [c, d]
        v = xc @ self.P(i, "mlp.ttt_proj.weight") if self.cfg["ttt_proj"] else xc  # as stored
        dw = v.T @ z_chunk  # [d, f]
        norm = torch.linalg.norm(dw)
        if self.clip > 0 and norm > self.clip:
            dw = dw * (self.clip / norm)
        return dw, float(norm)

    def ttt_mlp_parallel(self, i, h, x0, eta):
        """Prefix-sum form over the whole sequence starting at position 0.

        Returns (output [T, d], delta = eta * sum of complete chunks' dW, raw chunk norms)."""
        T, C = h.shape[0], self.C
        z = self.z_of(i, h)
        nc = (T + C - 1) // C
        dws, norms = [], []
        for c in range(nc):
            dw, nrm = self.chunk_update(i, x0[c * C:(c + 1) * C], z[c * C:(c + 1) * C])
            dws.append(dw)
            norms.append(nrm)
        dws = torch.stack(dws)  # [nc, d, f]
        incl = torch.cumsum(dws, dim=0)
        excl = torch.cat([torch.zeros_like(incl[:1]), incl[:-1]], dim=0)  # S_i = sum_{j<i} dW_j
        w_fast = self.P(i, "mlp.down_proj.weight")[None] + eta * excl  # W_down^(i-1)
        zp = F.pad(z, (0, 0, 0, nc * C - T)).view(nc, C, self.f)
        out = torch.einsum("ncf,ndf->ncd", zp, w_fast).reshape(nc * C, self.d)[:T]
        full = T // C
        delta = eta * incl[full - 1] if full > 0 else torch.zeros(self.d, self.f, dtype=DT)
        return out, delta, norms[:full]

    def mlp_plain(self, i, h):
        return self.z_of(i, h) @ self.P(i, "mlp.down_proj.weight").T

    # --- whole-sequence forward (parallel) ---
    def forward(self, tokens, eta=None, window="default", ttt=True):
        """tokens: LongTensor [T] from position 0. Returns logits [T, V], {layer: delta}, norms."""
        eta = self.cfg["ttt_lr"] if eta is None else eta
        window = self.default_window if window == "default" else window
        T = tokens.shape[0]
        pos = torch.arange(T)
        emb = self.w["model.embed_tokens.weight"][tokens]
        x = emb
        deltas, norms = {}, {}
        for i in range(self.L):
            hn = rms_norm(x, self.P(i, "input_layernorm.weight"), self.eps)
            q, k, v = self.qkv(i, hn, pos)
            x = x + self.attend(i, q, pos, k, v, pos, window)
            h = rms_norm(x, self.P(i, "post_attention_layernorm.weight"), self.eps)
            if ttt and i in self.ttt_layers:
                x0 = emb if self.cfg["ttt_target"] == "input_embed" else h
                out, deltas[i], norms[i] = self.ttt_mlp_parallel(i, h, x0, eta)
            else:
                out = self.mlp_plain(i, h)
            x = x + out
        x = rms_norm(x, self.w["model.norm.weight"], self.eps)
        return x @ self.lm_head().T, deltas, norms


class NaiveStream:
    """Streaming reference: KV cache, explicit fast weights W_down updated chunk by chunk.

    Each feed() call must stay inside one chunk (the caller splits); the tokens of the unfinished
    chunk use the current fast weights and are buffered; when a chunk completes its (clipped)
    update is added to W_down explicitly."""

    def __init__(self, model, eta=None, window="default"):
        self.m = model
        self.eta = model.cfg["ttt_lr"] if eta is None else eta
        self.window = model.default_window if window == "default" else window
        self.pos = 0
        self.kcache = [None] * model.L
        self.vcache = [None] * model.L
        self.w_down = {i: model.P(i, "mlp.down_proj.weight").clone() for i in model.ttt_layers}
        self.pending_z = {i: [] for i in model.ttt_layers}
        self.pending_x0 = {i: [] for i in model.ttt_layers}
        self.logits = []

    def feed(self, tokens):
        m, n, C = self.m, len(tokens), self.m.C
        assert n > 0 and self.pos // C == (self.pos + n - 1) // C, "a piece must stay in one chunk"
        pos = torch.arange(self.pos, self.pos + n)
        emb = m.w["model.embed_tokens.weight"][tokens]
        x = emb
        for i in range(m.L):
            hn = rms_norm(x, m.P(i, "input_layernorm.weight"), m.eps)
            q, k, v = m.qkv(i, hn, pos)
            self.kcache[i] = k if self.kcache[i] is None else torch.cat([self.kcache[i], k])
            self.vcache[i] = v if self.vcache[i] is None else torch.cat([self.vcache[i], v])
            kpos = torch.arange(self.kcache[i].shape[0])
            x = x + m.attend(i, q, pos, self.kcache[i], self.vcache[i], kpos, self.window)
            h = rms_norm(x, m.P(i, "post_attention_layernorm.weight"), m.eps)
            if i in m.ttt_layers:
                z = m.z_of(i, h)
                x = x + z @ self.w_down[i].T  # apply (current fast weights) ...
                x0 = emb if m.cfg["ttt_target"] == "input_embed" else h
                self.pending_z[i] += list(z)
                self.pending_x0[i] += list(x0)
                if len(self.pending_z[i]) == C:  # ... then update, once the chunk is complete
                    dw, _ = m.chunk_update(i, torch.stack(self.pending_x0[i]),
                                           torch.stack(self.pending_z[i]))
                    self.w_down[i] = self.w_down[i] + self.eta * dw
                    self.pending_z[i], self.pending_x0[i] = [], []
            else:
                x = x + m.mlp_plain(i, h)
        x = rms_norm(x, m.w["model.norm.weight"], m.eps)
        self.logits.append(x @ m.lm_head().T)
        self.pos += n

    def deltas(self):
        return {i: self.w_down[i] - self.m.P(i, "mlp.down_proj.weight") for i in self.m.ttt_layers}

    def all_logits(self):
        return torch.cat(self.logits)


def stream_pieces(model, tokens, cuts, **kw):
    """Feeds `tokens` split at `cuts` (and at every chunk boundary)."""
    T, C = len(tokens), model.C
    bounds = sorted(set([0, T] + [c for c in cuts if 0 < c < T] + list(range(C, T, C))))
    s = NaiveStream(model, **kw)
    for a, b in zip(bounds[:-1], bounds[1:]):
        s.feed(tokens[a:b])
    return s.all_logits(), s.deltas()


def logprobs(logits, tokens):
    lp = torch.log_softmax(logits, dim=-1)
    return lp[:-1].gather(1, tokens[1:, None])[:, 0]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}


def write_safetensors(path, named):
    """named: list of (name, tensor) with float32 or int64 tensors. Written in the given order."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name, t in named:
        t = t.detach().contiguous().cpu()
        code, npdt = _ST_DTYPES[t.dtype]
        data = t.numpy().astype(npdt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(hj)))
        fh.write(hj)
        for b in blobs:
            fh.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as fh:
        raw = fh.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        npdt = {"F32": "<f4", "I64": "<i8"}[e["dtype"]]
        a, b = e["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=npdt).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

FAILURES = []


def check(cond, what):
    status = "ok  " if cond else "FAIL"
    print(f"  [{status}] {what}", flush=True)
    if not cond:
        FAILURES.append(what)


def maxdiff(a, b):
    return float((a - b).abs().max())


def choose_clip(norms):
    """A round threshold strictly inside the range of chunk norms, away from every norm."""
    ns = sorted(norms)
    lo, hi = ns[0], ns[-1]
    mid = ns[len(ns) // 2]
    for cand in [round(mid, 1), round(mid, 2), round((lo + hi) / 2, 2)]:
        if lo < cand < hi and all(abs(cand - x) > 0.02 * x for x in ns):
            return cand
    raise RuntimeError(f"no clean clip threshold for norms {ns}")


def build_fixture(out_dir, name, cfg, wseed, tseed, T, windows):
    t0 = time.time()
    cfg = dict(cfg)
    print(f"[{name}] building: T={T} chunk={cfg['ttt_chunk']} ttt_layers={cfg['ttt_layers']} "
          f"target={cfg['ttt_target']} proj={cfg['ttt_proj']}", flush=True)
    weights = make_weights(cfg, wseed)
    tokens = torch.randint(0, cfg["vocab_size"], (T,), generator=torch.Generator().manual_seed(tseed))

    if cfg["ttt_clip"] is None:
        probe = dict(cfg, ttt_clip=0.0)
        _, _, raw_norms = Model(probe, weights).forward(tokens)
        all_norms = [x for ns in raw_norms.values() for x in ns]
        cfg["ttt_clip"] = choose_clip(all_norms)
        print(f"[{name}] raw chunk norms {[round(x, 4) for x in all_norms]} -> ttt_clip "
              f"{cfg['ttt_clip']}", flush=True)

    model = Model(cfg, weights)
    C = cfg["ttt_chunk"]
    full_chunks = T // C
    summary = {"tokens": T, "chunk": C, "complete_chunks": full_chunks,
               "partial_chunk_tokens": T % C, "ttt_layers": cfg["ttt_layers"],
               "ttt_lr": cfg["ttt_lr"], "ttt_clip": cfg["ttt_clip"],
               "sliding_window": model.default_window}

    logits, deltas, norms = model.forward(tokens)
    lp_ttt = logprobs(logits, tokens)
    lp_plain_eta0 = logprobs(model.forward(tokens, eta=0.0)[0], tokens)
    logits_plain, _, _ = model.forward(tokens, ttt=False)
    lp_plain = logprobs(logits_plain, tokens)
    summary["chunk_norms"] = {str(i): [round(x, 6) for x in ns] for i, ns in norms.items()}
    if cfg["ttt_clip"] > 0:
        clipped = sum(x > cfg["ttt_clip"] for ns in norms.values() for x in ns)
        summary["clipped_chunks"] = clipped
        check(0 < clipped < sum(len(ns) for ns in norms.values()),
              f"ttt_clip {cfg['ttt_clip']} clips some complete chunks but not all ({clipped})")

    # (i) parallel prefix sum == naive sequential stream (chunk by chunk, token by token, random).
    gen = torch.Generator().manual_seed(tseed + 1)
    random_cuts = sorted(torch.randint(1, T, (T // 4,), generator=gen).tolist())
    for label, cuts in [("chunk by chunk", []), ("token by token", list(range(T))),
                        ("random pieces", random_cuts)]:
        s_logits, s_deltas = stream_pieces(model, tokens, cuts)
        dl = maxdiff(s_logits, logits)
        dd = max(maxdiff(s_deltas[i], deltas[i]) for i in model.ttt_layers)
        check(dl < 1e-10 and dd < 1e-10,
              f"(i) prefix-sum == naive sequential stream ({label}): logits {dl:.2e}, delta {dd:.2e}")
    # the same with a window that actually evicts (and for the windowed goldens)
    for W in windows:
        s_logits, s_deltas = stream_pieces(model, tokens, [], window=W)
        p_logits, p_deltas, _ = model.forward(tokens, window=W)
        dl = maxdiff(s_logits, p_logits)
        dd = max(maxdiff(s_deltas[i], p_deltas[i]) for i in model.ttt_layers)
        check(dl < 1e-10 and dd < 1e-10,
              f"(i) prefix-sum == naive stream with window {W}: logits {dl:.2e}, delta {dd:.2e}")

    # (ii) eta = 0 is the plain model.
    d0 = maxdiff(lp_plain_eta0, lp_plain)
    check(d0 < 1e-12, f"(ii) eta=0 == plain model: logprobs max diff {d0:.2e}")
    dttt = maxdiff(lp_ttt, lp_plain)
    summary["max_abs_logprob_diff_ttt_vs_plain"] = dttt
    check(dttt > 1e-2, f"TTT changes log-probs noticeably: max |ttt - plain| = {dttt:.4f}")
    check(bool(torch.isfinite(lp_ttt).all()) and float(lp_ttt.min()) > -30,
          f"TTT log-probs tame: min {float(lp_ttt.min()):.3f}, mean {float(lp_ttt.mean()):.3f} "
          f"(plain mean {float(lp_plain.mean()):.3f}, uniform {-math.log(cfg['vocab_size']):.3f})")
    # TTT only starts to matter from the second chunk on.
    d_first = maxdiff(lp_ttt[:C - 1], lp_plain[:C - 1])
    check(d_first < 1e-12, f"first chunk unaffected by TTT: {d_first:.2e}")

    # (iii) a window >= T is full attention.
    lw = logprobs(model.forward(tokens, window=T)[0], tokens)
    lf = logprobs(model.forward(tokens, window=None)[0], tokens)
    dw = maxdiff(lw, lf)
    check(dw < 1e-12, f"(iii) window {T} >= T == full attention: {dw:.2e}")
    if model.default_window is not None:
        dwin = maxdiff(lp_ttt, lf)
        summary["max_abs_logprob_diff_window_vs_full"] = dwin
        check(dwin > 1e-3, f"configured window {model.default_window} matters: {dwin:.4f}")

    golden = [("tokens", tokens.to(torch.int64)),
              ("logprobs_ttt", lp_ttt.float()),
              ("logprobs_plain", lp_plain.float()),
              ("logits_last", logits[-1].float())]
    for i in model.ttt_layers:
        golden.append((f"delta.layer{i}", deltas[i].float()))
        summary[f"delta.layer{i}.frobenius"] = float(torch.linalg.norm(deltas[i]))
    for W in windows:
        lpw = logprobs(model.forward(tokens, window=W)[0], tokens)
        dW = maxdiff(lpw, lp_ttt)
        check(dW > 1e-3, f"window {W} changes log-probs: {dW:.4f}")
        summary[f"max_abs_logprob_diff_window{W}_vs_full"] = dW
        golden.append((f"logprobs_window_{W}", lpw.float()))
    summary["mean_logprob_ttt"] = float(lp_ttt.mean())
    summary["mean_logprob_plain"] = float(lp_plain.mean())

    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    config_keys = ["model_type", "vocab_size", "hidden_size", "intermediate_size",
                   "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                   "rope_theta", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
                   "sliding_window", "use_sliding_window", "max_window_layers", "bos_token_id",
                   "eos_token_id", "ttt_mode", "ttt_layers", "ttt_lr", "ttt_chunk", "ttt_target",
                   "ttt_proj", "ttt_clip"]
    config_json = {k: cfg[k] for k in config_keys if k in cfg}
    config_json["architectures"] = ["LlamaForCausalLM" if name == "llama" else "Qwen3ForCausalLM"]
    config_json["torch_dtype"] = "float32"
    write_text(os.path.join(d, "config.json"), json.dumps(config_json, indent=2) + "\n")
    write_safetensors(os.path.join(d, "model.safetensors"), sorted(weights.items()))
    write_safetensors(os.path.join(d, "golden.safetensors"), golden)
    write_text(os.path.join(d, "golden.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")

    # Round trip of what was written.
    back = read_safetensors(os.path.join(d, "model.safetensors"))
    check(all(torch.equal(back[k], v) for k, v in weights.items()) and len(back) == len(weights),
          "model.safetensors reads back bit-exactly")
    gback = read_safetensors(os.path.join(d, "golden.safetensors"))
    check(all(torch.equal(gback[k], v) for k, v in golden), "golden.safetensors reads back")
    print(f"[{name}] wrote {d} ({len(weights)} weight tensors, {len(golden)} golden tensors) "
          f"in {time.time() - t0:.2f}s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (one sub-folder per model)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for fx in FIXTURES:
        build_fixture(args.out, *fx)
    if FAILURES:
        print(f"SELF-CHECK FAILED ({len(FAILURES)}):", file=sys.stderr)
        for f in FAILURES:
            print(f"  {f}", file=sys.stderr)
        sys.exit(1)
    print("all self-checks passed", flush=True)


if __name__ == "__main__":
    main()
