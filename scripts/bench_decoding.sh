#!/usr/bin/env bash
# The paper's Table 2 for one checkpoint on this machine: full decoding, each static exit,
# self-speculative decoding with each draft layer, dynamic early exit with the default thresholds.
# Columns: ms/token, speedup against full decoding measured in the same run, acceptance rate,
# agreement with the full model's outputs. Writes bench/decoding.json and bench/decoding.md.
#
#   scripts/bench_decoding.sh [MODEL_DIR] [--max-new-tokens N] [--prompts FILE] [--out DIR]
#
# MODEL_DIR should be a SoFT checkpoint (build/sortedllama finetune --config FILE): only sub-models
# trained to be good make speculative drafts accepted and early exits confident. Without one the
# script benchmarks the converted stories260K (not SoFT-trained), which shows the mechanics only.
# SORTEDLLAMA=path/to/binary overrides the binary (default: build/sortedllama, else build-spec/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SORTEDLLAMA:-}
if [ -z "$BIN" ]; then
  for b in "$ROOT/build/sortedllama" "$ROOT/build-spec/sortedllama"; do
    if [ -x "$b" ]; then BIN=$b; break; fi
  done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "error: no sortedllama binary (build it, or set SORTEDLLAMA)" >&2; exit 1; }

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
  echo "note: this benchmark needs a SoFT checkpoint: train one with" >&2
  echo "  $ROOT/build/sortedllama finetune --config FILE" >&2
  echo "and pass its directory. Falling back to the converted stories260K, which is NOT SoFT-trained" >&2
  echo "(its shallow exits are weak): the figures show the mechanics, not the paper's speedups." >&2
  MODEL=${TMPDIR:-/tmp}/sortedllama-bench-stories260K
  if [ ! -f "$MODEL/model.safetensors" ]; then
    S=$ROOT/../shared/models/stories260K
    "$BIN" convert --from llama2c --input "$S/stories260K.bin" --tokenizer "$S/tok512.model" --out "$MODEL" >&2
  fi
fi
[ -f "$MODEL/config.json" ] || { echo "error: $MODEL has no config.json" >&2; exit 1; }

exec /usr/bin/python3 "$ROOT/scripts/bench_decoding.py" --bin "$BIN" --model "$MODEL" --out "$OUT" ${ARGS[@]+"${ARGS[@]}"}
