#!/usr/bin/env bash
# The continual recipe of issue 12 (docs/model.md, "Continual training"): start from the plain
# model models/ttt-brown-baseline, add In-Place TTT to layers 1 and 3 as a no-op (zero conv),
# train the TTT parameters alone for a warm-up, then everything, on 4096-token sequences with
# re-reading windows and recall episodes mixed in, per-chunk update clipping; the twin continues
# the same plain model on the same data for the same wall-time budget (--no_ttt).
#   tools/train_continual.sh ttt     # -> $RUNS/cont-ttt   (log $RUNS/cont-ttt.log)
#   tools/train_continual.sh plain   # -> $RUNS/cont-plain (log $RUNS/cont-plain.log)
# Resumable: run the same command again (checkpoints in $RUNS/cont-*/work). RUNS defaults to
# /work/train-runs (outside git); INIT is the plain model continued from (a copy is kept there so
# that replacing models/ does not change a resumed run's start); BIN the ttt-train binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs="${RUNS:-/work/train-runs}"
bin="${BIN:-$runs/bin/ttt-train}"
init="${INIT:-$runs/init/ttt-brown-baseline}"
data="${DATA:-$runs/data}"
budget="${BUDGET_MINUTES:-85}"
# Overrides for a follow-up run (docs/model.md, "Second continual run"): TAG names the run folders
# ($RUNS/$TAG-ttt, $RUNS/$TAG-plain), STEPS the schedule's length, RECALL_BATCH/RECALL_WEIGHT the
# recall mix; extra arguments after the mode are passed to ttt-train as they are.
tag="${TAG:-cont}"
common=(--init_from="$init" --train_tokens="$data/train.tok" --valid_tokens="$data/valid.tok"
  --seq_len=4096 --batch=1 --reread_batch=1 --reread_len=512 --recall_batch="${RECALL_BATCH:-8}" --recall_weight="${RECALL_WEIGHT:-4}"
  --recall_pairs=24 --lr=1e-3 --warmup=60 --min_lr_ratio=0.1 --steps="${STEPS:-5000}"
  --budget_minutes="$budget" --eval_every=25 --eval_windows=4 --eval_episodes=64 --ckpt_every=10
  --log_every=5 --threads=1 --seed=2 --export_dtype=bf16)
mode="${1:-ttt}"
shift || true
case "$mode" in
  ttt) exec "$bin" "${common[@]}" --ttt_layers=1,3 --ttt_target=input_embed --ttt_chunk=64 \
      --ttt_lr=1.0 --ttt_clip=5 --freeze_base_steps=30 --ttt_param_lr_mult=3 \
      --work_dir="$runs/$tag-ttt/work" --out="$runs/$tag-ttt/model" "$@" ;;
  plain) exec "$bin" "${common[@]}" --no_ttt --work_dir="$runs/$tag-plain/work" \
      --out="$runs/$tag-plain/model" "$@" ;;
  *) echo "usage: $0 [ttt|plain]" >&2; exit 2 ;;
esac
