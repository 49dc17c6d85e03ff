# convert a real llama2.c checkpoint, then generate from it (text, JSON, prompt files, errors).
source "$(dirname "$0")/../cli_lib.sh"
M=$WORK/stories
"$BIN" convert --from llama2c --input "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$M"
for f in config.json model.safetensors tokenizer.model; do [ -f "$M/$f" ] || fail "convert wrote no $f"; done

text=$("$BIN" generate --model "$M" --prompt "" --max-new-tokens 40 2>"$WORK/stats")
echo "$text"
[[ "$text" == "Once upon a time, there was a little girl named Lily."* ]] || fail "unexpected story: $text"
grep -q "tokens/s" "$WORK/stats" || fail "no stats on stderr"
grep -q "ms/token" "$WORK/stats" || fail "no ms/token on stderr"

# --json: one object per prompt; prompt files as JSONL or lines; sub-model choice.
printf '{"prompt": "Tom had a dog"}\n{"prompt": "The sky"}\n' >"$WORK/p.jsonl"
"$BIN" generate --model "$M" --prompt-file "$WORK/p.jsonl" --exit-layer 3 --max-new-tokens 8 --json >"$WORK/out.jsonl"
[ "$(wc -l <"$WORK/out.jsonl")" -eq 2 ] || fail "expected 2 JSON lines"
/usr/bin/python3 - "$WORK/out.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["prompt"] for r in rows] == ["Tom had a dog", "The sky"], rows
for r in rows:
    assert r["exit_layer"] == 3 and 0 < len(r["tokens"]) <= 8 and isinstance(r["text"], str), r
    for k in ("prompt_tokens", "new_tokens", "tokens_per_s", "ms_per_token"):
        assert k in r["stats"], k
PY
printf 'Tom had a dog\nThe sky\n' >"$WORK/p.txt"
[ "$("$BIN" generate --model "$M" --prompt-file "$WORK/p.txt" --max-new-tokens 5 | wc -l)" -eq 2 ] || fail "line prompts"

# Prompts that may run past the model's positions: one warning names the first, one counts them all.
printf 'a\nb\nc\n' >"$WORK/three.txt"
"$BIN" generate --model "$M" --prompt-file "$WORK/three.txt" --max-new-tokens 600 >/dev/null 2>"$WORK/past"
[ "$(grep -c "runs past the model's 512 positions" "$WORK/past")" -eq 1 ] || fail "not one warning: $(cat "$WORK/past")"
grep -q "3 of 3 prompts ran with --max-new-tokens 600 past the model's 512 positions" "$WORK/past" ||
  fail "no count of the prompts past the context: $(cat "$WORK/past")"

expect_error "--exit-layer 9 is outside the model's 1..5 layers" "$BIN" generate --model "$M" --prompt hi --exit-layer 9
expect_error "exactly one of --prompt and --prompt-file" "$BIN" generate --model "$M"
printf '{"text": "no prompt key"}\n' >"$WORK/bad.jsonl"
expect_error "bad.jsonl:1: missing field \"prompt\"" "$BIN" generate --model "$M" --prompt-file "$WORK/bad.jsonl"
# A tokenizer with more pieces than the model has rows does not belong to it.
expect_error "do not belong together" "$BIN" generate --model "$M" --prompt hi \
  --tokenizer "$SHARED/models/llama2-tokenizer/tokenizer.model"
# A truncated weights file and a broken config are reported with the file name.
cp -r "$M" "$WORK/trunc"
truncate -s 5000 "$WORK/trunc/model.safetensors"
expect_error "model.safetensors" "$BIN" generate --model "$WORK/trunc" --prompt hi
cp -r "$M" "$WORK/cfg"
sed -i 's/"num_attention_heads": 8/"num_attention_heads": 7/' "$WORK/cfg/config.json"
expect_error "config.json: hidden_size 64 is not divisible by num_attention_heads 7" \
  "$BIN" generate --model "$WORK/cfg" --prompt hi
printf 'garbage' >"$WORK/bad.bin"
expect_error "bad.bin: truncated" "$BIN" convert --input "$WORK/bad.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$WORK/x"
head -c 2000 "$SHARED/models/stories260K/stories260K.bin" >"$WORK/short.bin"
expect_error "short.bin: 2000 bytes, but its header implies" "$BIN" convert --input "$WORK/short.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.model" --out "$WORK/x"
echo "generate CLI: ok"
