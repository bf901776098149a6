#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of Moat from Debian 12's
# packages. Idempotent: packages already present are skipped by apt itself, and
# the package lists are refreshed at most once per hour.
set -euo pipefail

PKGS=(
  # toolchain
  build-essential cmake ninja-build pkg-config git clang libclang-rt-14-dev
  # engines and libraries
  libdpdk-dev dpdk
  libhyperscan-dev
  libssl-dev openssl
  liburing-dev
  libboost-dev
  libbenchmark-dev libgtest-dev libgmock-dev googletest
  nlohmann-json3-dev
  libpcre2-dev
  libcli11-dev
  libmaxminddb-dev
  libspdlog-dev libfmt-dev
  # rule set the WAF loads from its own files
  modsecurity-crs
  # tests and side-by-side benchmarks
  python3 python3-yaml curl haproxy nginx-light wrk iproute2 procps ethtool
  # TLS tests: an external scanner checks the listener (tests/integration/test_tls.py)
  sslscan ca-certificates
  # ModSecurity v3 for the WAF comparison harness (bench/waf/modsec_eval.cpp)
  libmodsecurity-dev
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

stamp=/var/lib/apt/periodic/moat-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +60 2>/dev/null)" ]; then
  $SUDO apt-get update -qq
  $SUDO mkdir -p "$(dirname "$stamp")" && $SUDO touch "$stamp"
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian ships nginx/haproxy as services; Moat's benchmarks start their own
# instances, so the packaged ones must not hold ports.
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now nginx haproxy >/dev/null 2>&1 || true
fi
pkill -x nginx 2>/dev/null || true
pkill -x haproxy 2>/dev/null || true
echo "install-deps: done"
