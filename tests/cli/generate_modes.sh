# generate --speculative / --dynamic on a real model: outputs, --json stats, --compare-baseline, errors.
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --from llama2c --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null
printf 'Tom had a dog\nThe sky\nOnce upon a time, a little bird\n' >"$WORK/p.txt"

# Greedy speculative decoding prints exactly what plain decoding prints.
"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 60 >"$WORK/plain.txt"
"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 60 --speculative --draft-layer 2 \
  >"$WORK/spec.txt" 2>"$WORK/spec.err"
cmp "$WORK/plain.txt" "$WORK/spec.txt" || fail "speculative output differs from plain decoding"
grep -q "accepted" "$WORK/spec.err" || fail "no speculative stats on stderr"
# A single prompt streams; the text is the same.
one=$("$BIN" generate --model "$M" --prompt "" --max-new-tokens 40 --speculative --draft-layer 3 --draft-tokens 6 2>/dev/null)
[[ "$one" == "Once upon a time, there was a little girl named Lily."* ]] || fail "unexpected streamed story: $one"

"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 30 --speculative --draft-layer 1 \
  --draft-tokens 3 --compare-baseline --json >"$WORK/spec.jsonl" 2>"$WORK/spec.err"
grep -q "speedup" "$WORK/spec.err" || fail "no speedup on stderr"
/usr/bin/python3 - "$WORK/spec.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 3, rows
for r in rows:
    s = r["stats"]
    assert s["mode"] == "speculative" and s["draft_layer"] == 1 and s["draft_tokens"] == 3, s
    for k in ("drafted", "accepted", "acceptance_rate", "rounds", "mean_accepted_per_round", "tokens_per_s",
              "ms_per_token", "speedup", "baseline", "prompt_tokens", "new_tokens"):
        assert k in s, k
    assert 0 <= s["acceptance_rate"] <= 1 and s["accepted"] <= s["drafted"], s
    # The per-position histogram adds up; drafting and verifying are parts of decoding.
    assert sum(s["proposed_at"]) == s["drafted"] and sum(s["accepted_at"]) == s["accepted"], s
    assert len(s["acceptance_rate_at"]) == len(s["proposed_at"]) == 3, s
    assert 0 < s["draft_ms"] and 0 < s["verify_ms"] and s["draft_ms"] + s["verify_ms"] <= s["decode_ms"], s
    assert s["baseline"]["mode"] == "plain" and "drafted" not in s["baseline"], s
    assert s["identical_to_baseline"] == 3 and r["matches_baseline"] is True, r
PY

# A draft tree prints what plain decoding prints too, and reports its nodes.
"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 60 --speculative --draft-layer 1 \
  --draft-tree 3 >"$WORK/tree.txt" 2>"$WORK/tree.err"
cmp "$WORK/plain.txt" "$WORK/tree.txt" || fail "draft-tree output differs from plain decoding"
grep -q "draft tree 3" "$WORK/tree.err" && grep -q "accepted from the tree" "$WORK/tree.err" || fail "no tree stats: $(cat "$WORK/tree.err")"
"$BIN" generate --model "$M" --prompt "Tom had a dog" --max-new-tokens 20 --speculative --draft-layer 1 --draft-tree 2 \
  --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
s = json.loads(sys.stdin.readline())["stats"]
assert s["draft_tree"] == 2 and s["tree_nodes"] > 0 and 0 <= s["tree_accepted"] <= s["tree_nodes"], s'

# Dynamic: thresholds above 1 never exit early (plain output); defaults give an exit histogram.
"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 60 --dynamic --thresholds 2:1.1,4:1.1 \
  >"$WORK/dyn.txt" 2>"$WORK/dyn.err"
cmp "$WORK/plain.txt" "$WORK/dyn.txt" || fail "dynamic with thresholds > 1 differs from plain decoding"
grep -q "layers/token" "$WORK/dyn.err" || fail "no dynamic stats on stderr"
"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 60 --dynamic --thresholds 2:1.1,4:1.1 \
  --skipped-kv copy >"$WORK/dyn_copy.txt" 2>"$WORK/dyn_copy.err"
cmp "$WORK/plain.txt" "$WORK/dyn_copy.txt" || fail "dynamic, copied K/V, with thresholds > 1 differs from plain decoding"
grep -q "copy skipped K/V" "$WORK/dyn_copy.err" || fail "the dynamic summary does not name copied K/V"
"$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 30 --dynamic --confidence margin \
  --compare-baseline --json >"$WORK/dyn.jsonl"
/usr/bin/python3 - "$WORK/dyn.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 3, rows
for r in rows:
    s = r["stats"]
    assert s["mode"] == "dynamic" and s["confidence"] == "margin" and s["skipped_kv"] == "recompute", s
    assert s["thresholds"] == "1:0.95,2:0.95,3:0.9,4:0.9", s["thresholds"]
    assert 1 <= s["mean_layers_per_token"] <= 5 and sum(s["exit_histogram"].values()) > 0, s
    assert s["layers_run"] >= sum(s["exit_histogram"].values()) and "drafted" not in s, s
    assert len(r["token_exits"]) == len(r["tokens"]) and all(1 <= e <= 5 for e in r["token_exits"]), r
    assert "speedup" in s and isinstance(r["matches_baseline"], bool), s
PY

expect_error "draft_layer 5 must be in 1..4" "$BIN" generate --model "$M" --prompt hi --speculative --draft-layer 5
expect_error "draft_layer 3 must be in 1..2" "$BIN" generate --model "$M" --prompt hi --speculative --draft-layer 3 --exit-layer 3
expect_error "excludes" "$BIN" generate --model "$M" --prompt hi --speculative --dynamic
expect_error "draft trees are greedy only: --draft-tree needs --temperature 0" "$BIN" generate --model "$M" --prompt hi \
  --speculative --draft-tree 2 --temperature 0.7
expect_error "--draft-tree" "$BIN" generate --model "$M" --prompt hi --speculative --draft-tree -1
expect_error "requires" "$BIN" generate --model "$M" --prompt hi --draft-tree 2
expect_error "requires" "$BIN" generate --model "$M" --prompt hi --thresholds 2:0.5
expect_error "\"2=0.5\" is not LAYER:THRESHOLD" "$BIN" generate --model "$M" --prompt hi --dynamic --thresholds 2=0.5
expect_error "layer 9 is outside the model's 1..5 layers" "$BIN" generate --model "$M" --prompt hi --dynamic --thresholds 9:0.5
expect_error "dynamic decoding runs the full model" "$BIN" generate --model "$M" --prompt hi --dynamic --exit-layer 3
expect_error "--skipped-kv: keep not in {recompute,copy}" "$BIN" generate --model "$M" --prompt hi --dynamic --skipped-kv keep
expect_error "requires" "$BIN" generate --model "$M" --prompt hi --skipped-kv copy
echo "generate modes CLI: ok"
