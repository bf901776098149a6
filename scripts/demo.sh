#!/usr/bin/env bash
# Installs dependencies, builds Moat, starts two demo backends on
# 127.0.0.1:8081 and :8082 and runs moatd on its embedded default config
# (listening on 127.0.0.1:8080). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
python3 tests/integration/backend.py --port 8081 --name demo-a & pids+=($!)
python3 tests/integration/backend.py --port 8082 --name demo-b & pids+=($!)
sleep 0.5
cat <<'MSG'

Moat is starting on 127.0.0.1:8080 in front of demo backends :8081 and :8082.
Try, from another terminal:
  curl -i http://127.0.0.1:8080/hello          # alternates demo-a / demo-b
  curl -i http://127.0.0.1:8080/headers        # what the backend received (X-Forwarded-*, X-Request-Id)
  curl -i -X POST --data-binary @README.md http://127.0.0.1:8080/upload
Admin API on 127.0.0.1:9900 (token in /var/lib/moat/admin.token):
  ./build/release/apps/moatctl status
  ./build/release/apps/moatctl backends drain demo 127.0.0.1:8081
  ./build/release/apps/moatctl metrics | grep moat_requests_total
Stop: Ctrl-C.

MSG
./build/release/apps/moatd
