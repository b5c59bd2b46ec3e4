#!/usr/bin/env bash
# Reproduces the shipped model models/ttt-brown and its no-TTT baseline (docs/model.md).
# Both runs are resumable: run the same command again after an interruption.
#   tools/train_default_model.sh ttt        # -> models/ttt-brown          (log: data/train-ttt.log)
#   tools/train_default_model.sh baseline   # -> models/ttt-brown-baseline (log: data/train-baseline.log)
# Prerequisites: tools/fetch_corpus.sh, tools/train_tokenizer.sh, tools/prepare_data.sh, and the
# ttt-train binary (cmake target ttt-train; BIN overrides its path).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${BIN:-build-train/train/ttt-train}"
budget="${BUDGET_MINUTES:-68}"
common=(--vocab=4096 --layers=4 --d_model=128 --d_ff=384 --heads=2 --kv_heads=2 --window=64
  --ttt_layers=1,3 --ttt_chunk=64 --ttt_lr=1.0 --seq_len=512 --batch=4 --recall_batch=8 --recall_weight=4
  --recall_pairs=24 --lr=3e-3 --warmup=30 --steps=5000 --budget_minutes="$budget"
  --eval_every=50 --eval_windows=16 --eval_episodes=64 --ckpt_every=20 --log_every=5
  --threads=1 --seed=1 --export_dtype=bf16 --tokenizer=models/ttt-brown/tokenizer.model)
case "${1:-ttt}" in
  ttt) exec "$bin" "${common[@]}" --work_dir=data/run-ttt --out=models/ttt-brown ;;
  baseline) exec "$bin" "${common[@]}" --no_ttt --work_dir=data/run-baseline \
      --out=models/ttt-brown-baseline ;;
  *) echo "usage: $0 [ttt|baseline]" >&2; exit 2 ;;
esac
