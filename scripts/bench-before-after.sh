#!/usr/bin/env bash
# Runs the same benches from two builds alternately in one session (before, after, before, after),
# so a noisy machine slows both alike: `tollgate bench verify`, the ledger writer bench and
# `tollgate bench e2e`.
#
# Usage: scripts/bench-before-after.sh BEFORE_DIR AFTER_DIR OUT_DIR [ROUNDS]
# Each *_DIR holds `tollgate`, `tollgate-load` (beside it: bench e2e starts it) and `ledger-bench`,
# the benches/ledger.rs binary (`cargo build --release --locked --workspace --bench ledger
# --message-format=json` names it: the `ledger` test binary has the same prefix). Results go to
# OUT_DIR as verify-{before,after}-N.json, ledger-…-N.txt and e2e-…-N.json, with the CPU model
# and SIMD flags in cpu.txt.
set -euo pipefail
before=$1 after=$2 out=$3 rounds=${4:-2}
mkdir -p "$out"
{ lscpu | grep 'Model name'; grep -o -w -e avx512ifma -e avx2 /proc/cpuinfo | sort -u; uptime; } > "$out/cpu.txt"
for round in $(seq "$rounds"); do
  for side in before after; do
    bin=$before
    [ "$side" = after ] && bin=$after
    echo "round $round $side $(date +%T)"
    "$bin/tollgate" bench verify --receipts 100000 --payers 10000 --zipf 1.1 --json > "$out/verify-$side-$round.json"
    (cd "$out" && "$bin/ledger-bench" --bench writer > "ledger-$side-$round.txt" 2>&1)
    "$bin/tollgate" bench e2e --json > "$out/e2e-$side-$round.json"
  done
done
uptime >> "$out/cpu.txt"
