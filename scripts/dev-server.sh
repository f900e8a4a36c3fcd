#!/usr/bin/env bash
# Builds Coffer and runs a single-node dev server: initialized, unsealed, root token printed.
# Extra arguments go to `coffer server --dev` (e.g. --data-dir DIR --dev-root-token-id T).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Build the whole workspace (not `-p`): the same feature set as the tests, so RocksDB is
# compiled once and shared between the two commands.
cargo build --workspace --bins
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target/debug/coffer" server --dev "$@"
