#!/usr/bin/env bash
# Long training documents (issue 28, training windows of 8k tokens inside one document): the King
# James Version from Debian's bible-kjv (public domain), each book one document cut at chapter
# ends into pieces of at most 7,000 words (tools/kjv_to_text.py), tokenized with the default
# model's tokenizer (or $1) into the git-ignored data/ folder:
#   data/kjv/train.txt, data/kjv/train.tok   one document per line (152 documents, 1.27 M tokens)
# Training data only: model choices are made on Brown and State of the Union validation.
# Deterministic and idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tokenizer="${1:-$root/models/ttt-brown/tokenizer.model}"
if ! command -v bible >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q bible-kjv >/dev/null
fi
out="$root/data/kjv"
mkdir -p "$out"
bible -f "Gen1:1-Rev22:21" > "$out/verses.txt"
/usr/bin/python3 "$root/tools/kjv_to_text.py" "$out/verses.txt" "$out/train.txt"
spm_encode --model="$tokenizer" --output_format=id < "$out/train.txt" > "$out/train.tok"
wc -w "$out/train.tok"
