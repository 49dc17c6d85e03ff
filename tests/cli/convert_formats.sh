# convert --from meta (1 and 2 tensor-parallel shards, bf16) and --from hf-bin (single, sharded,
# 32001 rows): the same weights and logits as the llama2.c import and as torch.load reads them.
source "$(dirname "$0")/../cli_lib.sh"
TOK=$SHARED/models/stories260K/tok512.model
TEXT="Once upon a time, there was a little girl named Lily."
printf '{"text": "%s"}\n' "$TEXT" >"$WORK/text.jsonl"
FX=$WORK/fx
/usr/bin/python3 "$SRC/tests/reference/make_meta_fixture.py" "$FX" "$TOK" "$TEXT"

"$BIN" convert --from meta --input "$FX/meta1" --tokenizer "$TOK" --out "$WORK/hf1"
"$BIN" convert --from meta --input "$FX/meta2" --tokenizer "$TOK" --out "$WORK/hf2"
"$BIN" convert --from llama2c --input "$FX/model.bin" --tokenizer "$TOK" --out "$WORK/hfc"
cp "$TOK" "$FX/meta_bf16/tokenizer.model"  # the default tokenizer: INPUT/tokenizer.model
"$BIN" convert --from meta --input "$FX/meta_bf16" --out "$WORK/hfb"
# One shard, two shards and llama2.c: byte-identical weights (same tensors, same order).
cmp "$WORK/hf1/model.safetensors" "$WORK/hf2/model.safetensors" || fail "1-shard and 2-shard imports differ"
cmp "$WORK/hf1/model.safetensors" "$WORK/hfc/model.safetensors" || fail "Meta and llama2.c imports differ"
cmp "$WORK/hf1/tokenizer.model" "$TOK" || fail "tokenizer not copied"
for d in hf1 hf2 hfc; do
  "$BIN" eval --model "$WORK/$d" --task lm --data "$WORK/text.jsonl" --exits 2 --out "$WORK/$d.json" >/dev/null
done
/usr/bin/python3 - "$WORK" "$FX/expected.json" <<'PY'
import json, struct, sys, torch
work, expected = sys.argv[1], json.load(open(sys.argv[2]))
cfg = {d: json.load(open(f"{work}/{d}/config.json")) for d in ("hf1", "hf2", "hfc", "hfb")}
assert cfg["hf1"] == cfg["hf2"], (cfg["hf1"], cfg["hf2"])
assert cfg["hf1"]["intermediate_size"] == expected["intermediate_size"] == 224, cfg["hf1"]
assert cfg["hf1"]["vocab_size"] == 512 and cfg["hf1"]["num_key_value_heads"] == 2, cfg["hf1"]
# llama2.c records its own context length; everything else agrees.
assert {k: v for k, v in cfg["hfc"].items() if k != "max_position_embeddings"} == \
       {k: v for k, v in cfg["hf1"].items() if k != "max_position_embeddings"}, (cfg["hfc"], cfg["hf1"])
assert cfg["hfb"]["torch_dtype"] == "bfloat16" and cfg["hf1"]["torch_dtype"] == "float32"
# The C++ forward of every import gives the NLL of Meta's own forward pass on the original weights.
for d in ("hf1", "hf2", "hfc"):
    r = json.load(open(f"{work}/{d}.json"))["exits"]["2"]
    assert r["tokens"] == len(expected["tokens"]) - 1, (d, r)
    assert abs(r["nll"] - expected["nll"]) < 1e-5, (d, r["nll"], expected["nll"])
    print(f"{d}: nll {r['nll']:.7f} (Meta's forward: {expected['nll']:.7f})")

def tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    dt = {"F32": torch.float32, "BF16": torch.bfloat16}
    return {k: torch.frombuffer(bytearray(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]),
                                dtype=dt[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}
f32, bf16 = tensors(f"{work}/hf1/model.safetensors"), tensors(f"{work}/hfb/model.safetensors")
assert list(f32) == list(bf16)
for k in f32:
    assert bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], f32[k].bfloat16()), k
PY

# Bad Meta downloads.
expect_error "no params.json" "$BIN" convert --from meta --input "$WORK/hf1" --tokenizer "$TOK" --out "$WORK/x"
mkdir "$WORK/gap" && cp "$FX/meta2/params.json" "$FX/meta2/consolidated.01.pth" "$WORK/gap/"
expect_error "shard 0 of them is missing" "$BIN" convert --from meta --input "$WORK/gap" --tokenizer "$TOK" --out "$WORK/x"
mkdir "$WORK/dim" && cp "$FX/meta1/consolidated.00.pth" "$WORK/dim/"
sed 's/"multiple_of": 32/"multiple_of": 64/' "$FX/meta1/params.json" >"$WORK/dim/params.json"
expect_error "dim/consolidated.00.pth: tensor layers.0.feed_forward.w1.weight has shape [224, 64] but" \
  "$BIN" convert --from meta --input "$WORK/dim" --tokenizer "$TOK" --out "$WORK/x"
expect_error "no tokenizer.model (pass --tokenizer FILE)" "$BIN" convert --from meta --input "$FX/meta1" --out "$WORK/x"
expect_error "needs --tokenizer" "$BIN" convert --from llama2c --input "$FX/model.bin" --out "$WORK/x"
[ ! -e "$WORK/x" ] || fail "a failed convert left $WORK/x"

