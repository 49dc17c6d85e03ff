#!/usr/bin/env bash
# Converts downloaded datasets into the toolkit's JSONL with `sortedllama data prepare`, printing
# record counts and checksums, and writes OUT_DIR/SHA256SUMS.
#
#   scripts/prepare_data.sh [INPUT_DIR] [OUT_DIR]
#
# INPUT_DIR (default ../shared/data beside the repository) is searched recursively for:
#   alpaca_data.json, alpaca_data_cleaned*.json            -> alpaca-<name>.jsonl
#   unfiltered-web-*.json, verified-*.json, *trivia*.jsonl  -> triviaqa-<name>.jsonl
#   testset-inference-v1.json (PandaLM)                     -> pandalm-<name>.jsonl
#   question.jsonl, vicuna_question.jsonl                    -> vicuna-<name>.jsonl
#   koala_test_set.jsonl                                     -> koala-<name>.jsonl
#   user_oriented_instructions.jsonl (Self-Instruct)         -> self-instruct-<name>.jsonl
# OUT_DIR defaults to data/prepared in the repository; keep it out of git (the data has its own licenses).
# The binary is $SORTEDLLAMA, else build/sortedllama.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
in=$(realpath -m "${1:-$root/../shared/data}")
out=$(realpath -m "${2:-$root/data/prepared}")
bin=${SORTEDLLAMA:-$root/build/sortedllama}
[ -x "$bin" ] || { echo "no sortedllama binary at $bin (build it or set SORTEDLLAMA)" >&2; exit 1; }
[ -d "$in" ] || { echo "no input directory $in" >&2; exit 1; }
mkdir -p "$out"

made=()
while IFS= read -r -d '' f; do
  name=$(basename "$f")
  case "$name" in
    alpaca_data.json | alpaca_data_cleaned*.json) kind=alpaca ;;
    unfiltered-web-*.json | verified-*.json | *trivia*.jsonl) kind=triviaqa ;;
    testset-inference-v1.json) kind=pandalm ;;
    question.jsonl | vicuna_question.jsonl) kind=vicuna ;;
    koala_test_set.jsonl) kind=koala ;;
    user_oriented_instructions.jsonl) kind=self-instruct ;;
    *) continue ;;
  esac
  dest="$out/$kind-${name%.*}.jsonl"
  "$bin" --log-level warn data prepare --kind "$kind" --input "$f" --out "$dest"
  made+=("$(basename "$dest")")
done < <(find "$in" -path "$out" -prune -o -type f -print0 | sort -z)

[ ${#made[@]} -gt 0 ] || { echo "no known dataset file under $in" >&2; exit 1; }
(cd "$out" && sha256sum "${made[@]}" > SHA256SUMS)
echo "${#made[@]} files converted into $out (checksums in SHA256SUMS)"
