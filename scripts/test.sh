#!/usr/bin/env bash
# Installs dependencies, builds Moat (release preset) and runs the whole test
# suite with CTest. Exit status is CTest's. Usage: scripts/test.sh [ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"
ctest --preset release "$@"
