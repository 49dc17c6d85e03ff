# scripts/bench_decoding.sh on a real model: every mode runs (the tuned one too), the table and JSON have their columns,
# and speculative decoding (exact by construction) agrees with full decoding token for token.
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --from llama2c --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null
printf 'Tom had a dog\nThe sky\n' >"$WORK/p.txt"
printf 'Lily saw a cat\nOnce upon a time\nThe big tree\n' >"$WORK/tune.txt"
SORTEDLLAMA=$BIN "$SRC/scripts/bench_decoding.sh" "$M" --prompts "$WORK/p.txt" --tune-prompts "$WORK/tune.txt" \
  --max-new-tokens 24 --threads 1 --repeat 2 --tree 2 \
  --out "$WORK/bench" >"$WORK/table" 2>"$WORK/err" || { cat "$WORK/err" >&2; fail "bench_decoding.sh failed"; }
grep -q "| speculative | draft layer 1 |" "$WORK/table" || fail "no speculative row: $(cat "$WORK/table")"
grep -q "| speculative | draft layer 1, tree 2 |" "$WORK/table" || fail "no draft-tree row: $(cat "$WORK/table")"
grep -q "1 threads" "$WORK/bench/decoding.md" || fail "the machine line does not show the threads used"
/usr/bin/python3 - "$WORK/bench/decoding.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["repeat"] == 2, d
modes = [(r["mode"], r["setting"]) for r in d["results"]]
assert ("full", "5 layers") in modes and ("dynamic", "default thresholds") in modes, modes
assert ("dynamic", "default thresholds, copied K/V") in modes, modes
assert sum(m == "exit" for m, _ in modes) == 4 and sum(m == "speculative" for m, _ in modes) == 9, modes
assert [s for m, s in modes if m == "speculative"][:2] == ["draft layer 1", "draft layer 1, tree 2"], modes
tuned = [r for r in d["results"] if r["setting"].startswith("tuned: draft layer ")]
assert len(tuned) == 1 and tuned[0]["tune"]["measured_end_to_end"] > 0, tuned
for r in d["results"]:
    for k in ("ms_per_token", "speedup", "decode_ms_per_token", "decode_speedup", "agreement", "exact_match"):
        assert k in r and r[k] >= 0, (k, r)
    if r["mode"] == "speculative":
        assert r["exact_match"] == 1.0 and 0 <= r["acceptance_rate"] <= 1, r
        assert r["acceptance_rate_at"] and all(0 <= a <= 1 for a in r["acceptance_rate_at"]), r
        assert r["draft_ms"] > 0 and r["verify_ms"] > 0 and r["mean_tokens_per_round"] >= 1, r
        assert (r["tree_nodes"] > 0) == ("tree" in r["setting"]) and r["tree_accepted"] <= r["tree_nodes"], r
full = d["results"][0]
assert full["mode"] == "full" and full["speedup"] == 1.0 and full["decode_speedup"] == 1.0, full
assert 0 < d["full_prefill_share"] < 1 and abs(d["exact_speedup_ceiling"] * d["full_prefill_share"] - 1) < 1e-12, d
PY
grep -q "answers [0-9.]*\. Prefill takes [0-9]*% .* neither can be more than [0-9.]*x faster end to end" "$WORK/bench/decoding.md" || fail "no end-to-end ceiling line"
