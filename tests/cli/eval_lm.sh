# eval --task lm: per-exit NLL table and JSON.
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null
cat >"$WORK/text.jsonl" <<'TXT'
{"text": "Once upon a time, there was a little girl named Lily. She loved to play outside."}
{"text": "One day, a big dog saw a red ball in the park. The dog was happy."}
{"text": "zq xv kk pp qq rr zz xx"}
TXT
"$BIN" eval --model "$M" --task lm --data "$WORK/text.jsonl" --exits all --out "$WORK/r.json" | tee "$WORK/table"
grep -qE "^ +exit +nll +ppl +tokens" "$WORK/table" || fail "no table header"
/usr/bin/python3 - "$WORK/r.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
assert r["task"] == "lm" and set(r["exits"]) == {"1", "2", "3", "4", "5"}, r
for k, v in r["exits"].items():
    assert abs(v["ppl"] - math.exp(v["nll"])) < 1e-6 * v["ppl"] and v["tokens"] > 30, (k, v)
# The pretrained model's last layer fits text far better than its first (no SoFT training here).
assert r["exits"]["5"]["nll"] < r["exits"]["1"]["nll"] - 0.5, r["exits"]
PY
expect_error "layer 7 is outside" "$BIN" eval --model "$M" --task lm --data "$WORK/text.jsonl" --exits 2,7
expect_error "unknown task" "$BIN" eval --model "$M" --task nope --data "$WORK/text.jsonl"
printf '{"text": 5}\n' >"$WORK/bad.jsonl"
expect_error "bad.jsonl:1: field \"text\" is number, not a string" "$BIN" eval --model "$M" --data "$WORK/bad.jsonl"
echo "eval lm CLI: ok"
