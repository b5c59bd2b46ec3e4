#!/usr/bin/env bash
# Trains the default model's SentencePiece tokenizer on the Brown training split (Debian's
# spm_train, package `sentencepiece`) and writes <out_dir>/tokenizer.model.
# Ids: <unk>=0, <s> (bos)=1, </s> (eos)=2, <pad>=3, then 256 byte-fallback pieces <0x00>..<0xFF>.
#   tools/train_tokenizer.sh [out_dir=models/ttt-brown] [vocab_size=4096]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/models/ttt-brown}"
vocab="${2:-4096}"
mkdir -p "$out"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
spm_train --input="$root/data/brown/train.txt" --model_prefix="$tmp/spm" \
  --vocab_size="$vocab" --model_type=unigram --byte_fallback=true --character_coverage=1.0 \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 --max_sentence_length=65536 \
  --num_threads=2 --seed_sentencepiece_size=200000 --minloglevel=1
cp "$tmp/spm.model" "$out/tokenizer.model"
echo "wrote $out/tokenizer.model (vocab $vocab)"
