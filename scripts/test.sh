#!/usr/bin/env bash
# Installs dependencies, builds Moat and runs the whole test suite with CTest:
# first the optimised build (release preset), then the same suite built with
# ASan+UBSan (debug preset). Extra arguments go to both ctest runs
# (e.g. `-L unit`). Then the libFuzzer targets run for 20 s each (fuzz
# preset, clang). Set MOAT_SKIP_SANITIZERS=1 to run only the release suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs="$(nproc)"

cmake --preset release >/dev/null
cmake --build --preset release -j"$jobs"
ctest --preset release "$@"

if [ "${MOAT_SKIP_SANITIZERS:-0}" != 1 ]; then
  cmake --preset debug >/dev/null
  cmake --build --preset debug -j"$jobs"
  ctest --preset debug "$@"
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j"$jobs"
  ctest --preset fuzz
fi
