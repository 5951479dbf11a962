// Receipt signing, verification and the JSON line form, against the rules of docs/PROTOCOL.md
// and, when TOLLGATE_BIN names the built `tollgate`, against the Rust tools themselves.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, createPublicKey, verify } from "node:crypto";
import { test } from "node:test";
import * as ed from "@noble/ed25519";
import {
  FormatError,
  SigningKey,
  decodeReceipt,
  isGoodPayerKey,
  encodeReceipt,
  makeDomain,
  receiptFromJson,
  receiptToJson,
  signReceipt,
  signingBytes,
  toHex,
  verifyReceipt,
  type Receipt,
} from "../src/index.js";

const CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3";
const domain = makeDomain(31337n, CONTRACT);
const payer = SigningKey.fromSeed("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
const fields = {
  payee: Buffer.from("11".repeat(20), "hex"),
  amount: 1500n,
  nonce: 7n,
  timestampMs: 1764000000000n,
  requestHash: new Uint8Array(32).fill(0x22),
};
const receipt = signReceipt(fields, payer, domain);

/** The documented example's JSON line, as `tollgate receipts sign` writes it. */
const EXAMPLE_LINE =
  '{"payer":"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",' +
  '"payee":"0x1111111111111111111111111111111111111111","amount":"1500","nonce":"7",' +
  '"timestamp_ms":"1764000000000","request_hash":"' +
  "22".repeat(32) +
  '","signature":"8906203c2ef61b55818abe1357fbd72677f4daa551a5f6ca585f6b9809bdbaf8' +
  '61af6dd7c005ee70b338daf47b6ceb65ec1d0240484609c0ad11fe3c2d4eba05"}';

function withByte(record: Uint8Array, at: number, value: number): Uint8Array {
  const out = Uint8Array.from(record);
  out[at] = value;
  return out;
}

test("the JSON form is the Rust tools' line, integers as decimal strings", () => {
  assert.equal(JSON.stringify(receiptToJson(receipt)), EXAMPLE_LINE);
  const back = receiptFromJson(EXAMPLE_LINE);
  assert.deepEqual(encodeReceipt(back), encodeReceipt(receipt));
  const session = signReceipt({ ...fields, session: true }, payer, domain);
  assert.equal(receiptToJson(session).session, true);
  assert.equal(receiptFromJson(receiptToJson(session)).session, true);
});

test("the JSON reader takes numbers, 0x and upper case like the Rust one, and u64s beyond 2^53 exactly", () => {
  const line = JSON.parse(EXAMPLE_LINE) as Record<string, unknown>;
  const loose = { ...line, amount: 1500, nonce: "18446744073709551615", payee: "1111111111111111111111111111111111111111", payer: `0x${(line.payer as string).toUpperCase()}` };
  const parsed = receiptFromJson(loose);
  assert.equal(parsed.amount, 1500n);
  assert.equal(parsed.nonce, 18446744073709551615n);
  assert.equal(toHex(parsed.payer), line.payer);
  assert.equal(receiptToJson(parsed).nonce, "18446744073709551615");
});

test("the JSON reader refuses what the Rust one refuses, with a FormatError naming the field", () => {
  const line = JSON.parse(EXAMPLE_LINE) as Record<string, unknown>;
  const refused: [unknown, string][] = [
    [{ ...line, amount: "18446744073709551616" }, "amount"],
    [{ ...line, amount: "-1" }, "amount"],
    [{ ...line, amount: 2 ** 60 }, "amount"],
    [{ ...line, nonce: "7.5" }, "nonce"],
    [{ ...line, payee: "0x11" }, "payee"],
    [{ ...line, request_hash: "zz".repeat(32) }, "request_hash"],
    [{ ...line, surprise: 1 }, "surprise"],
    [{ ...line, session: "yes" }, "session"],
    [{ ...line, signature: undefined }, "signature"],
    ["{not json", "receipt"],
    ["[]", "receipt"],
  ];
  for (const [input, field] of refused) {
    assert.throws(
      () => receiptFromJson(input as object),
      (error: unknown) => error instanceof FormatError && error.field === field,
      `${JSON.stringify(input)} should be refused on ${field}`,
    );
  }
});

test("verification follows the signature rule: key, then signature, bound to the deployment", () => {
  const record = encodeReceipt(receipt);
  assert.equal(verifyReceipt(receipt, domain), "accepted");
  // Another deployment, another payee, a flipped signature bit: the signature no longer holds.
  assert.equal(verifyReceipt(receipt, makeDomain(1n, CONTRACT)), "bad_signature");
  assert.equal(verifyReceipt(receipt, makeDomain(31337n, new Uint8Array(20))), "bad_signature");
  assert.equal(verifyReceipt(withByte(record, 40, 0x12), domain), "bad_signature");
  assert.equal(verifyReceipt(withByte(record, 150, (record[150] as number) ^ 1), domain), "bad_signature");
  // The session flag is signed like every other byte.
  assert.equal(verifyReceipt(withByte(record, 52, 1), domain), "bad_signature");
  // S >= L: the group order added to S leaves the equation true but is refused.
  const L = (1n << 252n) + 27742317777372353535851937790883648493n;
  const s = BigInt(`0x${toHex(receipt.signature.slice(32).reverse())}`);
  const big = Buffer.from((s + L).toString(16).padStart(64, "0"), "hex").reverse();
  const signature = Uint8Array.from([...receipt.signature.slice(0, 32), ...big]);
  assert.equal(verifyReceipt({ ...receipt, signature }, domain), "bad_signature");
  // A small-order key (the identity) and a non-canonical one are bad keys, whatever they sign.
  const identity = new Uint8Array(32);
  identity[0] = 1;
  assert.equal(verifyReceipt({ ...receipt, payer: identity }, domain), "bad_payer_key");
  const nonCanonical = new Uint8Array(32).fill(0xff);
  nonCanonical[31] = 0x7f;
  assert.equal(verifyReceipt({ ...receipt, payer: nonCanonical }, domain), "bad_payer_key");
  // Reserved bytes and unknown flag bits: malformed before anything else.
  assert.equal(verifyReceipt(withByte(record, 53, 1), domain), "malformed");
  assert.equal(verifyReceipt(withByte(record, 52, 2), domain), "malformed");
  assert.throws(() => decodeReceipt(withByte(record, 52, 2)), FormatError);
  assert.throws(() => decodeReceipt(record.subarray(1)), FormatError);
});

test("a u64 field out of range is refused when signing, never wrapped", () => {
  assert.throws(() => signReceipt({ ...fields, amount: 1n << 64n }, payer, domain), FormatError);
  assert.throws(() => signReceipt({ ...fields, nonce: -1n }, payer, domain), FormatError);
  assert.throws(() => signReceipt({ ...fields, payee: new Uint8Array(19) }, payer, domain), FormatError);
});

const bin = process.env.TOLLGATE_BIN;
test(
  "`tollgate receipts` signs the same lines and accepts what this package signs",
  { skip: bin ? false : "TOLLGATE_BIN is not set: no Rust binary to compare with" },
  () => {
    const run = (args: string[], input: string): string => {
      const done = spawnSync(bin as string, ["receipts", ...args, "--chain-id", "31337", "--contract", CONTRACT], {
        input,
        encoding: "utf8",
      });
      assert.equal(done.error, undefined);
      return done.stdout;
    };
    const receipts: Receipt[] = [];
    for (let i = 0; i < 20; i++) {
      const session = i % 3 === 0;
      receipts.push(
        signReceipt(
          { ...fields, amount: BigInt(i) * 1_000_000_007n, nonce: (1n << 63n) + BigInt(i), session },
          payer,
          domain,
        ),
      );
    }
    const lines = receipts.map((r) => JSON.stringify(receiptToJson(r)));
    const unsigned = receipts.map((r) => {
      const { payer: _payer, signature: _signature, ...rest } = receiptToJson(r);
      return JSON.stringify(rest);
    });
    const signed = run(["sign", "--key", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"], unsigned.join("\n") + "\n");
    assert.deepEqual(signed.trim().split("\n"), lines);
    // The payer's own receipts verify alone; a session's would need its grant (`--grant`).
    const own = lines.filter((_, i) => !receipts[i]?.session);
    const verdicts = run(["verify", "--json"], own.join("\n") + "\n").trim().split("\n");
    assert.deepEqual(
      verdicts.map((v) => (JSON.parse(v) as { verdict: string }).verdict),
      own.map(() => "accepted"),
    );
    const tampered = (own[0] as string).replace('"amount":"1000000007"', '"amount":"1000000008"');
    assert.notEqual(tampered, own[0]);
    const refused = JSON.parse(run(["verify", "--json"], tampered + "\n")) as { reason: string };
    assert.equal(refused.reason, "bad_signature");
  },
);

test("a signature whose R has a small-order part holds, as under the server's cofactored rule", () => {
  // R' = rB + T with T of order 2, and S computed for R': [8](R' + kA - SB) = 0 holds, while
  // R' = SB - kA (the equation OpenSSL checks) does not. The Rust verifier accepts it.
  const L = (1n << 252n) + 27742317777372353535851937790883648493n;
  const le = (bytes: Uint8Array): bigint => BigInt(`0x${toHex(Uint8Array.from(bytes).reverse())}`);
  const seed = Buffer.from("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "hex");
  const { scalar } = ed.utils.getExtendedPublicKey(seed);
  const unsigned = { ...fields, payer: payer.publicKey, session: false };
  const message = signingBytes(unsigned, domain);
  const order2 = ed.Point.fromBytes(Buffer.from(`ec${"ff".repeat(30)}7f`, "hex"));
  const r = 123456789n;
  const R = ed.Point.BASE.multiply(r).add(order2).toBytes();
  const k = le(createHash("sha512").update(R).update(payer.publicKey).update(message).digest()) % L;
  const S = (r + k * scalar) % L;
  const signature = Uint8Array.from([...R, ...Buffer.from(S.toString(16).padStart(64, "0"), "hex").reverse()]);
  const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), payer.publicKey]);
  assert.equal(verify(null, message, createPublicKey({ key: spki, format: "der", type: "spki" }), signature), false);
  assert.equal(verifyReceipt({ ...unsigned, signature }, domain), "accepted");
});

test("a key of the wrong length is not a good payer key, and no error", () => {
  assert.equal(isGoodPayerKey(new Uint8Array(31)), false);
  assert.equal(isGoodPayerKey(new Uint8Array(33)), false);
  assert.equal(isGoodPayerKey(SigningKey.fromSeed(new Uint8Array(32).fill(7)).publicKey), true);
});
