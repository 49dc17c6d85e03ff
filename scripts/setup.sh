#!/usr/bin/env bash
# Installs the Debian packages sortedllama needs (only those missing) and builds it into build/.
# Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cmake g++ make pkg-config libtorch-dev libsentencepiece-dev sentencepiece nlohmann-json3-dev
          libcli11-dev libspdlog-dev libfmt-dev libgtest-dev libopenblas0-pthread libgloo-dev
          python3-torch python3-numpy python3-sentencepiece)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# libtorch links libblas.so.3; the reference BLAS is ~15x slower than OpenBLAS. Make sure the
# alternative points at OpenBLAS (installing libopenblas0-pthread normally switches it).
if command -v update-alternatives >/dev/null; then
  blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/{print $2}')
  case "$blas" in
    *openblas*) ;;
    *) alt=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Alternative:.*openblas/{print $2; exit}')
       [ -n "$alt" ] && update-alternatives --set libblas.so.3-x86_64-linux-gnu "$alt" ;;
  esac
fi

[ "${1:-}" = "--no-build" ] && exit 0
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
