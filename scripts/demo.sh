#!/usr/bin/env bash
# The embedded default, end to end, with nothing from outside the repository:
#   synthetic instruction data with exactly checkable answers (sortedllama data synth)
#   -> a sentencepiece tokenizer trained on it (spm_train)
#   -> a tiny LLaMA (8 layers) trained from scratch with SoFT and with SFT on the same budget
#   -> per-exit exact match and loss for both, and exact match per task (tables + SVG plots)
#   -> one answer from a shallow exit, and the paper's Table 2 for the SoFT model (static exits,
#      speculative decoding, early exit: speed against full decoding, agreement with it).
# Reruns reuse what exists (and start over when the settings below or configs/demo.json change).
# About 6 minutes on 2 idle CPU cores.
#
#   scripts/demo.sh [--fresh] [--data-only] [--out DIR]
#
# --fresh starts over; --data-only stops after the data and the tokenizer (scripts/bench_recipes.sh
# trains on them); --out DIR writes there instead of runs/demo. SORTEDLLAMA=path/to/binary uses that
# binary instead of setting up and building build/sortedllama.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/demo
FRESH=0
DATA_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) FRESH=1 ;;
    --data-only) DATA_ONLY=1 ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a directory" >&2; exit 2; }; OUT=$2; shift ;;
    *) echo "error: unknown option $1 (expected --fresh, --data-only or --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
CONFIG=configs/demo.json
SYNTH=(--train 20000 --valid 300 --test 200 --seed 1)
# Digits split so that arithmetic sees one token per digit; no byte fallback keeps sequences short.
# The fixed text of the Alpaca template is one piece per sentence or header, and a digit after a space
# one piece: a record is ~22 tokens instead of ~52, so a training step costs less than half. A vocab of
# 800 gives every country, capital, thing and colour of the fact tables a piece of its own.
TEMPLATE_PIECES='▁Below▁is▁an▁instruction▁that▁describes▁a▁task.,▁Below▁is▁an▁instruction▁that▁describes▁a▁task'
TEMPLATE_PIECES+=',▁paired▁with▁an▁input▁that▁provides▁further▁context.'
TEMPLATE_PIECES+=',▁Write▁a▁response▁that▁appropriately▁completes▁the▁request.'
TEMPLATE_PIECES+=',▁###▁Instruction:,▁###▁Input:,▁###▁Response:,▁0,▁1,▁2,▁3,▁4,▁5,▁6,▁7,▁8,▁9'
SPM=(--vocab_size=800 --model_type=bpe --split_digits=true --character_coverage=1.0
     --user_defined_symbols="$TEMPLATE_PIECES" --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1)

stamp=$({ cat "$CONFIG"; echo "${SYNTH[*]} ${SPM[*]}"; } | sha256sum | cut -c1-16)
if [ "$FRESH" = 1 ]; then
  rm -rf "$OUT"
elif [ -d "$OUT" ] && [ "$(cat "$OUT/settings.sha" 2>/dev/null)" != "$stamp" ]; then
  echo "settings changed since $OUT was made: starting over"
  rm -rf "$OUT"
fi
if [ -n "${SORTEDLLAMA:-}" ]; then
  BIN=$SORTEDLLAMA
else
  scripts/setup.sh
  BIN=build/sortedllama
fi
mkdir -p "$OUT"
echo "$stamp" >"$OUT/settings.sha"
SECONDS=0

echo "== 1/5 synthetic data"
"$BIN" data synth --out "$OUT/data" "${SYNTH[@]}"

echo "== 2/5 tokenizer"
if [ ! -f "$OUT/tokenizer.model" ]; then
  spm_train --input="$OUT/data/tokenizer_corpus.txt" --model_prefix="$OUT/tokenizer" "${SPM[@]}" --minloglevel=2
else
  echo "reusing $OUT/tokenizer.model"
fi
[ "$DATA_ONLY" = 1 ] && exit 0

