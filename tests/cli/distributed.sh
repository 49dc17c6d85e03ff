# Data parallel through c10d (Gloo on loopback): 2 ranks x half a batch == 1 rank x the whole batch
# (losses and final weights, SFT and SoFT, replicated and ZeRO-2 optimizer, reduction overlapped with
# the backward pass); resume across rank counts; a dead rank makes the others and the launcher exit
# non-zero instead of hanging.
source "$(dirname "$0")/../cli_lib.sh"
head -n 96 "$SHARED/data/triviaqa/triviaqa_unfiltered_test_1000.jsonl" >"$WORK/tqa.jsonl"
cat >"$WORK/cfg.json" <<JSON
{"init": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 128},
 "tokenizer": "$SHARED/models/stories260K/tok512.model", "exits": "all",
 "data": {"train": "$WORK/tqa.jsonl", "format": "triviaqa", "max_seq_len": 64},
 "train": {"batch_size": 8, "grad_accum": 2, "lr": 3e-3, "max_steps": 4, "seed": 3, "warmup_ratio": 0.25},
 "log": {"every": 1}, "save": {"every": 2, "keep_last": 5}, "dist": {"timeout_s": 30}}
JSON
ft1() { "$BIN" --threads 1 finetune --config "$WORK/cfg.json" "$@" >/dev/null 2>"$WORK/err1" || { cat "$WORK/err1" >&2; fail "1 rank: $*"; }; }
ft2() { "$BIN" launch --nproc 2 -- finetune --config "$WORK/cfg.json" "$@" >/dev/null 2>"$WORK/err2" || { cat "$WORK/err2" >&2; fail "2 ranks: $*"; }; }

# same(A, B, FIRST_STEP): per-step losses equal to 1e-5 (relative) from FIRST_STEP on, final weights to 1e-4.
same() {
  /usr/bin/python3 - "$@" <<'PY'
import json, struct, sys
import torch
a, b, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
def losses(d):
    return {r["step"]: r["loss"] for r in map(json.loads, open(d + "/metrics.jsonl")) if r["type"] == "train" and r["step"] >= first}
la, lb = losses(a), losses(b)
assert la.keys() == lb.keys() and la, (la, lb)
for s in la:
    assert abs(la[s] - lb[s]) <= 1e-5 * abs(la[s]), (s, la[s], lb[s])
def weights(d):
    raw = open(d + "/final/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    return {k: torch.frombuffer(bytearray(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]), dtype=torch.float32)
            for k, v in head.items() if k != "__metadata__"}
wa, wb = weights(a), weights(b)
assert wa.keys() == wb.keys()
worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
assert worst < 1e-4, worst
print(f"same: {len(la)} steps, max weight difference {worst:.2e}")
PY
}

for method in sft soft; do
  ft1 --set method=$method --set out_dir="$WORK/$method-1"
  ft2 --set method=$method --set out_dir="$WORK/$method-2"
  same "$WORK/$method-1" "$WORK/$method-2" 1 || fail "$method: 2 ranks differ from 1 rank"
  ft2 --set method=$method --set out_dir="$WORK/$method-2z" --set dist.zero_stage=2
  same "$WORK/$method-1" "$WORK/$method-2z" 1 || fail "$method: ZeRO-2 differs from 1 rank"
done
grep -q "sharded (ZeRO-2)" "$WORK/err2" || fail "launch log does not name the sharded optimizer"
# Layers above the deepest exit get no gradient: weight decay must leave them alone on any number
# of ranks, as it does in one process (reduced zeros would decay them on 2 ranks).
for zero in 0 2; do
  ft1 --set method=soft --set exits=1,2 --set train.weight_decay=0.5 --set out_dir="$WORK/low-1-$zero"
  ft2 --set method=soft --set exits=1,2 --set train.weight_decay=0.5 --set out_dir="$WORK/low-2-$zero" --set dist.zero_stage=$zero
  same "$WORK/low-1-$zero" "$WORK/low-2-$zero" 1 || fail "exits below the top layer: 2 ranks (ZeRO $zero) differ from 1 rank"
done
# Buckets of one tensor each: most collectives start during the backward pass, in the same order on
# both ranks, and the result is unchanged (also with ZeRO-2 and activation checkpointing).
for extra in "" "--set dist.zero_stage=2 --set train.checkpoint_activations=true"; do
  # shellcheck disable=SC2086
  ft2 --set method=soft --set out_dir="$WORK/overlap" --set dist.bucket_mb=0.001 $extra
  same "$WORK/soft-1" "$WORK/overlap" 1 || fail "overlapped reduction ($extra) differs from 1 rank"
  grep -qE "gradient reduction: [0-9]+ buckets of at most 0.001 MiB, [1-9][0-9]* started during the backward pass" \
    "$WORK/err2" || { cat "$WORK/err2" >&2; fail "no bucket was reduced during the backward pass"; }
  rm -rf "$WORK/overlap"
