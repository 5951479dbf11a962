#!/usr/bin/env bash
# The demo as far as the pipeline exists today: a payer key, a thousand receipts signed from a
# shell, every one verified by the engine's rule, one tampered receipt caught, and the verifier's
# speed against ed25519-dalek measured in the same run. It grows into chain + engine + generator +
# settlement as those land (see README, Status).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin tollgate
bin="${CARGO_TARGET_DIR:-target}/release/tollgate"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== a payer key"
"$bin" keygen --out "$work/payer.key"

echo "== 1,000 receipts signed for chain 31337"
now_ms=$(($(date +%s) * 1000))
for nonce in $(seq 1 1000); do
  printf '{"payee":"0x%040x","amount":"%d","nonce":"%d","timestamp_ms":"%d","request_hash":"%064x"}\n' \
    $((nonce % 7 + 1)) $((nonce % 50 + 1)) "$nonce" "$now_ms" "$nonce"
done > "$work/unsigned.jsonl"
"$bin" receipts sign --key "$work/payer.key" --chain-id 31337 < "$work/unsigned.jsonl" > "$work/signed.jsonl"

echo "== verified by the engine's rule"
"$bin" receipts verify --json --chain-id 31337 < "$work/signed.jsonl" > "$work/verdicts.jsonl"
accepted=$(grep -c '"verdict":"accepted"' "$work/verdicts.jsonl" || true)
echo "accepted: $accepted of 1000"
[ "$accepted" -eq 1000 ]

echo "== one amount changed after signing, and the same receipts for another chain"
sed '500s/"amount":"[0-9]*"/"amount":"999999"/' "$work/signed.jsonl" \
  | "$bin" receipts verify --chain-id 31337 | grep -v ': accepted$' || true
if "$bin" receipts verify --chain-id 1 < "$work/signed.jsonl" > /dev/null; then
  echo "receipts signed for chain 31337 verified on chain 1" >&2; exit 1
fi
echo "chain 1 refuses every receipt signed for chain 31337"

echo "== verification speed, baselines measured in the same run"
"$bin" bench verify --receipts 50000 --payers 10000 --zipf 1.1 --rounds 1
