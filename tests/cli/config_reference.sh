# The README's finetune config table is the one `finetune --config-reference` prints from the
# config table in src/train/config.cpp, so the two cannot drift apart.
source "$(dirname "$0")/../cli_lib.sh"
"$BIN" finetune --config-reference > "$WORK/reference.md"
grep -q '^| `train.batch_size` | int | `4` |' "$WORK/reference.md" || fail "reference lacks train.batch_size"
/usr/bin/python3 - "$SRC/README.md" "$WORK/reference.md" <<'PY'
import sys
readme = open(sys.argv[1]).read()
table = open(sys.argv[2]).read()
if table not in readme:
    sys.exit("README.md's config table differs from `sortedllama finetune --config-reference`; paste its output")
PY
# A failed write of the results to stdout is an error, not a success.
rc=0
"$BIN" finetune --config-reference > /dev/full 2> "$WORK/err" || rc=$?
[ "$rc" -ne 0 ] || fail "a write to /dev/full exited 0"
grep -q "cannot write to standard output" "$WORK/err" || fail "no message for the failed write: $(cat "$WORK/err")"
