# data synth (deterministic files, manifest, reuse, --fresh) and data prepare (real files, errors).
source "$(dirname "$0")/../cli_lib.sh"
synth() { "$BIN" data synth --train 300 --valid 40 --test 40 "$@"; }
synth --out "$WORK/a" --seed 5 | tee "$WORK/table"
grep -q "^wrote $WORK/a (seed 5" "$WORK/table" || fail "no 'wrote' line"
grep -qE "^task +difficulty +train +valid +test$" "$WORK/table" || fail "no table header"
grep -qE "^capital +1 +1[0-9] +0 +0$" "$WORK/table" || fail "capital 1 is not train-only"
grep -qE "^total +300 +40 +40$" "$WORK/table" || fail "no totals"
/usr/bin/python3 - "$WORK/a" <<'PY'
import hashlib, json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/manifest.json"))
assert m["params"] == {"generator": "sortedllama data synth", "version": 2, "seed": 5, "train": 300, "valid": 40, "test": 40}, m
assert set(m["files"]) == {"train.jsonl", "valid.jsonl", "test.jsonl", "tokenizer_corpus.txt"}, m["files"]
for name, info in m["files"].items():
    assert hashlib.sha256(open(f"{d}/{name}", "rb").read()).hexdigest() == info["sha256"], name
assert sum(n for t in m["counts"]["test"].values() for n in t.values()) == 40
PY

# Same options, same bytes; the second run in place reuses the files unless --fresh.
synth --out "$WORK/b" --seed 5 >/dev/null
for f in train.jsonl valid.jsonl test.jsonl tokenizer_corpus.txt manifest.json; do
  cmp -s "$WORK/a/$f" "$WORK/b/$f" || fail "$f differs between two runs with the same seed"
done
synth --out "$WORK/a" --seed 5 | grep "^reusing $WORK/a" >/dev/null || fail "did not reuse matching files"
synth --out "$WORK/a" --seed 5 --fresh | grep "^wrote" >/dev/null || fail "--fresh did not regenerate"
cmp -s "$WORK/a/train.jsonl" "$WORK/b/train.jsonl" || fail "--fresh changed the bytes"
synth --out "$WORK/a" --seed 6 | grep "^wrote" >/dev/null || fail "a new seed did not regenerate"
cmp -s "$WORK/a/train.jsonl" "$WORK/b/train.jsonl" && fail "seed 6 gave seed 5's data"

/usr/bin/python3 - "$WORK/b" <<'PY'
import json, sys
d = sys.argv[1]
splits = {s: [json.loads(l) for l in open(f"{d}/{s}.jsonl")] for s in ("train", "valid", "test")}
assert [len(splits[s]) for s in ("train", "valid", "test")] == [300, 40, 40]
keys = {s: {(r["instruction"], r["input"]) for r in rs} for s, rs in splits.items()}
assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"] and not keys["valid"] & keys["test"]
for rs in splits.values():
    for r in rs:
        assert list(r) == ["instruction", "input", "output", "task", "difficulty"], r
corpus = open(f"{d}/tokenizer_corpus.txt").read()
assert corpus.count("### Response:") == 380 and corpus.startswith("Below is an instruction that describes a task")
PY

expect_error "--train: Value 0 not in range" "$BIN" data synth --out "$WORK/c" --train 0
expect_error "run out of new" "$BIN" data synth --out "$WORK/c" --test 100000

# prepare: the real files in ../shared/data, then a malformed record.
prep() { "$BIN" data prepare --kind "$1" --input "$SHARED/data/$2" --out "$WORK/p/$1.jsonl" | tee "$WORK/prep"; }
prep alpaca alpaca/alpaca_data_cleaned.json
grep -q "^alpaca: 50921 records in, 50921 records out$" "$WORK/prep" || fail "alpaca counts"
grep -q "input .*alpaca_data_cleaned.json  sha256 66149e0247b815ee9afcbd6f5bb622a7fb57d34da2739fc7b71295f296bfd1f4$" "$WORK/prep" \
  || fail "alpaca input checksum"
grep -q "output $WORK/p/alpaca.jsonl  sha256 $(sha256sum "$WORK/p/alpaca.jsonl" | cut -d' ' -f1)$" "$WORK/prep" \
  || fail "alpaca output checksum"
prep triviaqa triviaqa/triviaqa_unfiltered_test_1000.jsonl
grep -q "^triviaqa: 1000 records in, 1000 records out$" "$WORK/prep" || fail "triviaqa counts"
prep pandalm pandalm/testset-inference-v1.json
grep -q "^pandalm: 170 records in" "$WORK/prep" || fail "pandalm counts"
prep vicuna instruct_eval/vicuna_question.jsonl
grep -q "^vicuna: 80 records in" "$WORK/prep" || fail "vicuna counts"
prep koala instruct_eval/koala_test_set.jsonl
grep -q "^koala: 180 records in" "$WORK/prep" || fail "koala counts"
prep self-instruct instruct_eval/user_oriented_instructions.jsonl
grep -q "^self-instruct: 252 records in, 252 records out$" "$WORK/prep" || fail "self-instruct counts"
head -1 "$WORK/p/koala.jsonl" | grep -q '^{"id":"koala_0","instruction":"Can you list the top 20 films' || fail "koala record"

printf '{"question_id": 1, "turns": ["a"]}\n{"question_id": 2}\n' >"$WORK/bad.jsonl"
expect_error "bad.jsonl:2: missing field \"turns\"" "$BIN" data prepare --kind vicuna --input "$WORK/bad.jsonl" --out "$WORK/x.jsonl"
[ ! -e "$WORK/x.jsonl" ] || fail "a failed conversion left its output"
expect_error "--kind: nope not in" "$BIN" data prepare --kind nope --input "$WORK/bad.jsonl" --out "$WORK/x.jsonl"

# scripts/prepare_data.sh over the shared directory.
SORTEDLLAMA=$BIN bash "$SRC/scripts/prepare_data.sh" "$SHARED/data" "$WORK/all" | tee "$WORK/script"
grep -q "^6 files converted into $WORK/all" "$WORK/script" || fail "prepare_data.sh did not convert the 6 shared files"
(cd "$WORK/all" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS"
echo "data CLI: ok"
