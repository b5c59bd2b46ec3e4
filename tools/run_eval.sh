#!/usr/bin/env bash
# Regenerates docs/eval.md and docs/eval_loss_by_position.png from the shipped model, its
# baseline and the Brown test split (needs tools/fetch_corpus.sh + tools/prepare_data.sh first,
# gnuplot for the plot, and the ttt-eval binary; BIN overrides its path).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${BIN:-build-train/train/ttt-eval}"
exec "$bin" --model=models/ttt-brown --baseline=models/ttt-brown-baseline \
  --test_tokens=data/brown/test.tok --eta_sweep=0.5,2 --recall_episodes=256 \
  --out_md=docs/eval.md --out_png=docs/eval_loss_by_position.png --work_dir=data/eval \
  --command="tools/run_eval.sh" "$@"