echo "== 3/5 training SoFT and SFT (same model, data, steps)"
# configs/demo.json names runs/demo; these follow --out.
DATA_SETS=(--set tokenizer="$OUT/tokenizer.model" --set data.train="$OUT/data/train.jsonl" --set data.valid="$OUT/data/valid.jsonl")
for method in soft sft; do
  if [ -f "$OUT/$method/final/model.safetensors" ]; then
    echo "reusing $OUT/$method/final"
  else
    echo "-- $method ($(date +%T))"
    "$BIN" finetune --config "$CONFIG" --set method="$method" --set out_dir="$OUT/$method" "${DATA_SETS[@]}" \
      >"$OUT/$method.config.log"
  fi
done

echo "== 4/5 per-exit exact match on the held-out test set ($(date +%T))"
# Answers are at most 8 tokens; SFT first, so that SoFT's plots can overlay it.
for method in sft soft; do
  plot=(); [ "$method" = soft ] && plot=(--plot --overlay "$OUT/eval_sft/results.json")
  "$BIN" eval --model "$OUT/$method/final" --task instruct --data "$OUT/data/test.jsonl" --exits all \
    --max-new-tokens 16 --batch-size 50 --out "$OUT/eval_$method" --label "$method" "${plot[@]}" 2>/dev/null >/dev/null
  "$BIN" eval --model "$OUT/$method/final" --task loss --data "$OUT/data/test.jsonl" --exits all \
    --out "$OUT/loss_$method" 2>/dev/null >/dev/null
done
/usr/bin/python3 - "$OUT" <<'PY'
import collections, json, sys
out = sys.argv[1]
def rows(path, metric):
    return {k: v[metric] for k, v in json.load(open(path))["exits"].items()}
em = {m: rows(f"{out}/eval_{m}/results.json", "exact_match") for m in ("soft", "sft")}
nll = {m: rows(f"{out}/loss_{m}/results.json", "loss") for m in ("soft", "sft")}
exits = sorted(em["soft"], key=int)
print(f"{'exit':>5} {'SoFT exact':>11} {'SFT exact':>10} {'SoFT loss':>10} {'SFT loss':>9}")
for k in exits:
    print(f"{k:>5} {em['soft'][k]:>11.3f} {em['sft'][k]:>10.3f} {nll['soft'][k]:>10.3f} {nll['sft'][k]:>9.3f}")
# Exact match per task at the shallowest and the last exit, from the per-answer samples.
task = {}
for line in open(f"{out}/data/test.jsonl"):
    r = json.loads(line)
    task[(r["instruction"], r["input"])] = r["task"]
def per_task(method, k):
    hits = collections.defaultdict(list)
    for line in open(f"{out}/eval_{method}/samples_exit{k}.jsonl"):
        s = json.loads(line)
        hits[task[(s["instruction"], s["input"])]].append(s["output"].strip() == s["reference"].strip())
    return hits
first, last = exits[0], exits[-1]
cols = [(m, k) for k in (first, last) for m in ("soft", "sft")]
hits = {c: per_task(*c) for c in cols}
names = {"soft": "SoFT", "sft": "SFT"}
print()
print(f"{'task':>8} {'n':>4}" + "".join(f"{names[m] + ' exit ' + k:>13}" for m, k in cols))
for t in sorted(hits[cols[0]]):
    print(f"{t:>8} {len(hits[cols[0]][t]):>4}" + "".join(f"{sum(hits[c][t]) / len(hits[c][t]):>13.3f}" for c in cols))
PY
echo "plots: $OUT/eval_soft/plot_*.svg"

echo "== 5/5 a shallow sub-model, speculative decoding and early exit ($(date +%T))"
PROMPT=$(printf 'Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nGive the capital of each country.\n\n### Input:\nDravia, Olmet\n\n### Response:')
echo "exit 2 of 8 answers: $("$BIN" generate --model "$OUT/soft/final" --exit-layer 2 --max-new-tokens 16 --prompt "$PROMPT" 2>/dev/null)"
# The paper's Table 2 for the SoFT model over 32 test questions (also in $OUT/decoding/).
SORTEDLLAMA="$BIN" scripts/bench_decoding.sh "$OUT/soft/final" --prompts "$OUT/data/test.jsonl" --repeat 2 --out "$OUT/decoding" 2>/dev/null \
  | grep '^|'
echo "demo: ${SECONDS}s after the build"
