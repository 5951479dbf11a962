// Every hex example of docs/PROTOCOL.md, reproduced byte for byte by this package's encoders and
// signer (the Rust side is ingest/tests/protocol_doc.rs), and read back by its decoders.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  SigningKey,
  decodeFrame,
  decodeReceipt,
  encodeFrame,
  encodeReceipt,
  grantSigningBytes,
  helloSigningBytes,
  makeDomain,
  signGrant,
  signHello,
  signReceipt,
  signRevocation,
  signingBytes,
  toHex,
  verifyReceipt,
  type Frame,
} from "../src/index.js";
import { protocolHexBlocks } from "./helpers.js";

const blocks = protocolHexBlocks();
const checked = new Set<string>();

function block(name: string): Uint8Array {
  const bytes = blocks.get(name);
  assert.ok(bytes, `docs/PROTOCOL.md has no hex block ${name}`);
  checked.add(name);
  return bytes;
}

function sameHex(actual: Uint8Array, name: string): void {
  assert.equal(toHex(actual), toHex(block(name)), `${name} differs from docs/PROTOCOL.md`);
}

function decodesBackTo(name: string, frame: Frame): void {
  const bytes = block(name);
  const decoded = decodeFrame(bytes, 1 << 20);
  assert.equal(decoded.frame === undefined ? 0 : decoded.bytes, bytes.length);
  assert.deepEqual(decoded.frame, frame);
}

const domain = makeDomain(31337n, "0x5fbdb2315678afecb367f032d93f642f64180aa3");
const payer = SigningKey.fromSeed(toHex(block("payer-seed")));
const payee = "0x1111111111111111111111111111111111111111";
const fields = {
  payee: Buffer.from(payee.slice(2), "hex"),
  amount: 1500n,
  nonce: 7n,
  timestampMs: 1764000000000n,
  requestHash: new Uint8Array(32).fill(0x22),
};

test("the payer's receipt, its signing bytes, signature and SUBMIT frame", () => {
  sameHex(payer.publicKey, "payer-key");
  const receipt = signReceipt(fields, payer, domain);
  sameHex(signingBytes(receipt, domain), "signing-bytes");
  sameHex(receipt.signature, "signature");
  sameHex(encodeReceipt(receipt), "receipt");
  assert.deepEqual(decodeReceipt(block("receipt")), { ...receipt, payee: new Uint8Array(fields.payee) });
  assert.equal(verifyReceipt(block("receipt"), domain), "accepted");
  const submit: Frame = { type: "SUBMIT", batchSeq: 1n, receipts: encodeReceipt(receipt) };
  sameHex(encodeFrame(submit), "submit-frame");
  decodesBackTo("submit-frame", submit);
});

test("the HELLO, its signing bytes and frame", () => {
  const client = SigningKey.fromSeed(block("client-seed"));
  const nonce = block("challenge-nonce");
  const hello = signHello({ clientId: 42n, producerId: 1n, sessionEpoch: 1n }, domain, client, nonce);
  sameHex(helloSigningBytes(nonce, hello), "hello-signing-bytes");
  sameHex(encodeFrame(hello), "hello-frame");
  decodesBackTo("hello-frame", hello);
});

test("the grant, the session's receipt and the revocation, with their frames", () => {
  const session = SigningKey.fromSeed(block("session-seed"));
  sameHex(session.publicKey, "session-key");
  const terms = {
    sessionKey: session.publicKey,
    grantNonce: 1n,
    cap: 1_000_000n,
    allowance: 100_000n,
    periodMs: 3_600_000n,
    validFromMs: 1764000000000n,
    validUntilMs: 1764086400000n,
    payees: [new Uint8Array(fields.payee)],
  };
  sameHex(grantSigningBytes(payer.publicKey, terms, domain), "grant-signing-bytes");
  const grant = signGrant(payer, terms, domain);
  sameHex(grant, "grant");
  const grantFrame: Frame = { type: "GRANT", requestId: 1n, record: grant };
  sameHex(encodeFrame(grantFrame), "grant-frame");
  decodesBackTo("grant-frame", grantFrame);

  const sessionReceipt = signReceipt({ ...fields, timestampMs: 1764000060000n, session: true }, session, domain);
  sameHex(encodeReceipt(sessionReceipt), "session-receipt");
  assert.equal(decodeReceipt(block("session-receipt")).session, true);
  assert.equal(verifyReceipt(sessionReceipt, domain), "accepted");

  const revocation = signRevocation(payer, session.publicKey, 1764003600000n, domain);
  sameHex(revocation, "revocation");
  const revokeFrame: Frame = { type: "REVOKE", requestId: 2n, record: revocation };
  sameHex(encodeFrame(revokeFrame), "revoke-frame");
  decodesBackTo("revoke-frame", revokeFrame);
});

test("every hex example of docs/PROTOCOL.md is checked here", { concurrency: false }, () => {
  // Runs last in this file (tests in a file run in order): a new example in the doc fails this
  // until a test above reproduces it.
  assert.deepEqual([...blocks.keys()].filter((name) => !checked.has(name)), []);
});
