#!/usr/bin/env bash
# Reproduces the Sorted LLaMA paper (Kavehzadeh et al. 2023) end to end with one resumable pipeline:
# fine-tuning (SFT, SoFT 2 and 4 epochs, SFT+ICT on Alpaca; SFT, SoFT, SFT+ICT on TriviaQA), PandaLM
# instruction outputs per exit, PandaLM pairwise comparisons against the SFT full model (and the
# SoFT x SFT exit matrix), TriviaQA exact match per exit, speculative and dynamic decoding tables,
# the KL / cosine layer analysis, and OUT/REPORT.md laid out like the paper's tables and figures.
#
# Usage:
#   scripts/reproduce_paper.sh --model DIR --alpaca FILE --triviaqa-train FILE --triviaqa-test FILE
#                              --pandalm FILE [--judge DIR] [--out DIR] [--bin PATH]
#                              [--set key=value ...] [--nproc N] [--device D] [--threads N] [--fresh]
#   scripts/reproduce_paper.sh --small [--tiny] [--judge DIR] [--out DIR] [--bin PATH] [--fresh]
#
# Full mode (LLaMA 2 13B on GPUs): fine-tunes with configs/llama2-13b-*.json, overriding their
#   model, data and out_dir; --set key=value (repeatable) overrides any other finetune key in every
#   run (e.g. --set train.batch_size=2 --set train.grad_accum=16). Without --judge (an HF LLaMA
#   judge such as PandaLM-7B converted to safetensors) the comparison steps are skipped with a
#   note; rerun later with --judge to add them.
# --small: the same steps on stories260K (converted from ../shared/models) and slices of the real
#   Alpaca, TriviaQA and PandaLM files in ../shared/data (15-45 minutes on 2 CPU cores); the converted
#   model is also the judge (its verdicts are meaningless, the mechanics are real).
# --tiny (with --small): very small slices and budgets for CI (about a minute on 2 cores).
#
# Options:
#   --out DIR      results directory (default: runs/paper, runs/paper-small or runs/paper-tiny)
#   --bin PATH     sortedllama binary (default: $SORTEDLLAMA, else build/sortedllama)
#   --nproc N      run every fine-tune as N data-parallel ranks (sortedllama launch --nproc N)
#   --device D     global --device for every run (auto | cpu | cuda | cuda:N)
#   --threads N    global --threads for every run (--tiny: 1 unless given)
#   --fresh        delete OUT (only a directory this script made) and start over
#   -h, --help     this text
#
# Every step is skipped when its marker OUT/steps/NAME.done exists (delete it to redo the step);
# an interrupted fine-tune resumes from its newest step-* checkpoint. A failing step stops the
# script, naming the step and its log (OUT/logs/NN-NAME.log). Layout: OUT/data (prepared inputs),
# OUT/finetune/NAME/final, OUT/eval/NAME/results.json (+ samples, plots), OUT/steps/NAME.{cmd,done},
# OUT/REPORT.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$ROOT/../shared

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 1; }
abspath() { realpath -m -- "$1"; }

INVOCATION=$(printf '%q ' "$0" "$@")
MODE=full TINY=0 FRESH=0
MODEL='' ALPACA='' TQA_TRAIN='' TQA_TEST='' PANDALM='' JUDGE='' OUT='' BIN=${SORTEDLLAMA:-}
USER_SETS=() GLOBAL=() NPROC=1
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --small) MODE=small; shift ;;
    --tiny) TINY=1; shift ;;
    --fresh) FRESH=1; shift ;;
    --model) need_arg "$@"; MODEL=$(abspath "$2"); shift 2 ;;
    --alpaca) need_arg "$@"; ALPACA=$(abspath "$2"); shift 2 ;;
    --triviaqa-train) need_arg "$@"; TQA_TRAIN=$(abspath "$2"); shift 2 ;;
    --triviaqa-test) need_arg "$@"; TQA_TEST=$(abspath "$2"); shift 2 ;;
    --pandalm) need_arg "$@"; PANDALM=$(abspath "$2"); shift 2 ;;
    --judge) need_arg "$@"; JUDGE=$(abspath "$2"); shift 2 ;;
    --out) need_arg "$@"; OUT=$(abspath "$2"); shift 2 ;;
    --bin) need_arg "$@"; BIN=$2; shift 2 ;;
    --set) need_arg "$@"; [[ $2 == *=* ]] || die "--set $2: expected key=value"; USER_SETS+=("--set" "$2"); shift 2 ;;
    --nproc) need_arg "$@"; [[ $2 =~ ^[1-9][0-9]*$ ]] || die "--nproc $2: expected a positive integer"; NPROC=$2; shift 2 ;;
    --device) need_arg "$@"; GLOBAL+=(--device "$2"); shift 2 ;;
    --threads) need_arg "$@"; GLOBAL+=(--threads "$2"); shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[ "$TINY" = 0 ] || [ "$MODE" = small ] || die "--tiny only goes with --small"
