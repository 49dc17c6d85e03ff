#!/usr/bin/env bash
# Fine-tuning throughput (tokens/s) and peak RSS: sortedllama finetune SFT vs SoFT against a plain
# PyTorch training loop, all measured in the same run on a LLaMA-shaped model (8 layers, dim 256,
# the LLaMA 2 vocabulary of 32000) on real Alpaca records. Writes bench/finetune.{json,md}.
#
#   scripts/bench_finetune.sh [--steps N] [--skip N] [--batch-size N] [--max-seq-len N] [--out DIR]
#
# Needs /usr/bin/python3 with torch and sentencepiece (scripts/setup.sh installs them).
# SORTEDLLAMA=path/to/binary overrides the binary (default: build/sortedllama).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SORTEDLLAMA:-$ROOT/build/sortedllama}
[ -x "$BIN" ] || { echo "error: $BIN not found (run scripts/setup.sh, or set SORTEDLLAMA)" >&2; exit 1; }
ALPACA=$ROOT/../shared/data/alpaca/alpaca_data_cleaned.json
TOKENIZER=$ROOT/../shared/models/llama2-tokenizer/tokenizer.model
for f in "$ALPACA" "$TOKENIZER"; do
  [ -f "$f" ] || { echo "error: $f not found (see ../shared/DATA.md)" >&2; exit 1; }
done
exec /usr/bin/python3 "$ROOT/scripts/bench_finetune.py" --bin "$BIN" --alpaca "$ALPACA" --tokenizer "$TOKENIZER" \
  --out "$ROOT/bench" "$@"
