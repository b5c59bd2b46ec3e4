#!/usr/bin/env python3
"""Times the plain PyTorch reference (tests/reference/ttt_reference.py) ingesting a sequence, in
float32, on a model folder the engine benchmark wrote: the baseline for 'engine vs. reference'."""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import ttt_reference as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref.DT = torch.float32  # the reference checks itself in float64; time it as served, in float32
    with open(os.path.join(args.model, "config.json")) as fh:
        cfg = json.load(fh)
    cfg.setdefault("ttt_clip", 0.0)
    model = ref.Model(cfg, ref.read_safetensors(os.path.join(args.model, "model.safetensors")))
    tokens = torch.randint(0, cfg["vocab_size"], (args.tokens,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.forward(tokens)  # warm-up
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            model.forward(tokens)
            best = min(best, time.perf_counter() - start)
    print(f"tokens_per_second={args.tokens / best:.1f}")


if __name__ == "__main__":
    main()
