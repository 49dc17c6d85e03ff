# scripts/bench_recipes.sh on a tiny budget, both parts: the demo's data and tokenizer are made by
# `scripts/demo.sh --data-only --out DIR` when absent, every run trains and is evaluated per exit (the
# demo's once per --demo-seeds seed, averaged), the targets follow from the numbers, both plots overlay
# every run, and a bad --parts or --demo-seeds names the option.
source "$(dirname "$0")/../cli_lib.sh"
B=$WORK/bench
SORTEDLLAMA=$BIN "$SRC/scripts/bench_recipes.sh" --recipes soft,anchored --steps 2 --train 32 --held-out 4 \
  --demo-steps 2 --demo-seeds 1,2 --demo-data "$WORK/demo" --threads 1 --out "$B" --work "$WORK/work" >"$WORK/bench.txt" 2>&1 \
  || { cat "$WORK/bench.txt" >&2; fail "bench_recipes failed"; }
[ -f "$WORK/demo/tokenizer.model" ] && [ -f "$WORK/demo/data/test.jsonl" ] || fail "demo.sh --data-only made no data"
[ ! -e "$WORK/demo/soft" ] || fail "demo.sh --data-only trained"
/usr/bin/python3 - "$B" <<'PY'
import json, sys
b = sys.argv[1]
doc = json.load(open(f"{b}/recipes.json"))
assert set(doc["parts"]) == {"stories", "demo"}, doc["parts"].keys()
for name, metric, layers in (("stories", "loss", 5), ("demo", "exact_match", 8)):
    part = doc["parts"][name]
    assert [r["label"] for r in part["results"]] == ["sft", "soft", "anchored"], part["results"]
    assert part["settings"]["steps"] == 2, part["settings"]
    runs = {r["label"]: r[f"exit_{metric}"] for r in part["results"]}
    for label, exits in runs.items():
        assert sorted(exits, key=int) == [str(k) for k in range(1, layers + 1)], (name, label, exits)
    sft = runs["sft"]
    for label in ("soft", "anchored"):
        t, e = part["targets"][label], runs[label]
        if name == "stories":
            assert abs(t["full_gap_nats"] - (e["5"] - sft["5"])) < 1e-9, t
            assert set(t["shallow_gain_nats"]) == {"1", "2"}, t
            met = t["full_gap_nats"] <= 0.15 and all(g >= 3 for g in t["shallow_gain_nats"].values())
        else:
            assert abs(t["last_gap_points"] - 100 * (e["8"] - sft["8"])) < 1e-9, t
            met = t["last_gap_points"] >= -2 and (e["1"] > 0 if sft["1"] == 0 else t["exit1_ratio"] >= 4)
        assert t["met"] == met, (name, label, t)
    if name == "demo":  # each run once per seed; every cell the mean of the seeds' values
        assert part["settings"]["seeds"] == [1, 2], part["settings"]
        for r in part["results"]:
            seeds = r["per_seed"]
            assert [x["seed"] for x in seeds] == [1, 2], r
            for k, v in r["exit_exact_match"].items():
                assert abs(v - sum(x["exit_exact_match"][k] for x in seeds) / 2) < 1e-12, (r["label"], k)
    svg = open(f"{b}/{part['plot']}").read()
    for label in runs:
        assert label in svg, (part["plot"], label)
md = open(f"{b}/recipes.md").read()
assert "| anchored (recommended) |" in md and "## The demo's synthetic set: exact match" in md, md
PY
expect_error "--parts nope" env SORTEDLLAMA="$BIN" "$SRC/scripts/bench_recipes.sh" --parts stories,nope --out "$WORK/b2" --work "$WORK/w2"
expect_error "--demo-seeds" env SORTEDLLAMA="$BIN" "$SRC/scripts/bench_recipes.sh" --demo-seeds 1,x --out "$WORK/b3" --work "$WORK/w3"
