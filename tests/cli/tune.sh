# tune on a real model: the profile lands in config.json (the other keys and profile kept),
# generate --speculative and eval --decode speculative use it unless a draft layer is given, the
# JSON results follow docs/results_schema.md, and bad inputs fail naming the option.
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --from llama2c --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null
/usr/bin/python3 - "$M/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["custom_key"] = {"kept": True}
c["decoding"] = {"dynamic": {"thresholds": [{"layer": 2, "threshold": 0.9}], "confidence": "max_prob"}}
json.dump(c, open(sys.argv[1], "w"))
PY
for who in Tom Lily Ben Sue "a cat" "the dog"; do
  for did in saw had wanted found; do echo "One day, $who $did a"; done
done >"$WORK/prompts.txt"

"$BIN" --threads 1 tune --model "$M" --prompts "$WORK/prompts.txt" --draft-layers 2,4 --max-draft-tokens 3 \
  --confidences 0.5 --new-tokens 16 --verify 2 --repeats 1 --out "$WORK/tune.json" >"$WORK/tune.txt" 2>"$WORK/tune.err" \
  || { cat "$WORK/tune.err" >&2; fail "tune failed"; }
cat "$WORK/tune.txt"
grep -q "<- chosen" "$WORK/tune.txt" || fail "no candidate chosen"
grep -q "decoding profile written to $M/config.json (decoding.speculative)" "$WORK/tune.err" || fail "no log of the written profile"
validate_schema "Tune results schema" "$WORK/tune.json"
/usr/bin/python3 - "$WORK/tune.json" "$M/config.json" <<'PY'
import json, sys
r, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert len(r["candidates"]) == 2 * (3 + 1 + 1), len(r["candidates"])
assert sum(x["measured"] for x in r["candidates"]) == 2
assert c["custom_key"] == {"kept": True}, c
assert c["decoding"]["dynamic"]["thresholds"] == [{"layer": 2, "threshold": 0.9}], "the dynamic profile was lost"
s, ch = c["decoding"]["speculative"], r["chosen"]
assert (s["draft_layer"], s["draft_tokens"], s["draft_confidence"]) == (ch["draft_layer"], ch["draft_tokens"], ch["draft_confidence"]), (s, ch)
assert s["draft_layer"] in (2, 4) and s["batch_size"] == 1 and s["tuned"]["measured_end_to_end"] == ch["measured_end_to_end"], s
PY
layer=$(json_get "$M/config.json" 'd["decoding"]["speculative"]["draft_layer"]')

# generate --speculative without --draft-layer uses the profile; its output is the full model's.
"$BIN" generate --model "$M" --prompt-file "$WORK/prompts.txt" --max-new-tokens 16 --speculative --json \
  >"$WORK/prof.jsonl" 2>"$WORK/prof.err"
grep -q "speculative: draft layer $layer, .* from the tuned profile in $M/config.json (measured" "$WORK/prof.err" \
  || { cat "$WORK/prof.err"; fail "generate did not say it used the profile"; }
"$BIN" generate --model "$M" --prompt-file "$WORK/prompts.txt" --max-new-tokens 16 --json >"$WORK/plain.jsonl" 2>/dev/null
/usr/bin/python3 - "$WORK/prof.jsonl" "$WORK/plain.jsonl" "$layer" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert [x["text"] for x in a] == [x["text"] for x in b], "speculative output differs from plain"
assert all(x["stats"]["draft_layer"] == int(sys.argv[3]) for x in a), a[0]["stats"]
PY
# An explicit draft layer wins; a sub-model verifier does not take the full model's profile.
"$BIN" generate --model "$M" --prompt hi --max-new-tokens 4 --speculative --draft-layer 1 >/dev/null 2>"$WORK/own.err"
grep -q "tuned profile" "$WORK/own.err" && fail "--draft-layer did not win over the profile"
"$BIN" generate --model "$M" --prompt hi --max-new-tokens 4 --speculative --exit-layer 4 --draft-layer 0 >/dev/null 2>"$WORK/sub.err" || true
"$BIN" generate --model "$M" --prompt hi --max-new-tokens 4 --speculative --exit-layer 4 >/dev/null 2>"$WORK/sub.err"
grep -q "profile is for the full model as verifier" "$WORK/sub.err" || { cat "$WORK/sub.err"; fail "a sub-model verifier used the profile"; }
# eval --decode speculative uses it too (one draft row), unless --exits is given.
printf '{"instruction": "Tell a story about %s."}\n' cat dog >"$WORK/instr.jsonl"
"$BIN" eval --model "$M" --task instruct --data "$WORK/instr.jsonl" --decode speculative --max-new-tokens 8 --out "$WORK/ev" \
  >/dev/null 2>"$WORK/ev.err"
grep -q "from the tuned profile" "$WORK/ev.err" || { cat "$WORK/ev.err"; fail "eval did not use the profile"; }
[ -f "$WORK/ev/samples_spec$layer.jsonl" ] || { ls "$WORK/ev"; fail "eval has no row for the profile's draft layer"; }
# --no-write and --json: results on stdout, config.json untouched.
cp "$M/config.json" "$WORK/config.before"
"$BIN" --threads 1 tune --model "$M" --prompts "$WORK/prompts.txt" --draft-layers 3 --max-draft-tokens 2 --confidences none \
  --no-adaptive --new-tokens 8 --verify 1 --repeats 1 --no-write --json >"$WORK/nw.json" 2>/dev/null
cmp "$M/config.json" "$WORK/config.before" || fail "--no-write changed config.json"
validate_schema "Tune results schema" "$WORK/nw.json"
[ "$(json_get "$WORK/nw.json" 'len(d["candidates"])')" = 2 ] || fail "--no-adaptive --confidences none should leave 2 candidates"

# Bad inputs.
tune() { "$BIN" tune --model "$M" --new-tokens 4 --verify 1 --repeats 1 "$@"; }
expect_error '--confidences: "1.5" is not a probability in (0, 1)' tune --prompts "$WORK/prompts.txt" --confidences 0.5,1.5
expect_error '--confidences: "" is not a probability' tune --prompts "$WORK/prompts.txt" --confidences 0.5,
expect_error "--draft-layers 5 holds no layer below the last (5)" tune --prompts "$WORK/prompts.txt" --draft-layers 5
expect_error "--draft-layers" tune --prompts "$WORK/prompts.txt" --draft-layers 9
expect_error "--prompts: File does not exist: $WORK/missing.txt" tune --prompts "$WORK/missing.txt"
printf '{"prompt": "a"}\n{"prompt": \n' >"$WORK/bad.jsonl"
expect_error "--prompts: $WORK/bad.jsonl:2: malformed JSON" tune --prompts "$WORK/bad.jsonl"
: >"$WORK/empty.txt"
expect_error "--prompts $WORK/empty.txt: no prompts in it" tune --prompts "$WORK/empty.txt"
cmp "$M/config.json" "$WORK/config.before" || fail "a failed tune changed config.json"
echo "tune CLI: ok"