if [ -z "$BIN" ]; then BIN=$ROOT/build/sortedllama; fi
[ -x "$BIN" ] || die "--bin: no executable sortedllama binary at $BIN (build it, or pass --bin / set SORTEDLLAMA)"
BIN=$(abspath "$BIN")
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

if [ "$MODE" = small ]; then
  for v in MODEL ALPACA TQA_TRAIN TQA_TEST PANDALM; do
    [ -z "${!v}" ] || die "--small makes its own model and data slices; drop --model/--alpaca/--triviaqa-*/--pandalm"
  done
  [ -f "$SHARED/models/stories260K/stories260K.bin" ] || die "--small: no $SHARED/models/stories260K/stories260K.bin"
  [ -f "$SHARED/data/alpaca/alpaca_data_cleaned.json" ] || die "--small: no $SHARED/data/alpaca/alpaca_data_cleaned.json"
  [ -n "$OUT" ] || OUT=$ROOT/runs/paper-$([ "$TINY" = 1 ] && echo tiny || echo small)
  SMALL=$OUT/small
  MODEL=$SMALL/stories260K
  ALPACA=$SMALL/alpaca.json
  TQA_TRAIN=$SMALL/triviaqa-train.jsonl
  TQA_TEST=$SMALL/triviaqa-test.jsonl
  PANDALM=$SMALL/pandalm.json
  [ -n "$JUDGE" ] || JUDGE=$MODEL
else
  [ -n "$MODEL" ] || die "missing --model DIR (the base model, e.g. Llama-2-13b-hf in safetensors; or use --small)"
  [ -f "$MODEL/config.json" ] || die "--model: $MODEL/config.json does not exist"
  [ -n "$ALPACA" ] || die "missing --alpaca FILE (Stanford Alpaca JSON)"
  [ -n "$TQA_TRAIN" ] || die "missing --triviaqa-train FILE"
  [ -n "$TQA_TEST" ] || die "missing --triviaqa-test FILE"
  [ -n "$PANDALM" ] || die "missing --pandalm FILE (PandaLM testset-inference-v1.json)"
  [ -f "$ALPACA" ] || die "--alpaca: file $ALPACA does not exist"
  [ -f "$TQA_TRAIN" ] || die "--triviaqa-train: file $TQA_TRAIN does not exist"
  [ -f "$TQA_TEST" ] || die "--triviaqa-test: file $TQA_TEST does not exist"
  [ -f "$PANDALM" ] || die "--pandalm: file $PANDALM does not exist"
  [ -n "$OUT" ] || OUT=$ROOT/runs/paper
fi
if [ -n "$JUDGE" ] && [ "$JUDGE" != "$MODEL" ]; then
  [ -f "$JUDGE/config.json" ] || die "--judge: $JUDGE/config.json does not exist"
fi

# Budgets. Full mode: the configs' and the CLI's defaults (the paper's settings). Small modes: the
# same steps with CPU-sized slices and budgets (every value below is passed explicitly).
CFG=$ROOT/configs
PANDALM_EXITS=auto  # exits answering PandaLM (their pairs make the comparisons' cost)
if [ "$MODE" = full ]; then
  FT_ALPACA=() FT_TQA=()
  INSTRUCT=() TQA=() JUDGE_ARGS=() ANALYSIS=() DECODE_INSTRUCT=() DECODE_TQA=()
elif [ "$TINY" = 0 ]; then
  N_ALPACA=320 N_TQA_TRAIN=320 N_TQA_TEST=100 N_PANDALM=8
  FT_ALPACA=(--set train.batch_size=16 --set train.grad_accum=1 --set train.lr=1e-3 --set data.max_seq_len=256
    --set train.checkpoint_activations=false --set log.eval_every=0 --set save.every=20)
  FT_TQA=(--set train.batch_size=16 --set train.grad_accum=1 --set train.lr=1e-3
    --set train.checkpoint_activations=false --set log.eval_every=0 --set save.every=20)
  INSTRUCT=(--max-new-tokens 48 --batch-size 16)
  TQA=(--max-new-tokens 16 --batch-size 50)
  JUDGE_ARGS=(--judge-max-new-tokens 16 --batch-size 16)
  ANALYSIS=(--positions 16 --batch-size 16)
  DECODE_INSTRUCT=("${INSTRUCT[@]:0:2}") DECODE_TQA=("${TQA[@]:0:2}")
