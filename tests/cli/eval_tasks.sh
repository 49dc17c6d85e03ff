# eval tasks end to end on stories260K: triviaqa (generated, then re-scored from its own samples),
# instruct -> compare with a tiny judge, analysis, loss, speed, plots; results.json validated
# against the schema in docs/results_schema.md; bad inputs fail with clear messages.
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null
TQA=$SHARED/data/triviaqa/triviaqa_unfiltered_test_1000.jsonl
VICUNA=$SHARED/data/instruct_eval/vicuna_question.jsonl

validate() { validate_schema "Schema" "$@"; }

# triviaqa: two exits, table on stdout, samples, plots.
"$BIN" eval --model "$M" --task triviaqa --data "$TQA" --limit 6 --exits 2,5 --batch-size 4 --out "$WORK/tqa" --plot \
  --label "stories run" | tee "$WORK/tqa.txt"
grep -qE "^ +exit +exact_match +exact_match_case_sensitive +exact_match_official +f1 +n" "$WORK/tqa.txt" || fail "triviaqa table"
for f in results.json results.md samples_exit2.jsonl samples_exit5.jsonl plot_exact_match.svg plot_f1.svg; do
  [ -s "$WORK/tqa/$f" ] || fail "missing $f"
done
[ "$(wc -l <"$WORK/tqa/samples_exit5.jsonl")" -eq 6 ] || fail "samples_exit5.jsonl should hold 6 records"
/usr/bin/python3 - "$WORK/tqa/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["task"] == "triviaqa" and set(r["exits"]) == {"2", "5"}, r
assert r["n-samples"]["triviaqa"] == {"original": 1000, "effective": 6}, r["n-samples"]
assert r["results"]["triviaqa"]["exit"] == "5" and r["config"]["limit"] == 6
# every option as parsed, defaults included (none hand-copied)
assert r["config"]["exits"] == "2,5" and r["config"]["batch_size"] == 4 and r["config"]["label"] == "stories run", r["config"]
assert r["config"]["judge_tokenizer"] == "" and r["config"]["decode"] == "exit" and r["config"]["plot"] is True, r["config"]
# lm-evaluation-harness 0.4's names (docs/results_schema.md)
head = r["results"]["triviaqa"]
assert head["exact_match,remove_whitespace"] == head["exact_match"] and head["exact_match_stderr,remove_whitespace"] >= 0, head
import math
em = [json.loads(l)["exact_match"] for l in open(sys.argv[1].replace("results.json", "samples_exit5.jsonl"))]
mu = sum(em) / len(em)
se = math.sqrt(sum((x - mu) ** 2 for x in em) / (len(em) - 1) / len(em))
assert abs(head["exact_match_stderr,remove_whitespace"] - se) < 1e-12, (head, se)
s = json.loads(open(sys.argv[1].replace("results.json", "samples_exit5.jsonl")).readline())
for k in ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "exact_match"):
    assert k in s, k
assert s["doc_id"] == 0 and s["resps"] == [[s["continuation"]]] and s["filtered_resps"] == [s["prediction"]], s
assert s["arguments"][0][0].startswith("Question: ") and s["arguments"][0][1]["until"] == ["\n", ".", ","], s
for m in r["exits"].values():
    assert m["n"] == 6 and 0 <= m["exact_match"] <= 1 and 0 <= m["f1"] <= 1, m
PY

# The same answers re-scored without a model give the same numbers (any system is scored alike).
"$BIN" eval --task triviaqa --data "$TQA" --predictions "$WORK/tqa/samples_exit2.jsonl" "$WORK/tqa/samples_exit5.jsonl" \
  --out "$WORK/rescored" --plot --overlay "$WORK/tqa/results.json" >/dev/null
/usr/bin/python3 - "$WORK/tqa/results.json" "$WORK/rescored/results.json" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
for e in ("2", "5"):
    for k in ("exact_match", "exact_match_case_sensitive", "exact_match_official", "f1", "n"):
        assert abs(a["exits"][e][k] - b["exits"][e][k]) < 1e-12, (e, k, a["exits"][e], b["exits"][e])
