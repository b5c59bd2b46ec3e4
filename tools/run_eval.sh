#!/usr/bin/env bash
# Regenerates docs/eval.md and its plots (docs/eval_loss_by_position.png, docs/eval_streams.png):
# the default model with TTT on and off, its plain twin, and (REFERENCE, optional) another model,
# on the Brown test split; the eta/clip/delta-cap sweep on the validation split only. Needs
# tools/fetch_corpus.sh + tools/prepare_data.sh first, gnuplot, and the ttt-eval binary (BIN
# overrides its path). Extra arguments go to ttt-eval (e.g. --reference=DIR). One intra-op thread:
# on a shared machine more threads spin against each other and run several times slower.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${BIN:-build/train/ttt-eval}"
exec nice "$bin" --model=models/ttt-brown --twin=models/ttt-brown-baseline \
  --valid_tokens=data/brown/valid.tok --test_tokens=data/brown/test.tok \
  --sweep="${SWEEP:-0.5:5,1:5,1:5:8,1:5:8.5,1:5:8.75,1:5:9,1:5:10,1:5:12,1:5:15}" --stream_tokens=16384 --reread_docs=12 \
  --reread_len=512 --reread_others=2 --recall_episodes=256 --threads=1 \
  --out_md=docs/eval.md --out_dir=docs --work_dir=data/eval --command="tools/run_eval.sh" "$@"
