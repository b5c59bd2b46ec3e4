#!/usr/bin/python3
"""Writes a plain (no TTT) Hugging Face Llama or Qwen3 model folder with random weights, as
`transformers`' save_pretrained lays it out: config.json (LlamaForCausalLM / Qwen3ForCausalLM),
model.safetensors (or shards with model.safetensors.index.json), and the tokenizer files copied
from another folder. What "bring your own model" starts from (docs/model.md) when no real model
can be downloaded: the end-to-end test uses a tiny one, the cost figures a SmolLM-135M-shaped one.

    /usr/bin/python3 tools/make_hf_model.py --family=llama --tokenizer=tests/data/tokenizer_bpe \\
        --out=/tmp/tiny-llama --layers=2 --hidden=64 --intermediate=128 --heads=4 --kv_heads=2

Deterministic for a given --seed. Weights: N(0, 0.02), output projections scaled by
1/sqrt(2 x layers), RMSNorm weights 1 (Qwen3's q_norm/k_norm too), as freshly initialised models
are. Needs only torch (Debian's python3-torch) and the standard library.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json")
SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def tokenizer_vocab(folder):
    """One past the largest id of tokenizer.json (model vocab and added tokens)."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        sys.exit(f"make_hf_model: {folder} has no tokenizer.json: pass --vocab")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def make_config(a, vocab):
    head_dim = a.head_dim or a.hidden // a.heads
    config = {
        "architectures": ["Qwen3ForCausalLM" if a.family == "qwen3" else "LlamaForCausalLM"],
        "model_type": a.family,
        "vocab_size": vocab,
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0 if a.family == "llama" else 1000000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": a.tie,
        "torch_dtype": "bfloat16" if a.dtype == "bfloat16" else "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "bos_token_id": a.bos,
        "eos_token_id": a.eos,
    }
    if a.family == "llama":
        config["mlp_bias"] = False
        config["pretraining_tp"] = 1
    else:
        config["sliding_window"] = None
        config["use_sliding_window"] = False
        config["max_window_layers"] = a.layers
    return config


def make_weights(a, vocab, head_dim):
    gen = torch.Generator().manual_seed(a.seed)

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    out_std = 0.02 / math.sqrt(2 * a.layers)
    w = {"model.embed_tokens.weight": normal(vocab, a.hidden),
         "model.norm.weight": torch.ones(a.hidden)}
    if not a.tie:
        w["lm_head.weight"] = normal(vocab, a.hidden)
    for i in range(a.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(a.hidden)
        w[p + "post_attention_layernorm.weight"] = torch.ones(a.hidden)
        w[p + "self_attn.q_proj.weight"] = normal(a.heads * head_dim, a.hidden)
        w[p + "self_attn.k_proj.weight"] = normal(a.kv_heads * head_dim, a.hidden)
        w[p + "self_attn.v_proj.weight"] = normal(a.kv_heads * head_dim, a.hidden)
        w[p + "self_attn.o_proj.weight"] = normal(a.hidden, a.heads * head_dim, std=out_std)
        if a.family == "qwen3":
            w[p + "self_attn.q_norm.weight"] = torch.ones(head_dim)
            w[p + "self_attn.k_norm.weight"] = torch.ones(head_dim)
        w[p + "mlp.gate_proj.weight"] = normal(a.intermediate, a.hidden)
        w[p + "mlp.up_proj.weight"] = normal(a.intermediate, a.hidden)
        w[p + "mlp.down_proj.weight"] = normal(a.hidden, a.intermediate, std=out_std)
    dtype = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
    return {k: v.to(dtype).contiguous() for k, v in w.items()}


def tensor_bytes(t):
    # bfloat16 has no numpy type: its bits go out as int16.
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return raw.numpy().tobytes()


def write_safetensors(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": SAFETENSORS_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def write_weights(out, tensors, shards):
    """One model.safetensors, or `shards` files and the index transformers writes for them."""
    if shards <= 1:
        write_safetensors(os.path.join(out, "model.safetensors"), tensors)
        return
    names = sorted(tensors)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out, file), {n: tensors[n] for n in part})
        for n in part:
            weight_map[n] = file
            total += tensors[n].numel() * tensors[n].element_size()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=["llama", "qwen3"], required=True)
    ap.add_argument("--out", required=True, help="folder to write (created)")
    ap.add_argument("--tokenizer", required=True, help="folder whose tokenizer files are copied")
    ap.add_argument("--vocab", type=int, default=0, help="default: the tokenizer's")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=0, help="default: hidden / heads")
    ap.add_argument("--tie", action="store_true", help="tie the output head to the embedding")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--bos", type=int, default=None)
    ap.add_argument("--eos", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    vocab = a.vocab or tokenizer_vocab(a.tokenizer)
    config = make_config(a, vocab)
    tensors = make_weights(a, vocab, config["head_dim"])
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_weights(a.out, tensors, a.shards)
    for name in TOKENIZER_FILES:
        src = os.path.join(a.tokenizer, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(a.out, name))
    params = sum(t.numel() for t in tensors.values())
    print(f"make_hf_model: {a.family} {a.layers} layers, d_model {a.hidden}, d_ff "
          f"{a.intermediate}, vocab {vocab}, {params / 1e6:.2f} M parameters ({a.dtype}) "
          f"-> {a.out}")


if __name__ == "__main__":
    main()
