# `sortedllama --version` names the BLAS (OpenBLAS, not the slow reference one) and the threads.
source "$(dirname "$0")/../cli_lib.sh"
out=$("$BIN" --version)
echo "$out"
echo "$out" | grep -q "OpenBLAS" || fail "BLAS is not OpenBLAS: $out"
echo "$out" | grep -q "$(nproc) threads" || fail "threads are not the core count: $out"
"$BIN" --threads 1 --version | grep -q " 1 threads" || fail "--threads 1 ignored"
expect_error "subcommand" "$BIN"
