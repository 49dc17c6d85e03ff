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