PY
[ "$(grep -c "<polyline" "$WORK/rescored/plot_f1.svg")" -eq 2 ] || fail "overlay plot should draw two runs"
grep -q ">stories run<" "$WORK/rescored/plot_f1.svg" || fail "the overlaid run's legend is not its --label"

# Few-shot prompts from a file of solved questions.
"$BIN" eval --model "$M" --task triviaqa --data "$TQA" --limit 2 --exits 5 --num-fewshot 2 --fewshot-file "$TQA" \
  --max-new-tokens 8 --out "$WORK/fewshot.json" >/dev/null
[ -s "$WORK/samples_exit5.jsonl" ] && [ -s "$WORK/fewshot.md" ] || fail "--out FILE.json writes the other files beside it"

# The speculative and dynamic decoders in eval: the full model is the baseline row, outputs agree with it exactly.
"$BIN" eval --model "$M" --task triviaqa --data "$TQA" --limit 4 --exits 2 --decode speculative --out "$WORK/spec" \
  >/dev/null
"$BIN" eval --model "$M" --task triviaqa --data "$TQA" --limit 4 --decode dynamic --thresholds 2:0.5 --out "$WORK/dyn" \
  >/dev/null
/usr/bin/python3 - "$WORK/spec/results.json" "$WORK/dyn/results.json" <<'PY'
import json, sys
spec, dyn = (json.load(open(f))["exits"] for f in sys.argv[1:])
assert set(spec) == {"5", "spec2"} and spec["spec2"]["agree_full"] == 1 and "acceptance_rate" in spec["spec2"], spec
assert spec["spec2"]["exact_match"] == spec["5"]["exact_match"], spec
assert set(dyn) == {"5", "dynamic"} and 1 <= dyn["dynamic"]["mean_layers_per_token"] <= 5, dyn
d = spec["spec2"]["decoding"]
assert d["mode"] == "speculative" and sum(d["proposed_at"]) == d["drafted"] and sum(d["accepted_at"]) == d["accepted"], d
assert d["acceptance_rate"] == spec["spec2"]["acceptance_rate"] and spec["5"]["decoding"]["mode"] == "plain", spec
assert dyn["dynamic"]["decoding"]["mode"] == "dynamic" and "exit_histogram" in dyn["dynamic"]["decoding"], dyn
PY
# Copied K/V instead of recomputed ones: recorded in the config.
"$BIN" eval --model "$M" --task triviaqa --data "$TQA" --limit 4 --decode dynamic --thresholds 2:0.5 --skipped-kv copy \
  --out "$WORK/dyncopy" >/dev/null
/usr/bin/python3 - "$WORK/dyncopy/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["config"]["skipped_kv"] == "copy" and set(r["exits"]) == {"5", "dynamic"}, r["config"]
PY
expect_error "--skipped-kv: share not in {recompute,copy}" "$BIN" eval --model "$M" --task triviaqa --data "$TQA" \
  --decode dynamic --skipped-kv share
# With a draft tree too.
"$BIN" eval --model "$M" --task triviaqa --data "$TQA" --limit 4 --exits 1 --decode speculative --draft-tree 3 \
  --out "$WORK/tree" >/dev/null
/usr/bin/python3 - "$WORK/tree/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["exits"]
assert r["spec1"]["agree_full"] == 1 and r["spec1"]["decoding"]["tree_nodes"] > 0, r
PY

# instruct -> compare: the same sample set against itself is an even match whatever the judge says.
"$BIN" eval --model "$M" --task instruct --data "$VICUNA" --limit 3 --exits 1,5 --max-new-tokens 12 --out "$WORK/ins" \
  >/dev/null
/usr/bin/python3 - "$WORK/ins/samples_exit1.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 3 and set(rows[0]) >= {"id", "instruction", "input", "output", "exit"} and rows[0]["exit"] == 1, rows
PY
"$BIN" eval --task compare --samples-a "$WORK/ins" --samples-b "$WORK/ins" --judge "$M" --matrix --limit 2 --out "$WORK/cmp" \
  | tee "$WORK/cmp.txt"
