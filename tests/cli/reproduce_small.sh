# scripts/reproduce_paper.sh --small --tiny end to end: every step runs, REPORT.md holds the paper's
# tables with numbers, every results.json it reads exists; a rerun skips every step; bad inputs fail
# with messages naming the file, the step and its log.
source "$(dirname "$0")/../cli_lib.sh"
SCRIPT=$SRC/scripts/reproduce_paper.sh
P=$WORK/paper

t0=$(date +%s)
bash "$SCRIPT" --small --tiny --bin "$BIN" --out "$P" >"$WORK/run1.txt" 2>&1 || { cat "$WORK/run1.txt" >&2; fail "--small --tiny failed"; }
t1=$(date +%s)
echo "first run: $((t1 - t0)) s"
N=$(grep -c "^== step " "$WORK/run1.txt")
[ "$N" -ge 20 ] || fail "expected the full step list, got $N steps"
grep -q "^== step $N/$N report" "$WORK/run1.txt" || fail "the last step is not the report"
[ "$(grep -c "^   ok " "$WORK/run1.txt")" -eq "$N" ] || { cat "$WORK/run1.txt" >&2; fail "not every step ran"; }
grep -qE "^ *exit +PandaLM SoFT +PandaLM SFT +TQA EM SoFT" "$WORK/run1.txt" || fail "no summary table on stdout"

# Every results.json the report relies on, each a well-formed eval result for its task.
/usr/bin/python3 - "$P" <<'PY'
import json, os, sys
out = sys.argv[1]
want = {"instruct": ["instruct-sft", "instruct-soft", "instruct-soft-4ep", "instruct-ict", "decode-speculative",
                     "decode-dynamic"],
        "compare": ["compare-sft", "compare-ict", "compare-soft-4ep", "compare-soft", "compare-matrix"],
        "triviaqa": ["triviaqa-sft", "triviaqa-ict", "triviaqa-soft", "decode-speculative-tqa", "decode-dynamic-tqa"],
        "analysis": ["analysis-sft", "analysis-soft"]}
for task, names in want.items():
    for name in names:
        path = os.path.join(out, "eval", name, "results.json")
        assert os.path.isfile(path), f"missing {path}"
        r = json.load(open(path))
        assert r["task"] == task and r["exits"], (path, r["task"])
for name in ("sft", "soft", "soft-4ep", "ict", "tqa-sft", "tqa-soft", "tqa-ict"):
    assert os.path.isfile(os.path.join(out, "finetune", name, "final", "model.safetensors")), name
ict = json.load(open(os.path.join(out, "finetune", "ict", "final", "config.json")))
assert ict["sortedllama"]["ict_exits"] == [1, 2, 3, 4], ict.get("sortedllama")
spec = json.load(open(os.path.join(out, "eval", "decode-speculative", "results.json")))["exits"]
assert {"5", "spec1", "spec4"} <= set(spec) and all(v["agree_full"] == 1 for k, v in spec.items()), spec
m = json.load(open(os.path.join(out, "eval", "compare-matrix", "results.json")))["details"]["matrix"]
assert m["a_exits"] == [1, 3, 5] and m["b_exits"] == [1, 3, 5], m  # --tiny: PandaLM exits 1,3,5
for svg in ("compare-soft/plot_score.svg", "triviaqa-soft/plot_exact_match_case_sensitive.svg",
            "analysis-soft/plot_kl.svg"):
    assert os.path.getsize(os.path.join(out, "eval", svg)) > 0, svg
PY

