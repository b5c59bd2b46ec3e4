#!/usr/bin/env bash
# Tokenizes the Brown splits with the default model's tokenizer (Debian's spm_encode):
# data/brown/{train,valid,test}.tok, one document per line of space-separated token ids.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$root/models/ttt-brown/tokenizer.model}"
for s in train valid test; do
  spm_encode --model="$model" --output_format=id < "$root/data/brown/$s.txt" > "$root/data/brown/$s.tok"
done
wc -w "$root"/data/brown/*.tok