done
# the checkpoint written by 2 sharded ranks is an ordinary one: the complete optimizer state
/usr/bin/python3 - "$WORK/soft-2z/step-000002" <<'PY' || fail "trainer state of the sharded run"
import json, struct, sys
d = sys.argv[1]
j = json.load(open(d + "/trainer_state.json"))
def names(path):
    raw = open(path, "rb").read()
    return {k for k in json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]]) if k != "__metadata__"}
params = names(d + "/model.safetensors")
assert j["world_size"] == 2 and set(j["adam_steps"]) == params and set(j["adam_steps"].values()) == {2}, j["adam_steps"]
assert names(d + "/optimizer.safetensors") == {p + s for p in params for s in (".exp_avg", ".exp_avg_sq")}
PY

# resume across rank counts: 2 ranks (sharded) -> 1 rank, and 1 rank -> 2 ranks, from step 2
ft1 --set method=soft --set out_dir="$WORK/r21" --resume "$WORK/soft-2z/step-000002"
same "$WORK/soft-1" "$WORK/r21" 3 || fail "2-rank checkpoint resumed on 1 rank"
ft2 --set method=soft --set out_dir="$WORK/r12" --set dist.zero_stage=2 --resume "$WORK/soft-1/step-000002"
same "$WORK/soft-1" "$WORK/r12" 3 || fail "1-rank checkpoint resumed on 2 sharded ranks"

expect_error "not divisible by the 2 ranks" "$BIN" launch --nproc 2 -- finetune --config "$WORK/cfg.json" \
  --set train.batch_size=7 --set out_dir="$WORK/odd"

# Data warnings come once (rank 0), not once per rank: every rank reads the same file.
{ cat "$WORK/tqa.jsonl"; echo '{"question": "no answers"}'; } >"$WORK/bad.jsonl"
ft2 --set method=sft --set out_dir="$WORK/warn" --set data.train="$WORK/bad.jsonl" --set data.on_bad_record=skip \
  --set train.max_steps=1
[ "$(grep -c "skipping this record" "$WORK/err2")" -eq 1 ] || { cat "$WORK/err2" >&2; fail "the bad-record warning is not printed exactly once"; }

# A rank killed mid-run: the launcher stops the other and fails, naming the rank.
long=(--set train.max_steps=100000 --set save.every=0 --set log.every=1)
wait_steps() {  # wait until DIR/metrics.jsonl has a line
  for _ in $(seq 300); do [ -s "$1/metrics.jsonl" ] && return 0; sleep 0.1; done
  fail "no training step in $1"
}
"$BIN" launch --nproc 2 -- finetune --config "$WORK/cfg.json" "${long[@]}" --set out_dir="$WORK/kill" >/dev/null 2>"$WORK/kill.err" &
launcher=$!
wait_steps "$WORK/kill"
victim=$(pgrep -P $launcher | tail -n 1)
kill -9 "$victim"
start=$SECONDS
rc=0; wait $launcher || rc=$?
[ $rc -ne 0 ] || fail "launcher exited 0 after a rank was killed"
[ $((SECONDS - start)) -lt 30 ] || fail "launcher took $((SECONDS - start)) s to notice the dead rank"
grep -q "rank 1 was killed by signal" "$WORK/kill.err" || { cat "$WORK/kill.err" >&2; fail "launcher did not name the dead rank"; }
[ -z "$(pgrep -P $launcher || true)" ] || fail "a rank outlived the launcher"

# Without the launcher (torchrun-style environment): the surviving rank fails within the timeout.
export WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 20000))
RANK=0 "$BIN" --threads 1 finetune --config "$WORK/cfg.json" "${long[@]}" --set out_dir="$WORK/kill2" >/dev/null 2>"$WORK/r0.err" &
r0=$!
RANK=1 "$BIN" --threads 1 finetune --config "$WORK/cfg.json" "${long[@]}" --set out_dir="$WORK/kill2" >/dev/null 2>"$WORK/r1.err" &
r1=$!
wait_steps "$WORK/kill2"
kill -9 $r1
start=$SECONDS
rc=0; wait $r0 || rc=$?
[ $rc -ne 0 ] || fail "rank 0 exited 0 after rank 1 was killed"
[ $((SECONDS - start)) -le 35 ] || fail "rank 0 took $((SECONDS - start)) s to fail"
grep -q "peer rank" "$WORK/r0.err" || { cat "$WORK/r0.err" >&2; fail "rank 0's error does not explain the dead peer"; }
echo "distributed: OK"