grep -q "score matrix" "$WORK/cmp.txt" || fail "compare --matrix prints the matrix"
/usr/bin/python3 - "$WORK/cmp/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert set(r["exits"]) == {"1 vs 1", "1 vs 5", "5 vs 1", "5 vs 5"}, r["exits"]
for name in ("1 vs 1", "5 vs 5"):
    m = r["exits"][name]
    assert m["n"] == 2 and m["wins"] + m["ties"] + m["losses"] == 4 and m["score"] == 0, m
assert r["details"]["matrix"]["a_exits"] == [1, 5] and len(r["details"]["matrix"]["score"]) == 2
PY
[ "$(wc -l <"$WORK/cmp/judgements_a1_b5.jsonl")" -eq 4 ] || fail "each pair judged in both orders"

# analysis: the last exit against itself is KL 0, cosine 1.
"$BIN" eval --model "$M" --task analysis --data "$VICUNA" --limit 2 --positions 5 --exits 2,5 --out "$WORK/ana" >/dev/null
/usr/bin/python3 - "$WORK/ana/results.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["exits"]
assert abs(e["5"]["kl"]) < 1e-6 and abs(e["5"]["cosine"] - 1) < 1e-5, e["5"]
assert e["2"]["kl"] > 0 and len(e["2"]["kl_by_position"]) == 5, e["2"]
PY

# loss and speed.
# (the first 8 Alpaca records: tokenizing all 50K would dominate the test's time)
/usr/bin/python3 -c "import json,sys; json.dump(json.load(open(sys.argv[1]))[:8], open(sys.argv[2], 'w'))" \
  "$SHARED/data/alpaca/alpaca_data_cleaned.json" "$WORK/alpaca8.json"
"$BIN" eval --model "$M" --task loss --data "$WORK/alpaca8.json" --exits 1,5 \
  --out "$WORK/loss" >/dev/null
"$BIN" eval --model "$M" --task speed --data "$VICUNA" --limit 2 --max-new-tokens 8 --exits 1,5 --out "$WORK/speed" \
  >/dev/null
/usr/bin/python3 - "$WORK/loss/results.json" "$WORK/speed/results.json" <<'PY'
import json, math, sys
loss, speed = (json.load(open(f))["exits"] for f in sys.argv[1:])
assert loss["5"]["tokens"] > 100 and abs(loss["5"]["ppl"] - math.exp(loss["5"]["loss"])) < 1e-6 * loss["5"]["ppl"], loss
assert speed["1"]["tokens_per_s"] > 0 and speed["5"]["decode_speedup"] == 1, speed
PY
validate "$WORK"/{tqa,rescored,spec,dyn,cmp,ana,loss,speed}/results.json "$WORK/fewshot.json"

# Bad input.
expect_error "layer 9 is outside" "$BIN" eval --model "$M" --task triviaqa --data "$TQA" --exits 2,9
expect_error "unknown task" "$BIN" eval --model "$M" --task nope --data "$TQA"
printf '{"question_id": "qw_2021", "prediction": "x"}\n{"question_id": "nope", "prediction": "y"}\n' >"$WORK/p.jsonl"
expect_error "p.jsonl:2: question_id \"nope\" is not in the questions file" \
  "$BIN" eval --task triviaqa --data "$TQA" --predictions "$WORK/p.jsonl"
printf '{"question": "q?", "answers": "x"}\n' >"$WORK/q.jsonl"
expect_error "q.jsonl:1: field \"answers\" is string" "$BIN" eval --model "$M" --task triviaqa --data "$WORK/q.jsonl"
printf '{"prompt": "a"}\n{"instruction": 3}\n' >"$WORK/i.jsonl"
expect_error "i.jsonl:2: field \"instruction\" is number" "$BIN" eval --model "$M" --task instruct --data "$WORK/i.jsonl"
expect_error "do not belong together" "$BIN" eval --task compare --samples-a "$WORK/ins" --samples-b "$WORK/ins" \
  --judge "$M" --judge-tokenizer "$SHARED/models/llama2-tokenizer/tokenizer.model"
expect_error "--decode beam: unknown mode" "$BIN" eval --model "$M" --task instruct --data "$VICUNA" --decode beam
echo "eval tasks CLI: ok"
