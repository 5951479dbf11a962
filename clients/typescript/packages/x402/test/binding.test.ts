// The binding against docs/X402.md: its worked example reproduced byte for byte by the client
// scheme and the real x402 packages, its reasons table, and each local refusal.

import assert from "node:assert/strict";
import { test } from "node:test";
import { REASON_CODES, SigningKey, makeDomain, receiptFromJson, signReceipt, toHex, type ReasonName } from "@tollgate/client";
import { x402Client, x402HTTPClient } from "@x402/core/client";
import {
  encodePaymentRequiredHeader,
  encodePaymentResponseHeader,
  encodePaymentSignatureHeader,
  decodePaymentSignatureHeader,
} from "@x402/core/http";
import type { PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse } from "@x402/core/types";
import {
  NonceClock,
  Refusal,
  TollgateClientScheme,
  X402_REASONS,
  checkPayment,
  domainOf,
  requestHash,
  transactionId,
  x402Reason,
  type TollgateName,
} from "../src/index.js";
import { docJson, docReasonTable, docText } from "./doc.js";

const SEED = docText("payer-seed");
const SIGNED_AT = 1764000000000;
const required = (): PaymentRequired => docJson<PaymentRequired>("payment-required");
const asked = (): PaymentRequirements => required().accepts[0] as PaymentRequirements;
const paid = (): PaymentPayload => docJson<PaymentPayload>("payment-payload");
const atExample = { domain: domainOf(asked()), now: () => SIGNED_AT };

test("the worked example's request_hash", () => {
  assert.equal(toHex(requestHash(asked())), docText("request-hash"));
});

test("the client scheme signs the worked example's payload, field for field and in the doc's order", async () => {
  const scheme = new TollgateClientScheme({ key: SEED, now: () => SIGNED_AT });
  const made = await scheme.createPaymentPayload(2, asked());
  assert.equal(JSON.stringify(made.payload), JSON.stringify(paid().payload));
  assert.equal(scheme.payer, paid().payload.payer);
});

test("the real x402Client with the scheme makes the worked example's PaymentPayload and headers", async () => {
  const client = new x402Client()
    .register("eip155:31337", new TollgateClientScheme({ key: SEED, now: () => SIGNED_AT }))
    .setSpendControls({ allowedAssets: [{ network: "eip155:31337", asset: asked().asset, maxAmountPerPayment: "1000" }] });
  const made = await client.createPaymentPayload(required());
  const { extensions, ...payload } = made;
  assert.equal(extensions, undefined);
  assert.deepEqual(payload, paid());
  // x402 orders the keys its own way; the doc's header is the doc's object in the doc's order.
  const header = new x402HTTPClient(client).encodePaymentSignatureHeader(made)["PAYMENT-SIGNATURE"] as string;
  assert.deepEqual(decodePaymentSignatureHeader(header), decodePaymentSignatureHeader(docText("PAYMENT-SIGNATURE")));
  assert.equal(encodePaymentSignatureHeader(paid()), docText("PAYMENT-SIGNATURE"));
  assert.equal(encodePaymentRequiredHeader(required()), docText("PAYMENT-REQUIRED"));
});

test("x402's spend cap stops the scheme from signing above it", async () => {
  const client = new x402Client()
    .register("eip155:31337", new TollgateClientScheme({ key: SEED }))
    .setSpendControls({ allowedAssets: [{ network: "eip155:31337", asset: asked().asset, maxAmountPerPayment: "999" }] });
  await assert.rejects(client.createPaymentPayload(required()));
  const capped = new TollgateClientScheme({ key: SEED, maxAmount: 999n });
  await assert.rejects(capped.createPaymentPayload(2, asked()), /above the cap/);
});

test("the worked example passes the local checks and settles under the doc's transaction id", () => {
  const request = docJson<{ paymentPayload: PaymentPayload; paymentRequirements: PaymentRequirements }>("settle-request");
  const receipt = checkPayment(atExample, request.paymentPayload, request.paymentRequirements);
  const answer = docJson<SettleResponse>("settle-response");
  assert.equal(transactionId(receipt), answer.transaction);
  assert.equal(toHex(receipt.payer), answer.payer);
  assert.equal(encodePaymentResponseHeader(answer), docText("PAYMENT-RESPONSE"));
});

test("every Tollgate name maps to the x402 code docs/X402.md's table gives it", () => {
  const table = docReasonTable();
  const names: TollgateName[] = [
    ...(Object.keys(REASON_CODES) as ReasonName[]),
    "wrong_version",
    "wrong_scheme",
    "wrong_network",
    "wrong_deployment",
    "wrong_kind",
    "wrong_payee",
    "underpaid",
    "wrong_request_hash",
    "internal",
    "engine_busy",
    "not_ready",
  ];
  for (const name of names) {
    const codes = table.get(name);
    assert.ok(codes, `${name} is in the table`);
    assert.ok(codes.includes(x402Reason(name, "verify")), `${name}: ${x402Reason(name)} in ${codes}`);
    assert.ok(codes.includes(x402Reason(name, "settle")), `${name} (settle) in ${codes}`);
  }
});

