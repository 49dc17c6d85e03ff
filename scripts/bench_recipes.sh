#!/usr/bin/env bash
# Training recipes on one budget: SFT and the recipes soft (the paper), layerskip, lite and anchored
# fine-tune stories260K (real, pretrained) on 4,000 short real Alpaca records for 200 steps of 16
# (lr 1e-3, cosine), same seed; then `eval --task loss` per exit on 200 held-out records.
# Writes bench/recipes.{json,md} and bench/recipes_loss.svg; work files in runs/bench_recipes/.
#
#   scripts/bench_recipes.sh [--steps N] [--train N] [--held-out N] [--seed N] [--threads N] [--recipes a,b]
#                            [--variant LABEL=key=value,key=value ...]
#
# SORTEDLLAMA=path/to/binary overrides the binary (default: build/sortedllama).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SORTEDLLAMA:-$ROOT/build/sortedllama}
[ -x "$BIN" ] || { echo "error: $BIN not found (run scripts/setup.sh, or set SORTEDLLAMA)" >&2; exit 1; }
SHARED=$ROOT/../shared
for f in "$SHARED/data/alpaca/alpaca_data_cleaned.json" "$SHARED/models/stories260K/stories260K.bin"; do
  [ -f "$f" ] || { echo "error: $f not found (see ../shared/DATA.md)" >&2; exit 1; }
done
exec /usr/bin/python3 "$ROOT/scripts/bench_recipes.py" --bin "$BIN" --shared "$SHARED" --out "$ROOT/bench" \
  --work "$ROOT/runs/bench_recipes" --command "scripts/bench_recipes.sh $*" "$@"
