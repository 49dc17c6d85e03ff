#!/usr/bin/env bash
# Fine-tuning throughput (tokens/s), model FLOP/s against the GEMM speed of the same shapes, time per
# phase and peak RSS: sortedllama finetune SFT vs SoFT against a plain PyTorch training loop, runs
# interleaved and repeated, all in the same run, on a LLaMA-shaped model (8 layers, dim 256, the
# LLaMA 2 vocabulary of 32000) in two settings: dense 256-token texts (every position labelled,
# batch 8, 8 heads / 4 KV heads) and real Alpaca records (response tokens labelled, batch 4).
# Writes bench/finetune.{json,md}.
#
#   scripts/bench_finetune.sh [--settings dense,alpaca] [--repeat N] [--steps N] [--skip N]
#                             [--max-seq-len N] [--records N] [--threads N] [--seed N] [--scaling]
#                             [--baseline-bin OTHER_SORTEDLLAMA] [--bf16] [--out DIR]
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
