#!/usr/bin/env bash
# The paper's Table 2 for one checkpoint on this machine: full decoding, each static exit,
# self-speculative decoding with each draft layer (a chain of drafts, then a draft tree: --tree N,
# default 4, 0 = chains only), dynamic early exit with the default thresholds (skipped layers' K/V
# recomputed, then copied), and (with --tune-prompts FILE) the speculative setting `sortedllama
# tune` chooses on other prompts.
# Columns: ms/token, speedup against full decoding measured in the same run, acceptance rate,
# agreement with the full model's outputs. Writes bench/decoding.json and bench/decoding.md.
#
#   scripts/bench_decoding.sh [MODEL_DIR] [--max-new-tokens N] [--prompts FILE] [--tree N] [--tune-prompts FILE]
#                             [--out DIR]
#   scripts/bench_decoding.sh --vs-llama2c [--pairs N] [--new-tokens N] [--threads 1,2] [--batches 8,32]
#                             [--shapes 110M,15M] [--out DIR]
#
# --vs-llama2c instead compares batch-1 fp32 decoding with llama2.c's runomp on random weights of
# two shapes (110M and 15M), both programs on the same weights, interleaved, and sortedllama's
# batch 8 and 32 throughput; writes bench/decode_vs_llama2c.{json,md}. llama2.c is built from
# ../shared/baselines/llama2.c into build/.
#
# MODEL_DIR should be a SoFT checkpoint (build/sortedllama finetune --config FILE): only sub-models
# trained to be good make speculative drafts accepted and early exits confident. Without one the
# script uses the embedded default's SoFT model (runs/demo/soft/final, trained by scripts/demo.sh
# on CPU when it is missing), the demo's held-out questions as prompts and its validation questions
# to tune on.
# SORTEDLLAMA=path/to/binary overrides the binary (default: build/sortedllama).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SORTEDLLAMA:-$ROOT/build/sortedllama}
[ -x "$BIN" ] || { echo "error: $BIN not found (run scripts/setup.sh, or set SORTEDLLAMA)" >&2; exit 1; }

if [ "${1-}" = --vs-llama2c ]; then
  shift
  BASE=$ROOT/../shared/baselines/llama2.c
  [ -f "$BASE/run.c" ] || { echo "error: $BASE/run.c not found (the llama2.c baseline)" >&2; exit 1; }
  [ -x "$ROOT/build/llama2c-runomp" ] || gcc -Ofast -fopenmp -march=native "$BASE/run.c" -lm -o "$ROOT/build/llama2c-runomp"
  # A later --out among the arguments wins (argparse keeps the last).
  exec /usr/bin/python3 "$ROOT/scripts/bench_vs_llama2c.py" --bin "$BIN" --llama2c "$ROOT/build/llama2c-runomp" \
    --llama2c-tokenizer "$BASE/tokenizer.bin" --tokenizer "$ROOT/../shared/models/llama2-tokenizer/tokenizer.model" \
    --work "$ROOT/build/bench-llama2c" --out "$ROOT/bench" "$@"
fi

MODEL=
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then MODEL=$1; shift; fi
OUT=$ROOT/bench
ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT"

if [ -z "$MODEL" ]; then
  MODEL=$ROOT/runs/demo/soft/final
  if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "no checkpoint given: training the embedded default's SoFT model first (scripts/demo.sh)" >&2
    "$ROOT/scripts/demo.sh" >&2
  fi
  if [[ " ${ARGS[*]-} " != *" --prompts "* ]]; then ARGS+=(--prompts "$ROOT/runs/demo/data/test.jsonl"); fi
  if [[ " ${ARGS[*]-} " != *" --tune-prompts "* ]]; then ARGS+=(--tune-prompts "$ROOT/runs/demo/data/valid.jsonl"); fi
fi
[ -f "$MODEL/config.json" ] || { echo "error: $MODEL has no config.json" >&2; exit 1; }

exec /usr/bin/python3 "$ROOT/scripts/bench_decoding.py" --bin "$BIN" --model "$MODEL" --out "$OUT" ${ARGS[@]+"${ARGS[@]}"}
