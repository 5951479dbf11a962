#!/usr/bin/env bash
# Installs what building and testing Tollgate needs beyond the Rust toolchain, and nothing when it
# is already there: libclang (bindgen for librocksdb-sys) and perl (keccak-asm) from Debian, and the pinned chain
# toolchain (solc, anvil) from npm into ./node_modules. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# perl generates keccak-asm's assembly (alloy's `asm-keccak`), which cc then assembles.
missing=()
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
command -v perl >/dev/null 2>&1 || missing+=(perl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} (needed to build librocksdb-sys and keccak-asm)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -f package-lock.json ]; then
  # Reinstall only when the lockfile changed since the last install.
  stamp=node_modules/.tollgate-lock.sha256
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: npm ci (pinned solc and anvil)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
  fi
fi
