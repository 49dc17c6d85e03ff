# Wrong options and inputs fail with a message naming the option or file and a non-zero exit, and
# nothing the user had is replaced: generate, eval, convert, finetune.
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null
gen() { "$BIN" generate --model "$M" --max-new-tokens 4 "$@"; }

# generate: options
expect_error "--exit-layer 0 is outside the model's 1..5 layers" gen --prompt hi --exit-layer 0
expect_error "--draft-layer must be at least 1" gen --prompt hi --speculative --draft-layer 0
expect_error "a threshold is a confidence in [0, 1]" gen --prompt hi --dynamic --thresholds 2:-0.1
expect_error "a threshold is a confidence in [0, 1]" gen --prompt hi --dynamic --thresholds 2:nan
expect_error "--thresholds is empty" gen --prompt hi --dynamic --thresholds ""
gen --prompt hi --dynamic --thresholds 2:1.5 >/dev/null 2>&1 || fail "a threshold above 1 (never exit there) was refused"
expect_error "--seed 18446744073709551616 is out of range" gen --prompt hi --seed 18446744073709551616
expect_error "--seed -1 is not a non-negative integer" gen --prompt hi --seed -1
expect_error "--max-new-tokens 1000000000 needs a KV cache" "$BIN" generate --model "$M" --prompt hi --max-new-tokens 1000000000
expect_error "cannot load tokenizer $WORK: not a file" gen --prompt hi --tokenizer "$WORK"
: >"$WORK/empty.txt"
expect_error "--prompt-file $WORK/empty.txt: no prompts" gen --prompt-file "$WORK/empty.txt"
printf '\n\n' >"$WORK/blank.jsonl"
expect_error "--prompt-file $WORK/blank.jsonl: no prompts" gen --prompt-file "$WORK/blank.jsonl"
# --top-p 0 keeps the most likely token: sampling with it is greedy decoding.
greedy=$("$BIN" generate --model "$M" --prompt "" --max-new-tokens 12 2>/dev/null)
topp0=$("$BIN" generate --model "$M" --prompt "" --max-new-tokens 12 --temperature 1 --top-p 0 --seed 5 2>/dev/null)
[ "$greedy" = "$topp0" ] || fail "--top-p 0 is not greedy: '$topp0' vs '$greedy'"
# A failed write of the results (a full disk) is an error, not a success.
rc=0
gen --prompt hi --json >/dev/full 2>"$WORK/err" || rc=$?
[ "$rc" -ne 0 ] && grep -q "cannot write to standard output" "$WORK/err" || fail "generate --json > /dev/full exited $rc"

# eval: inputs
: >"$WORK/none.jsonl"
expect_error "$WORK/none.jsonl: no records" "$BIN" eval --model "$M" --task lm --data "$WORK/none.jsonl"
printf '{"text": ""}\n{"text": ""}\n' >"$WORK/empty-texts.jsonl"
expect_error "every text is empty" "$BIN" eval --model "$M" --task lm --data "$WORK/empty-texts.jsonl"
printf '{"question_id": "q1", "question": "Q", "answers": ["a"]}\n' >"$WORK/q.jsonl"
printf '{"question_id": "q1", "prediction": "a", "exit": -3}\n' >"$WORK/pred.jsonl"
expect_error "pred.jsonl:1: field \"exit\" is -3, not a layer number" \
  "$BIN" eval --task triviaqa --data "$WORK/q.jsonl" --predictions "$WORK/pred.jsonl"
printf '{"task": "lm", "exits": {"abc": {"nll": 1}}}\n' >"$WORK/bad-overlay.json"
printf '{"text": "Once upon a time"}\n' >"$WORK/t.jsonl"
expect_error "exit \"abc\" is not a layer number" "$BIN" eval --model "$M" --task lm --data "$WORK/t.jsonl" \
  --out "$WORK/lm" --plot --overlay "$WORK/bad-overlay.json"
printf '{"task": "lm", "exits": {"2": 5}}\n' >"$WORK/bad-overlay2.json"
expect_error "the metrics of exit 2 are not an object" "$BIN" eval --model "$M" --task lm --data "$WORK/t.jsonl" \
  --out "$WORK/lm" --plot --overlay "$WORK/bad-overlay2.json"

# convert: an existing file or foreign directory at --out is never replaced.
echo "my notes" >"$WORK/notes.txt"
expect_error "refusing to replace $WORK/notes.txt: it is not a directory" "$BIN" convert \
  --input "$SHARED/models/stories260K/stories260K.bin" --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$WORK/notes.txt"
[ "$(cat "$WORK/notes.txt")" = "my notes" ] || fail "convert replaced a regular file"
mkdir -p "$WORK/photos" && echo x >"$WORK/photos/a.jpg"
expect_error "refusing to replace $WORK/photos: it is not a model directory" "$BIN" convert \
  --input "$SHARED/models/stories260K/stories260K.bin" --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$WORK/photos"
[ -f "$WORK/photos/a.jpg" ] || fail "convert replaced a foreign directory"
"$BIN" convert --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M" 2>/dev/null || fail "a model directory could not be replaced"

# finetune: non-integers where integers are meant name the key.
printf '{"train": {"batch_size": 2.7}}\n' >"$WORK/frac.json"
expect_error "\"train.batch_size\" must be an integer, got 2.7" "$BIN" finetune --config "$WORK/frac.json" --set model="$M" \
  --set data.train="$WORK/t.jsonl" --set data.format=text
expect_error "--set train.batch_size: \"2.7\" is not an integer" "$BIN" finetune --set train.batch_size=2.7
echo "bad_inputs: OK"
