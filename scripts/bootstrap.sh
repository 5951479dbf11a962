#!/usr/bin/env bash
# Installs what building and testing Tollgate needs beyond the Rust toolchain, and nothing when it
# is already there: libclang (bindgen for librocksdb-sys), perl (keccak-asm) and nats-server (the
# cluster tests) from Debian, and the pinned chain
# toolchain (solc, anvil) from npm into ./node_modules, and the TypeScript packages' dependencies into
# clients/typescript/node_modules. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each build need is checked as the exact Debian package that provides it, never by a file glob:
# `/usr/lib/x86_64-linux-gnu/libclang*.so*` matches libclang-cpp.so.14 (a different library that a
# fresh machine has), which once made this script skip the install bindgen needs.
# - libclang-dev: bindgen (librocksdb-sys) loads libclang and its builtin headers (stddef.h ...).
# - perl: generates keccak-asm's assembly (alloy's `asm-keccak`), which cc then assembles.
# - python3-minimal: runs scripts/module_cycles.py, the check that no crate's modules import each
#   other in a circle.
# - nats-server: the cluster crate's tests start a real 3-node NATS JetStream cluster on loopback
#   (Debian bookworm ships 2.9.10: JetStream, KV and Object Store, but no per-key TTL).
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing=()
for pkg in libclang-dev perl python3-minimal nats-server; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} (needed to build librocksdb-sys and keccak-asm, by the module check and by the cluster tests)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Reinstalls a directory's pinned npm packages only when its lockfile changed since the last install.
npm_ci_when_changed() {
  local dir=$1 what=$2
  [ -f "$dir/package-lock.json" ] || return 0
  local stamp="$dir/node_modules/.tollgate-lock.sha256"
  local want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: npm ci in $dir ($what)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}
npm_ci_when_changed . "pinned solc, anvil and @openzeppelin/merkle-tree"
npm_ci_when_changed clients/typescript "the TypeScript packages' pinned typescript, @noble/ed25519, fast-check, @x402/* and express"