/** The worked example with `change` applied, checked; the refusal's code and name. */
function refusalOf(change: (payment: PaymentPayload, asked: PaymentRequirements) => void, now = SIGNED_AT): [string, string] {
  const payment = paid();
  const requirements = asked();
  change(payment, requirements);
  try {
    checkPayment({ ...atExample, now: () => now }, payment, requirements);
  } catch (error) {
    assert.ok(error instanceof Refusal, String(error));
    return [error.code, error.tollgateName];
  }
  assert.fail("the payment passed");
}

/** The example's receipt re-signed with `fields` changed. */
function resigned(payment: PaymentPayload, fields: { payee?: string; amount?: bigint }): void {
  const receipt = receiptFromJson(payment.payload);
  const domain = makeDomain(31337n, "0x5fbdb2315678afecb367f032d93f642f64180aa3");
  const again = signReceipt(
    {
      ...receipt,
      ...(fields.payee ? { payee: Buffer.from(fields.payee.slice(2), "hex") } : {}),
      ...(fields.amount !== undefined ? { amount: fields.amount } : {}),
    },
    SigningKey.fromSeed(SEED),
    domain,
  );
  payment.payload = { ...payment.payload, payee: `0x${toHex(again.payee)}`, amount: again.amount.toString(), signature: toHex(again.signature) };
}

test("each local refusal carries the doc's code", () => {
  const cases: [string, (p: PaymentPayload, r: PaymentRequirements) => void, string, string, number?][] = [
    ["version", (p) => void (p.x402Version = 1), X402_REASONS.version, "wrong_version"],
    ["scheme", (_, r) => void (r.scheme = "exact"), X402_REASONS.scheme, "wrong_scheme"],
    ["network", (_, r) => void (r.network = "eip155:1"), X402_REASONS.network, "wrong_network"],
    ["contract", (_, r) => void (r.extra.contract = `0x${"22".repeat(20)}`), X402_REASONS.requirements, "wrong_deployment"],
    ["chain id", (_, r) => void (r.extra.chainId = "1"), X402_REASONS.requirements, "wrong_deployment"],
    ["accepted", (p) => void (p.accepted = { ...p.accepted, network: "eip155:1" }), X402_REASONS.requirements, "wrong_kind"],
    ["unknown payload key", (p) => void (p.payload = { ...p.payload, extra: 1 }), X402_REASONS.payload, "malformed"],
    ["signature not hex", (p) => void (p.payload = { ...p.payload, signature: "zz" }), X402_REASONS.payload, "malformed"],
    ["price not a number", (_, r) => void (r.amount = "ten"), X402_REASONS.requirements, "malformed"],
    ["payee", (p) => resigned(p, { payee: `0x${"33".repeat(20)}` }), X402_REASONS.recipient, "wrong_payee"],
    ["amount", (p) => resigned(p, { amount: 999n }), X402_REASONS.amount, "underpaid"],
    ["route", (_, r) => void (r.extra.resource = "https://api.example.com/v1/other"), X402_REASONS.requestHash, "wrong_request_hash"],
    [
      "signature",
      (p) => void (p.payload = { ...p.payload, amount: "1001" }),
      X402_REASONS.signature,
      "bad_signature",
    ],
    ["late", () => {}, X402_REASONS.timestamp, "timestamp_skew", SIGNED_AT + 300_001],
  ];
  for (const [what, change, code, name, now] of cases) {
    assert.deepEqual(refusalOf(change, now), [code, name], what);
  }
  // At the edge of the skew it still passes.
  checkPayment({ ...atExample, now: () => SIGNED_AT + 300_000 }, paid(), asked());
});

test("nonces start at the clock, then count per channel whatever the clock does", () => {
  const clock = new NonceClock();
  assert.equal(clock.next("a", 100n), 100n);
  assert.equal(clock.next("a", 100n), 101n);
  assert.equal(clock.next("a", 50n), 102n);
  assert.equal(clock.next("b", 100n), 100n);
  assert.equal(clock.next("a", 5000n), 103n, "time passing does not move them out of the window");
});

test("a session key signs receipts flagged as a session's", async () => {
  const session = SigningKey.generate();
  const scheme = new TollgateClientScheme({ key: session, session: true, now: () => SIGNED_AT });
  const made = await scheme.createPaymentPayload(2, asked());
  assert.equal(made.payload.session, true);
  assert.equal(made.payload.payer, toHex(session.publicKey));
  const receipt = checkPayment(atExample, { ...paid(), payload: made.payload }, asked());
  assert.equal(receipt.session, true);
});
