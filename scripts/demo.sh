#!/usr/bin/env bash
# The embedded default, end to end, with nothing from outside the repository:
#   synthetic instruction data with exactly checkable answers (sortedllama data synth)
#   -> a sentencepiece tokenizer trained on it (spm_train)
#   -> a tiny LLaMA (8 layers) trained from scratch with SoFT and with SFT on the same budget
#   -> per-exit exact match and loss for both (table + SVG plots)
#   -> one answer from a shallow exit, and speculative decoding with its speedup.
# Reruns reuse what exists; --fresh starts over. Output: runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/demo
if [ "${1:-}" = "--fresh" ]; then rm -rf "$OUT"; fi
scripts/setup.sh
BIN=build/sortedllama
mkdir -p "$OUT"

echo "== 1/5 synthetic data"
"$BIN" data synth --out "$OUT/data" --train 20000 --valid 300 --test 200 --seed 1

echo "== 2/5 tokenizer"
if [ ! -f "$OUT/tokenizer.model" ]; then
  # Digits split so that arithmetic sees one token per digit; no byte fallback keeps sequences short.
  spm_train --input="$OUT/data/tokenizer_corpus.txt" --model_prefix="$OUT/tokenizer" --vocab_size=400 \
    --model_type=bpe --split_digits=true --character_coverage=1.0 \
    --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2
else
  echo "reusing $OUT/tokenizer.model"
fi

echo "== 3/5 training SoFT and SFT (same model, data, steps)"
for method in soft sft; do
  if [ -f "$OUT/$method/final/model.safetensors" ]; then
    echo "reusing $OUT/$method/final"
  else
    "$BIN" finetune --config configs/demo.json --set method="$method" --set out_dir="$OUT/$method" >"$OUT/$method.config.log"
  fi
done

echo "== 4/5 per-exit exact match on the held-out test set"
for method in soft sft; do
  "$BIN" eval --model "$OUT/$method/final" --task instruct --data "$OUT/data/test.jsonl" --exits all \
    --max-new-tokens 24 --batch-size 50 --out "$OUT/eval_$method" --label "$method" 2>/dev/null >/dev/null
  "$BIN" eval --model "$OUT/$method/final" --task loss --data "$OUT/data/test.jsonl" --exits all \
    --out "$OUT/loss_$method" 2>/dev/null >/dev/null
done
"$BIN" eval --model "$OUT/soft/final" --task instruct --data "$OUT/data/test.jsonl" --exits all \
  --max-new-tokens 24 --batch-size 50 --out "$OUT/eval_soft" --label soft --plot \
  --overlay "$OUT/eval_sft/results.json" 2>/dev/null >/dev/null
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def rows(path, metric):
    return {k: v[metric] for k, v in json.load(open(path))["exits"].items()}
em = {m: rows(f"{out}/eval_{m}/results.json", "exact_match") for m in ("soft", "sft")}
nll = {m: rows(f"{out}/loss_{m}/results.json", "loss") for m in ("soft", "sft")}
print(f"{'exit':>5} {'SoFT exact':>11} {'SFT exact':>10} {'SoFT loss':>10} {'SFT loss':>9}")
for k in sorted(em["soft"], key=int):
    print(f"{k:>5} {em['soft'][k]:>11.3f} {em['sft'][k]:>10.3f} {nll['soft'][k]:>10.3f} {nll['sft'][k]:>9.3f}")
PY
echo "plots: $OUT/eval_soft/plot_*.svg"

echo "== 5/5 a shallow sub-model, and speculative decoding"
PROMPT=$(printf 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nWhat is 47 + 35?\n\n### Response:')
echo "exit 4 of 8 answers: $("$BIN" generate --model "$OUT/soft/final" --exit-layer 4 --max-new-tokens 16 --prompt "$PROMPT" 2>/dev/null)"
"$BIN" generate --model "$OUT/soft/final" --speculative --draft-layer 4 --compare-baseline --max-new-tokens 24 \
  --prompt "$PROMPT" 2>&1 | tail -n 4