else
  N_ALPACA=8 N_TQA_TRAIN=8 N_TQA_TEST=4 N_PANDALM=1 PANDALM_EXITS=1,3,5
  FT_ALPACA=(--set train.batch_size=8 --set train.grad_accum=1 --set train.lr=1e-3 --set data.max_seq_len=192
    --set train.checkpoint_activations=false --set log.every=1 --set log.eval_every=0 --set save.every=0)
  FT_TQA=(--set train.batch_size=8 --set train.grad_accum=1 --set train.lr=1e-3
    --set train.checkpoint_activations=false --set log.every=1 --set log.eval_every=0 --set save.every=0)
  INSTRUCT=(--max-new-tokens 4) TQA=(--max-new-tokens 4)
  JUDGE_ARGS=(--judge-max-new-tokens 1) ANALYSIS=(--positions 4)
  DECODE_INSTRUCT=("${INSTRUCT[@]}") DECODE_TQA=("${TQA[@]}")
  # Tiny runs are dominated by per-call overheads; one thread is faster on a shared 2-core machine.
  [[ " ${GLOBAL[*]-} " == *" --threads "* ]] || GLOBAL+=(--threads 1)
fi

# Resuming is only safe with the same inputs: OUT/run.args records them (the judge, binary, device,
# threads and ranks may change between runs).
ARGS_TEXT=$(printf 'mode=%s tiny=%s\nmodel=%s\nalpaca=%s\ntriviaqa-train=%s\ntriviaqa-test=%s\npandalm=%s\nset=%s\n' \
  "$MODE" "$TINY" "$MODEL" "$ALPACA" "$TQA_TRAIN" "$TQA_TEST" "$PANDALM" "${USER_SETS[*]+${USER_SETS[*]}}")
