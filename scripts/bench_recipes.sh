#!/usr/bin/env bash
# Training recipes on one budget: SFT and the recipes soft (the paper), layerskip, lite and anchored,
# same seed and steps for every run, in two parts:
#   stories  fine-tune stories260K (real, pretrained) on 4,000 short real Alpaca records for 200 steps of
#            16 (lr 1e-3, cosine); `eval --task loss` per exit on 200 held-out records.
#   demo     train the demo's model from scratch on its synthetic set (configs/demo.json; data and tokenizer
#            from `scripts/demo.sh --data-only` unless --demo-data has them); `eval --task instruct` exact
#            match per exit on its 200 test questions (with --demo-seeds, every run once per seed, averaged:
#            200 questions leave a few points of seed noise).
# Writes bench/recipes.{json,md}, bench/recipes_loss.svg and bench/recipes_demo_exact_match.svg; work files
# in runs/bench_recipes/.
#
#   scripts/bench_recipes.sh [--parts stories,demo] [--threads N] [--recipes a,b] [--variant LABEL=key=value,...]
#                            [--steps N] [--train N] [--held-out N] [--seed N]     (stories)
#                            [--demo-steps N] [--demo-seeds 1,2,3] [--demo-data DIR] (demo)
#                            [--out DIR] [--work DIR]
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
