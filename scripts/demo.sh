#!/usr/bin/env bash
# The main job, end to end: a local anvil chain, the Settlement contract and its test token,
# 1,000 payers funded onchain, `tollgate serve` with settlement on (RocksDB in a temp dir),
# 1,000,000 receipts from `tollgate-load`, one epoch disputed by a separate arbiter and committed
# again, one payer exit, then the engine's numbers checked against the chain's and one Merkle
# proof checked by the contract. Exits 0 only if all agree.
# Extra arguments go to `tollgate demo` (see `tollgate demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
# `--workspace --bins --examples` rather than `--bin tollgate`: examples pull in the dev-dependencies,
# so cargo resolves the same features as `make test` and reuses its build of alloy and RocksDB
# (building two bins alone re-resolved them and recompiled alloy: 7 minutes on 2 cores).
cargo build --release --locked --workspace --bins --examples
exec "${CARGO_TARGET_DIR:-target}/release/tollgate" demo "$@"