if [ "$FRESH" = 1 ] && [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  [ -f "$OUT/run.args" ] || die "--fresh: $OUT was not made by this script (no run.args); remove it yourself"
  rm -rf -- "$OUT"
fi
if [ -f "$OUT/run.args" ]; then
  if [ "$(cat "$OUT/run.args")" != "$ARGS_TEXT" ]; then
    echo "error: $OUT holds a run with other inputs; use another --out or --fresh. Recorded vs now:" >&2
    diff <(cat "$OUT/run.args") <(echo "$ARGS_TEXT") >&2 || true
    exit 1
  fi
elif [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  die "--out $OUT exists, is not empty and was not made by this script"
fi
mkdir -p "$OUT/logs" "$OUT/steps" "$OUT/data" "$OUT/finetune" "$OUT/eval"
echo "$ARGS_TEXT" >"$OUT/run.args"
printf '%s  %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$INVOCATION" >>"$OUT/invocations.txt"

STEPS=(inputs ft-sft ft-soft ft-soft-4ep ft-ict ft-tqa-sft ft-tqa-soft ft-tqa-ict
  instruct-sft instruct-soft instruct-soft-4ep instruct-ict
  compare-sft compare-ict compare-soft-4ep compare-soft compare-matrix
  triviaqa-sft triviaqa-ict triviaqa-soft
  decode-speculative decode-dynamic decode-speculative-tqa decode-dynamic-tqa
  analysis-sft analysis-soft report)
N=${#STEPS[@]}
CUR='' IDX=0 LOG=''
SECONDS=0

# start NAME DESCRIPTION: prints the step header; false (skip) when the step is done.
start() {
  CUR=$1 IDX=0
  local i
  for i in "${!STEPS[@]}"; do [ "${STEPS[$i]}" = "$1" ] && IDX=$((i + 1)); done
  [ "$IDX" -gt 0 ] || die "internal: unknown step $1"
  LOG=$OUT/logs/$(printf '%02d' "$IDX")-$1.log
  echo "== step $IDX/$N $1: $2"
  if [ -f "$OUT/steps/$1.done" ]; then
    echo "   skipping (done)"
    return 1
  fi
  : >"$OUT/steps/$1.cmd"
  : >"$LOG"
  return 0
}
# run CMD...: runs one command of the current step, appending to its log; records it in OUT/steps.
run() {
  printf '%q ' "$@" >>"$OUT/steps/$CUR.cmd"
  echo >>"$OUT/steps/$CUR.cmd"
  echo "\$ $*" >>"$LOG"
  local rc=0 t0=$SECONDS
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "error: step $IDX/$N $CUR failed (exit code $rc) running: $*" >&2
    echo "       log: $LOG (last lines below)" >&2
    tail -n 15 "$LOG" | sed 's/^/  | /' >&2
    exit 1
  fi
  echo "   done in $((SECONDS - t0)) s" >>"$LOG"
}
finish() {
  date -u '+%Y-%m-%dT%H:%M:%SZ' >"$OUT/steps/$CUR.done"
  echo "   ok ($(tail -n 1 "$LOG" | sed 's/^ *//'); log $LOG)"
}
sl() { run "$BIN" ${GLOBAL[@]+"${GLOBAL[@]}"} --log-level warn "$@"; }
sl_info() { run "$BIN" ${GLOBAL[@]+"${GLOBAL[@]}"} "$@"; }

# ---------------------------------------------------------------------------------------- inputs
if start inputs "prepare the data (data prepare)$([ "$MODE" = small ] && echo "; small mode: convert stories260K, slice the real data")"; then
  if [ "$MODE" = small ]; then
    mkdir -p "$SMALL"
    sl convert --from llama2c --input "$SHARED/models/stories260K/stories260K.bin" \
      --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$MODEL"
    run "$PY" "$ROOT/scripts/reproduce_slices.py" --shared "$SHARED/data" --out "$SMALL" --alpaca "$N_ALPACA" \
      --triviaqa-train "$N_TQA_TRAIN" --triviaqa-test "$N_TQA_TEST" --pandalm "$N_PANDALM"
  fi
  sl_info data prepare --kind alpaca --input "$ALPACA" --out "$OUT/data/alpaca.jsonl"
  sl_info data prepare --kind triviaqa --input "$TQA_TRAIN" --out "$OUT/data/triviaqa-train.jsonl"
  sl_info data prepare --kind triviaqa --input "$TQA_TEST" --out "$OUT/data/triviaqa-test.jsonl"
  sl_info data prepare --kind pandalm --input "$PANDALM" --out "$OUT/data/pandalm.jsonl"
  finish
fi
D=$OUT/data
FT=$OUT/finetune
EV=$OUT/eval

# ------------------------------------------------------------------------------------- finetune
# finetune NAME CONFIG BASE_MODEL DATA OVERRIDES...: resumes from OUT/finetune/NAME/step-* if any.
finetune() {
  local name=$1 config=$2 base=$3 data=$4; shift 4
  local resume=() launcher=()
  [ "$NPROC" = 1 ] || launcher=(launch --nproc "$NPROC" --)
  if compgen -G "$FT/$name/step-*" >/dev/null; then resume=(--resume); echo "   resuming from $FT/$name"; fi
  sl_info ${launcher[@]+"${launcher[@]}"} finetune --config "$config" --set "model=$base" --set "data.train=$data" --set "out_dir=$FT/$name" \
    "$@" ${USER_SETS[@]+"${USER_SETS[@]}"} ${resume[@]+"${resume[@]}"}
  [ -f "$FT/$name/final/model.safetensors" ] || { echo "error: step $CUR: no $FT/$name/final/model.safetensors" >&2; exit 1; }
}
if start ft-sft "SFT on Alpaca (2 epochs; configs/llama2-13b-sft-alpaca.json)"; then
  finetune sft "$CFG/llama2-13b-sft-alpaca.json" "$MODEL" "$D/alpaca.jsonl" ${FT_ALPACA[@]+"${FT_ALPACA[@]}"}
  finish
fi
if start ft-soft "SoFT on Alpaca (2 epochs; configs/llama2-13b-soft-alpaca.json)"; then
  finetune soft "$CFG/llama2-13b-soft-alpaca.json" "$MODEL" "$D/alpaca.jsonl" ${FT_ALPACA[@]+"${FT_ALPACA[@]}"}
  finish
fi
if start ft-soft-4ep "SoFT on Alpaca (4 epochs; configs/llama2-13b-soft-alpaca-4ep.json)"; then
  finetune soft-4ep "$CFG/llama2-13b-soft-alpaca-4ep.json" "$MODEL" "$D/alpaca.jsonl" ${FT_ALPACA[@]+"${FT_ALPACA[@]}"}
  finish
fi
if start ft-ict "SFT+ICT on Alpaca from the SFT checkpoint (configs/llama2-13b-ict-alpaca.json)"; then
  finetune ict "$CFG/llama2-13b-ict-alpaca.json" "$FT/sft/final" "$D/alpaca.jsonl" ${FT_ALPACA[@]+"${FT_ALPACA[@]}"}
  finish
fi
if start ft-tqa-sft "SFT on TriviaQA (configs/llama2-13b-sft-triviaqa.json)"; then
  finetune tqa-sft "$CFG/llama2-13b-sft-triviaqa.json" "$MODEL" "$D/triviaqa-train.jsonl" ${FT_TQA[@]+"${FT_TQA[@]}"}
  finish
fi
if start ft-tqa-soft "SoFT on TriviaQA (configs/llama2-13b-soft-triviaqa.json)"; then
  finetune tqa-soft "$CFG/llama2-13b-soft-triviaqa.json" "$MODEL" "$D/triviaqa-train.jsonl" ${FT_TQA[@]+"${FT_TQA[@]}"}
  finish
fi
if start ft-tqa-ict "SFT+ICT on TriviaQA from the TriviaQA SFT checkpoint (ICT config, TriviaQA data settings)"; then
  # No 13B file for this run: the Alpaca ICT config with the TriviaQA configs' data and batch settings.
  finetune tqa-ict "$CFG/llama2-13b-ict-alpaca.json" "$FT/tqa-sft/final" "$D/triviaqa-train.jsonl" \
    --set data.format=triviaqa --set data.max_seq_len=128 --set train.batch_size=16 --set train.grad_accum=2 \
    --set log.eval_every=500 --set save.every=1000 ${FT_TQA[@]+"${FT_TQA[@]}"}
  finish
fi

# ----------------------------------------------------------------------------- PandaLM outputs
for m in sft soft soft-4ep ict; do
  if start "instruct-$m" "PandaLM instruction outputs of every exit of $m"; then
    sl eval --model "$FT/$m/final" --task instruct --data "$D/pandalm.jsonl" --exits "$PANDALM_EXITS" --label "$m" \
      --out "$EV/instruct-$m" ${INSTRUCT[@]+"${INSTRUCT[@]}"} ${N_PANDALM:+--limit "$N_PANDALM"}
    finish
  fi
done

# -------------------------------------------------------------------------- pairwise comparisons
# Pairs "k:L" for every exit k of a sample directory, L its model's last layer (Table 1: each exit
# against the SFT full model).
pairs_vs_last() {
  "$PY" - "$1/results.json" <<'PY'
import json, sys
exits = sorted(int(k) for k in json.load(open(sys.argv[1]))["exits"] if k.isdigit())
print(",".join(f"{k}:{exits[-1]}" for k in exits))
PY
}
compare() {  # compare NAME SYSTEM_A DESCRIPTION [extra args]
  local name=$1 a=$2 desc=$3; shift 3
  if start "$name" "$desc"; then
    if [ -z "$JUDGE" ]; then
      echo "   skipping: no --judge given (rerun with --judge DIR, e.g. PandaLM-7B, to add this step)"
      rm -f "$OUT/steps/$name.cmd"
      return 0
    fi
    sl eval --task compare --samples-a "$EV/instruct-$a" --samples-b "$EV/instruct-sft" --judge "$JUDGE" \
      --label "$a" --out "$EV/$name" ${JUDGE_ARGS[@]+"${JUDGE_ARGS[@]}"} "$@"
    finish
  fi
}
compare compare-sft sft "PandaLM: SFT exit k vs SFT full model (judge ${JUDGE:-none})" \
  --pairs "$(pairs_vs_last "$EV/instruct-sft")"
compare compare-ict ict "PandaLM: SFT+ICT exit k vs SFT full model" --pairs "$(pairs_vs_last "$EV/instruct-ict")"
compare compare-soft-4ep soft-4ep "PandaLM: SoFT (4 epochs) exit k vs SFT full model" \
  --pairs "$(pairs_vs_last "$EV/instruct-soft-4ep")"
overlay=()
for m in sft ict soft-4ep; do [ -f "$EV/compare-$m/results.json" ] && overlay+=("$EV/compare-$m/results.json"); done
compare compare-soft soft "PandaLM: SoFT (2 epochs) exit k vs SFT full model (+ plots)" \
  --pairs "$(pairs_vs_last "$EV/instruct-soft")" --plot ${overlay[@]+--overlay "${overlay[@]}"}
compare compare-matrix soft "PandaLM: every SoFT exit vs every SFT exit (the paper's matrix)" --matrix

# ---------------------------------------------------------------------------------------- TriviaQA
for m in sft ict soft; do
  if start "triviaqa-$m" "TriviaQA exact match per exit, $m fine-tuned on TriviaQA"; then
    extra=()
    if [ "$m" = soft ]; then
      extra=(--plot --overlay)
      for o in sft ict; do extra+=("$EV/triviaqa-$o/results.json"); done
    fi
    sl eval --model "$FT/tqa-$m/final" --task triviaqa --data "$D/triviaqa-test.jsonl" --exits auto --label "$m" \
      --out "$EV/triviaqa-$m" ${TQA[@]+"${TQA[@]}"} ${extra[@]+"${extra[@]}"}
    finish
  fi
done

# ---------------------------------------------------------------------------------------- decoding
if start decode-speculative "self-speculative decoding on PandaLM with the SoFT model, every draft exit"; then
  sl eval --model "$FT/soft/final" --task instruct --data "$D/pandalm.jsonl" --decode speculative \
    --batch-size 1 --out "$EV/decode-speculative" ${DECODE_INSTRUCT[@]+"${DECODE_INSTRUCT[@]}"} \
    ${N_PANDALM:+--limit "$N_PANDALM"}
  finish
fi
if start decode-dynamic "dynamic early exit on PandaLM with the SoFT model (the paper's thresholds)"; then
  sl eval --model "$FT/soft/final" --task instruct --data "$D/pandalm.jsonl" --decode dynamic \
    --batch-size 1 --out "$EV/decode-dynamic" ${DECODE_INSTRUCT[@]+"${DECODE_INSTRUCT[@]}"} \
    ${N_PANDALM:+--limit "$N_PANDALM"}
  finish
fi
if start decode-speculative-tqa "self-speculative decoding on TriviaQA with the TriviaQA SoFT model"; then
  sl eval --model "$FT/tqa-soft/final" --task triviaqa --data "$D/triviaqa-test.jsonl" --decode speculative \
    --batch-size 1 --out "$EV/decode-speculative-tqa" ${DECODE_TQA[@]+"${DECODE_TQA[@]}"}
  finish
fi
if start decode-dynamic-tqa "dynamic early exit on TriviaQA with the TriviaQA SoFT model"; then
  sl eval --model "$FT/tqa-soft/final" --task triviaqa --data "$D/triviaqa-test.jsonl" --decode dynamic \
    --batch-size 1 --out "$EV/decode-dynamic-tqa" ${DECODE_TQA[@]+"${DECODE_TQA[@]}"}
  finish
fi

# ---------------------------------------------------------------------------------------- analysis
if start analysis-sft "layer analysis of SFT: KL to the last layer and cosine, per exit and position"; then
  sl eval --model "$FT/sft/final" --task analysis --data "$D/pandalm.jsonl" --exits auto --label sft \
    --out "$EV/analysis-sft" ${ANALYSIS[@]+"${ANALYSIS[@]}"} ${N_PANDALM:+--limit "$N_PANDALM"}
  finish
fi
if start analysis-soft "layer analysis of SoFT (also KL to the SFT full model) (+ plots)"; then
  sl eval --model "$FT/soft/final" --task analysis --data "$D/pandalm.jsonl" --exits auto --label soft \
    --reference "$FT/sft/final" --out "$EV/analysis-soft" --plot --overlay "$EV/analysis-sft/results.json" \
    ${ANALYSIS[@]+"${ANALYSIS[@]}"} ${N_PANDALM:+--limit "$N_PANDALM"}
  finish
fi

# ---------------------------------------------------------------------------------------- report
# Redone whenever a step finished after the last REPORT.md (e.g. a rerun that adds --judge).
if [ -f "$OUT/REPORT.md" ] && [ -z "$(find "$OUT/steps" -name '*.done' ! -name report.done -newer "$OUT/REPORT.md")" ]; then
  touch "$OUT/steps/report.done"
else
  rm -f "$OUT/steps/report.done"
fi
if start report "REPORT.md from the results.json files"; then
  run "$PY" "$ROOT/scripts/reproduce_report.py" --out "$OUT" --bin "$BIN" \
    --mode "$MODE$([ "$TINY" = 1 ] && echo ' --tiny')" --judge "${JUDGE:-}"
  finish
fi
[ -f "$OUT/summary.txt" ] && cat "$OUT/summary.txt"
echo "report: $OUT/REPORT.md (this run: $SECONDS s)"
