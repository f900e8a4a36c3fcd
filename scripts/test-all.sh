#!/usr/bin/env bash
# Runs the whole test suite: unit tests, openraft's storage suite, in-process API tests,
# multi-process tests over real TLS, and the real clients (hvac, bao) against Coffer.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-clients
# The multi-process tests run the `coffer` binary; build it first. Always `--workspace`:
# a `-p` build unifies features differently and would compile RocksDB a second time.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
