#!/usr/bin/env bash
# The issue-28 memory report (ttt-eval --mode=memory): carry-over into a document from unrelated
# and related documents, and the memory curve by distance, on Brown and on the out-of-domain
# corpus (tools/fetch_ood_corpus.sh), for MODEL with TTT on and off, its TWIN (TWIN=none: left
# out; about a third of the time), and any extra ttt-eval arguments (--reference=DIR,
# --sweep=eta:clip:cap,...). About 40 minutes per model variant at nice 19 on the shared 2-core
# machine (load 10), most of it the out-of-domain corpus.
#   tools/run_eval_memory.sh valid [OUT]   # choosing between models: OUT defaults to
#                                          # $RUNS/evals/memory-valid-<model folder name>.md
#   tools/run_eval_memory.sh test          # once per shipped model: docs/eval_memory.md
# Resumable: each (model, corpus) is cached in $RUNS/evals/cache; rerun the same command.
# Runs at nice 19 with one intra-op thread (BIN overrides the ttt-eval binary).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs="${RUNS:-/work/train-runs}"
bin="${BIN:-build/train/ttt-eval}"
model="${MODEL:-models/ttt-brown}"
twin="${TWIN:-models/ttt-brown-baseline}"
[ "$twin" = none ] && twin=""
split="${1:-valid}"
shift || true
case "$split" in
  valid) out="$runs/evals/memory-valid-$(basename "$model").md"
    if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then out="$1"; shift; fi ;;
  test) out=docs/eval_memory.md ;;
  *) echo "usage: $0 valid [OUT] | test" >&2; exit 2 ;;
esac
mkdir -p "$runs/evals" "$(dirname "$out")"
exec nice -n 19 "$bin" --mode=memory --split="$split" --model="$model" --twin="$twin" \
  --valid_tokens=data/brown/valid.tok --test_tokens=data/brown/test.tok \
  --ood_valid_tokens=data/sotu/valid.tok --ood_test_tokens=data/sotu/test.tok \
  --memory_distances=512,2048,3300,6000,8000 --reread_len=512 --carry_before=2 --threads=1 \
  --work_dir="$runs/evals" --out_md="$out" \
  --command="MODEL=$model TWIN=${twin:-none} tools/run_eval_memory.sh $split${*:+ $*}" "$@"
