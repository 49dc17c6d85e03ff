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
# OpenBLAS kernels: the user's OPENBLAS_CORETYPE wins; a kernel sortedllama chose (the variables its
# restart sets) is kept only when it is the one loaded and its products check out, else dropped.
OPENBLAS_CORETYPE=Haswell "$BIN" --version | grep -q "Haswell .*kernel set by OPENBLAS_CORETYPE=Haswell," ||
  fail "the user's OPENBLAS_CORETYPE is not what --version reports"
out=$(env -u OPENBLAS_CORETYPE -u SORTEDLLAMA_BLAS_CHOICE "$BIN" --version)
if echo "$out" | grep -q "chosen by sortedllama"; then  # a CPU that OpenBLAS 0.3.21 does not know
  echo "$out" | grep -Eq "kernel (SkylakeX|Haswell) chosen by sortedllama over OpenBLAS's [A-Za-z0-9]+, results checked" ||
    fail "unexpected kernel choice: $out"
else
  echo "$out" | grep -q "kernel" && fail "a kernel was forced although OpenBLAS recognises this CPU: $out"
fi
OPENBLAS_CORETYPE=Haswell SORTEDLLAMA_BLAS_CHOICE=Haswell/Prescott "$BIN" --version |
  grep -q "Haswell .*kernel Haswell chosen by sortedllama over OpenBLAS's Prescott, results checked" ||
  fail "a checked kernel choice was not kept"
out=$(OPENBLAS_CORETYPE=Haswell SORTEDLLAMA_BLAS_CHOICE=SkylakeX/Prescott "$BIN" --version)
echo "$out" | grep -q "kernel SkylakeX failed its check on this CPU, so OpenBLAS's own Prescott is in use" ||
  fail "a kernel that is not the one loaded was kept: $out"
echo "$out" | grep -q " Haswell " && fail "the rejected choice's OPENBLAS_CORETYPE stayed set: $out"
expect_error "subcommand" "$BIN"