# REPORT.md: header, and every table with a numeric row per exit.
R=$P/REPORT.md
[ -s "$R" ] || fail "no REPORT.md"
grep -q "^- binary: .*sortedllama 0\.[0-9]" "$R" || fail "REPORT.md lacks the binary version"
grep -q "^- machine: " "$R" || fail "REPORT.md lacks the machine"
grep -q "^- date: 20" "$R" || fail "REPORT.md lacks the date"
grep -q "reproduce_paper.sh --small --tiny --bin" "$R" || fail "REPORT.md lacks the invocation"
grep -q -- "finetune --config $SRC/configs/llama2-13b-soft-alpaca-4ep.json" "$R" || fail "REPORT.md lacks the commands"
/usr/bin/python3 - "$R" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
num = r"[-+]?\d+\.\d+"
def section(title):
    m = re.search(r"^##+ " + re.escape(title) + r".*?(?=^## )", text, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(0)
def rows(sec, first):
    return [l for l in sec.splitlines() if re.match(r"^\| " + first + r" \|", l)]
t1 = section("Table 1: PandaLM pairwise comparison")
assert "| exit | SFT | SFT+ICT | SoFT 2 ep | SoFT 4 ep |" in t1, t1
r = rows(t1, r"\d")
assert len(r) == 3 and all(len(re.findall(num + r" \(\d+/\d+/\d+\)", l)) == 4 for l in r), r
f1 = section("Figure 1: SoFT exit x SFT exit")
assert len(rows(f1, r"SoFT \d")) == 3 and all(len(re.findall(num, l)) == 3 for l in rows(f1, r"SoFT \d"))
tq = section("TriviaQA exact match per exit")
assert len(rows(tq, r"\d")) == 5 and all(len(re.findall(num, l)) == 9 for l in rows(tq, r"\d")), tq
t2 = section("Table 2: decoding speed")
for kind, n in (("full model", 2), ("static exit", 2 + 4), ("speculative", 8), ("dynamic", 2)):
    got = rows(t2, kind)
    assert len(got) == n, (kind, got)
    assert all(re.search(r"\| " + num + r" \| " + num + r"x \|", l) for l in got), got
an = section("Layer analysis")
assert len(rows(an, r"\d")) == 5 and all(len(re.findall(num, l)) == 5 for l in rows(an, r"\d")), an
ft = section("Fine-tuning")
assert len(rows(ft, r"(SFT|SoFT|SFT\+ICT)[^|]*")) == 7, ft
assert "## Commands" in text
PY

# A rerun skips every step (and is fast), and keeps the report.
sum1=$(sha256sum <"$R")
t0=$(date +%s)
bash "$SCRIPT" --small --tiny --bin "$BIN" --out "$P" >"$WORK/run2.txt" 2>&1 || { cat "$WORK/run2.txt" >&2; fail "rerun failed"; }
t1=$(date +%s)
echo "rerun: $((t1 - t0)) s"
[ "$(grep -c "^== step " "$WORK/run2.txt")" -eq "$N" ] || fail "rerun printed a different step list"
[ "$(grep -c "^   skipping (done)$" "$WORK/run2.txt")" -eq "$N" ] || { cat "$WORK/run2.txt" >&2; fail "rerun redid steps"; }
[ $((t1 - t0)) -le 20 ] || fail "rerun took $((t1 - t0)) s"
[ "$(sha256sum <"$R")" = "$sum1" ] || fail "rerun changed REPORT.md"
grep -qE "^ *exit +PandaLM SoFT" "$WORK/run2.txt" || fail "rerun did not print the summary"

# Removing one step's marker redoes that step only (and then the report).
rm "$P/steps/analysis-sft.done"
bash "$SCRIPT" --small --tiny --bin "$BIN" --out "$P" >"$WORK/run3.txt" 2>&1 || { cat "$WORK/run3.txt" >&2; fail "partial rerun failed"; }
[ "$(grep -c "^   ok " "$WORK/run3.txt")" -eq 2 ] || { cat "$WORK/run3.txt" >&2; fail "expected analysis-sft and report to run"; }

# Bad input: full mode names the missing file or flag before doing anything; a failing step names
# itself and its log.
S=$P/small
full=(--model "$S/stories260K" --triviaqa-train "$S/triviaqa-train.jsonl" --triviaqa-test "$S/triviaqa-test.jsonl"
  --pandalm "$S/pandalm.json" --bin "$BIN")
expect_error "--alpaca: file $WORK/nope.json does not exist" bash "$SCRIPT" "${full[@]}" --alpaca "$WORK/nope.json" \
  --out "$WORK/full"
[ ! -e "$WORK/full" ] || fail "a rejected invocation created its output directory"
expect_error "missing --alpaca FILE" bash "$SCRIPT" "${full[@]}" --out "$WORK/full"
expect_error "--model: $WORK/none/config.json does not exist" bash "$SCRIPT" "${full[@]}" --alpaca "$S/alpaca.json" \
  --model "$WORK/none" --out "$WORK/full"
expect_error "--judge: $WORK/j/config.json does not exist" bash "$SCRIPT" "${full[@]}" --alpaca "$S/alpaca.json" \
  --judge "$WORK/j" --out "$WORK/full"
expect_error "holds a run with other inputs" bash "$SCRIPT" "${full[@]}" --alpaca "$S/alpaca.json" --out "$P"
expect_error "unknown argument '--nope'" bash "$SCRIPT" --small --nope
printf '[{"instruction": 3, "input": "", "output": "x"}]\n' >"$WORK/bad.json"
expect_error "step 1/$N inputs failed" bash "$SCRIPT" "${full[@]}" --alpaca "$WORK/bad.json" --out "$WORK/full"
grep -qF "log: $WORK/full/logs/01-inputs.log" "$WORK/err" || fail "the failure does not name the step's log"
grep -q "bad.json" "$WORK/full/logs/01-inputs.log" || fail "the log does not name the bad file"
bash "$SCRIPT" --help | grep -q "^Usage:" || fail "--help"
echo "reproduce_paper.sh --small --tiny: ok"
