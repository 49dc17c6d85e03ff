# Sourced by the CLI tests: $BIN is the sortedllama binary, $SRC the repository root.
set -euo pipefail
BIN=$1
SRC=$2
SHARED=$SRC/../shared
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_error MESSAGE_PART CMD...: the command must exit non-zero and print MESSAGE_PART on stderr.
expect_error() {
  local want=$1; shift
  local rc=0
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [ "$rc" -ne 0 ] || fail "expected failure: $*"
  grep -qF -- "$want" "$WORK/err" || { cat "$WORK/err" >&2; fail "stderr lacks '$want' for: $*"; }
}
json_get() { /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# validate_schema HEADING FILES...: each JSON file against the first ```json block under "## HEADING"
# of docs/results_schema.md; minimal JSON Schema (type, required, properties, additionalProperties,
# items, enum, minimum, maximum).
validate_schema() {
  /usr/bin/python3 - "$SRC/docs/results_schema.md" "$@" <<'PY'
import json, re, sys
schema = json.loads(re.search(r"## " + re.escape(sys.argv[2]) + r"\n.*?```json\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1))
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
def is_type(v, t):
    if t == "number": return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "integer": return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, TYPES[t])
def check(v, s, path):
    if "type" in s:
        ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
        assert any(is_type(v, t) for t in ts), f"{path}: {v!r} is not {ts}"
    if "enum" in s: assert v in s["enum"], f"{path}: {v!r} not in {s['enum']}"
    if "minimum" in s: assert v >= s["minimum"], f"{path}: {v} < {s['minimum']}"
    if "maximum" in s: assert v <= s["maximum"], f"{path}: {v} > {s['maximum']}"
    if isinstance(v, dict):
        for k in s.get("required", []): assert k in v, f"{path}: missing {k}"
        props = s.get("properties", {})
        for k, x in v.items():
            if k in props: check(x, props[k], f"{path}.{k}")
            elif s.get("additionalProperties") is False: raise AssertionError(f"{path}: unexpected {k}")
            elif isinstance(s.get("additionalProperties"), dict): check(x, s["additionalProperties"], f"{path}.{k}")
    if isinstance(v, list) and "items" in s:
        for i, x in enumerate(v): check(x, s["items"], f"{path}[{i}]")
for f in sys.argv[3:]:
    check(json.load(open(f)), schema, f)
PY
}