# HF pytorch_model.bin: the real tiny-random-llama-hf, the same split into two shards, and a
# PandaLM-style 32001-row copy (one [PAD] row more than its 32000-piece tokenizer).
TINY=$SHARED/models/tiny-random-llama-hf
/usr/bin/python3 - "$TINY" "$WORK" <<'PY'
import json, os, shutil, sys, torch
tiny, work = sys.argv[1:3]
sd = torch.load(f"{tiny}/pytorch_model.bin", map_location="cpu", weights_only=True)
names = list(sd)
os.makedirs(f"{work}/sharded")
weight_map = {}
for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
    fname = "pytorch_model-%05d-of-00002.bin" % (i + 1)
    torch.save({k: sd[k] for k in part}, f"{work}/sharded/{fname}")
    weight_map.update({k: fname for k in part})
json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, open(f"{work}/sharded/pytorch_model.bin.index.json", "w"))
os.makedirs(f"{work}/pad")
cfg = json.load(open(f"{tiny}/config.json"))
cfg["vocab_size"] = 32001
json.dump(cfg, open(f"{work}/pad/config.json", "w"))
for k in ("model.embed_tokens.weight", "lm_head.weight"):
    sd[k] = torch.cat([sd[k], torch.full((1, sd[k].shape[1]), 0.01)])
torch.save(sd, f"{work}/pad/pytorch_model.bin")
for d in ("sharded", "pad"):
    for f in ("config.json", "tokenizer.model"):
        if not os.path.exists(f"{work}/{d}/{f}"):
            shutil.copy(f"{tiny}/{f}", f"{work}/{d}/{f}")
PY
"$BIN" convert --from hf-bin --input "$TINY" --out "$WORK/tiny"
"$BIN" convert --from hf-bin --input "$WORK/sharded" --out "$WORK/tiny_sharded"
"$BIN" convert --from hf-bin --input "$WORK/pad" --out "$WORK/pad_st"
cmp "$WORK/tiny/model.safetensors" "$WORK/tiny_sharded/model.safetensors" || fail "sharded bin converts differently"
cmp "$WORK/tiny/tokenizer.model" "$TINY/tokenizer.model" || fail "tokenizer not copied"
# Loading the .bin directories directly and their safetensors conversions score text alike.
printf '{"text": "Hello world, how are you?"}\n' >"$WORK/hello.jsonl"
for m in "$TINY" "$WORK/sharded" "$WORK/tiny" "$WORK/pad" "$WORK/pad_st"; do
  "$BIN" eval --model "$m" --task lm --data "$WORK/hello.jsonl" --exits 2 --out "$WORK/$(basename "$m").json" >/dev/null
done
/usr/bin/python3 - "$TINY" "$WORK" <<'PY'
import json, struct, sys, torch
tiny, work = sys.argv[1:3]
nll = {d: json.load(open(f"{work}/{d}.json"))["exits"]["2"]["nll"]
       for d in ("tiny-random-llama-hf", "sharded", "tiny", "pad", "pad_st")}
assert nll["tiny-random-llama-hf"] == nll["sharded"] == nll["tiny"], nll
assert nll["pad"] == nll["pad_st"] and abs(nll["pad"] - nll["tiny"]) < 0.01, nll
assert json.load(open(f"{work}/pad_st/config.json"))["vocab_size"] == 32001
# The safetensors hold exactly the tensors torch.load reads from the .bin.
raw = open(f"{work}/tiny/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
sd = torch.load(f"{tiny}/pytorch_model.bin", map_location="cpu", weights_only=True)
for k, v in header.items():
    if k == "__metadata__":
        continue
    b, e = v["data_offsets"]
    t = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=torch.float32).reshape(v["shape"])
    assert torch.equal(t, sd[k]), k
assert sorted(k for k in header if k != "__metadata__") == sorted(k for k in sd if "inv_freq" not in k)
print("hf-bin: nll", nll)
PY
expect_error "already holds safetensors weights" "$BIN" convert --from hf-bin --input "$WORK/tiny" --out "$WORK/x"
expect_error "no pytorch_model.bin or pytorch_model.bin.index.json" \
  "$BIN" convert --from hf-bin --input "$FX/meta1" --tokenizer "$TOK" --out "$WORK/x"
# The 32001-row checkpoint judges (PandaLM-style): its [PAD] row is never generated or decoded.
mkdir -p "$WORK/samples"
printf '{"id": "1", "instruction": "Say hi", "output": "hi"}\n{"id": "2", "instruction": "Count", "output": "1 2"}\n' \
  >"$WORK/samples/samples_exit1.jsonl"
"$BIN" eval --task compare --samples-a "$WORK/samples" --samples-b "$WORK/samples" --judge "$WORK/pad" \
  --judge-max-new-tokens 3 --out "$WORK/judged" >/dev/null 2>"$WORK/judge.err" || { cat "$WORK/judge.err" >&2; fail "the 32001-row judge failed"; }
/usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); m=r['exits']['1 vs 1']; assert m['n']==2 and m['wins']+m['ties']+m['losses']==4, m" \
  "$WORK/judged/results.json" || fail "the 32001-row judge gave no verdicts"
echo "convert formats CLI: ok"
