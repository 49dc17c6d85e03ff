# `sortedllama --version` names the BLAS (OpenBLAS, not the slow reference one), the threads and the
# OpenMP wait policy (PASSIVE unless the user set one: spinning OpenMP threads starve OpenBLAS's).
source "$(dirname "$0")/../cli_lib.sh"
out=$("$BIN" --version)
echo "$out"
echo "$out" | grep -q "OpenBLAS" || fail "BLAS is not OpenBLAS: $out"
echo "$out" | grep -q "$(nproc) threads" || fail "threads are not the core count: $out"
"$BIN" --threads 1 --version | grep -q " 1 threads" || fail "--threads 1 ignored"
env -u OMP_WAIT_POLICY "$BIN" --version | grep -q "OpenMP wait PASSIVE," || fail "not restarted with a passive wait policy"
OMP_WAIT_POLICY=ACTIVE "$BIN" --version | grep -q "OpenMP wait ACTIVE," || fail "the user's OMP_WAIT_POLICY was overridden"
expect_error "subcommand" "$BIN"
