// Receipt v1 exactly as docs/PROTOCOL.md ("Receipt v1") and engine/src/receipt.rs lay it out: the
// 176-byte record, the 159 signing bytes bound to a deployment, the single-receipt verdict, and
// the JSON line form of `tollgate receipts sign|verify` (tools/src/receipts_json.rs).

import { Reader, Writer, bytesArg, fromHex, toHex, u64, u64Text } from "./bytes.js";
import { FormatError } from "./errors.js";
import { SigningKey, isGoodPayerKey, verifyCofactored } from "./keys.js";

export const RECEIPT_BYTES = 176;
export const RECEIPT_BODY_BYTES = 112;
export const SIGNATURE_BYTES = 64;
export const DOMAIN_TAG = "tollgate-receipt-v1";
/** Tag, chain id, contract. */
export const DOMAIN_BYTES = DOMAIN_TAG.length + 8 + 20;
export const SIGNING_BYTES = DOMAIN_BYTES + RECEIPT_BODY_BYTES;
/** Byte 52, bit 0: the key at offset 0 is a session key a payer granted. */
export const FLAG_SESSION = 0b1;
const FLAGS_AT = 52;

/** The deployment a receipt is signed for: part of every signing message. */
export interface Domain {
  readonly chainId: bigint;
  /** The settlement contract, 20 bytes. */
  readonly contract: Uint8Array;
}

/** A domain from a chain id and a contract address (bytes or `0x` hex). */
export function makeDomain(chainId: bigint | number, contract: Uint8Array | string): Domain {
  return { chainId: u64("chainId", chainId), contract: bytesArg("contract", contract, 20) };
}

/** The fields a payer signs. */
export interface UnsignedReceipt {
  /** Payer (or, with `session`, session) public key, 32 bytes. */
  readonly payer: Uint8Array;
  /** Payee EVM address, 20 bytes. */
  readonly payee: Uint8Array;
  readonly amount: bigint;
  /** Per (payer, payee) channel. */
  readonly nonce: bigint;
  /** Unix milliseconds. */
  readonly timestampMs: bigint;
  /** Opaque 32 bytes. */
  readonly requestHash: Uint8Array;
  /** The key in `payer` is a session key (flag bit 0). */
  readonly session: boolean;
}

/** A signed receipt. */
export interface Receipt extends UnsignedReceipt {
  /** `R ‖ S`, 64 bytes. */
  readonly signature: Uint8Array;
}

/** `tollgate-receipt-v1 ‖ chain id ‖ contract`: 47 bytes. */
export function domainSeparator(domain: Domain): Uint8Array {
  return new Writer(DOMAIN_BYTES)
    .raw(new TextEncoder().encode(DOMAIN_TAG))
    .u64(u64("chainId", domain.chainId))
    .raw(bytesArg("contract", domain.contract, 20)).bytes;
}

/** The record's first 112 bytes: what the signature covers after the domain. */
export function receiptBody(receipt: UnsignedReceipt): Uint8Array {
  return new Writer(RECEIPT_BODY_BYTES)
    .raw(bytesArg("payer", receipt.payer, 32))
    .raw(bytesArg("payee", receipt.payee, 20))
    .u8(receipt.session ? FLAG_SESSION : 0)
    .zeros(3)
    .u64(u64("amount", receipt.amount))
    .u64(u64("nonce", receipt.nonce))
    .u64(u64("timestampMs", receipt.timestampMs))
    .raw(bytesArg("requestHash", receipt.requestHash, 32)).bytes;
}

/** The 159 bytes the payer signs. */
export function signingBytes(receipt: UnsignedReceipt, domain: Domain): Uint8Array {
  return new Writer(SIGNING_BYTES).raw(domainSeparator(domain)).raw(receiptBody(receipt)).bytes;
}

/** The fields to sign; `payer` is the signing key's own. */
export type ReceiptFields = Omit<UnsignedReceipt, "payer" | "session"> & { readonly session?: boolean };

/** Signs `fields` with `key` for `domain`. `session: true` when `key` is a granted session key. */
export function signReceipt(fields: ReceiptFields, key: SigningKey, domain: Domain): Receipt {
  const unsigned: UnsignedReceipt = { ...fields, payer: key.publicKey, session: fields.session ?? false };
  return { ...unsigned, signature: key.sign(signingBytes(unsigned, domain)) };
}

/** The 176-byte record. */
export function encodeReceipt(receipt: Receipt): Uint8Array {
  return new Writer(RECEIPT_BYTES)
    .raw(receiptBody(receipt))
    .raw(bytesArg("signature", receipt.signature, SIGNATURE_BYTES)).bytes;
}

/**
 * A record's fields. Refuses a record that is not 176 bytes or whose reserved bytes or unknown
 * flag bits are set (the server rejects such a receipt `malformed`).
 */
export function decodeReceipt(record: Uint8Array): Receipt {
  if (!(record instanceof Uint8Array) || record.length !== RECEIPT_BYTES) {
    throw new FormatError("receipt", `a receipt is ${RECEIPT_BYTES} bytes`);
  }
  const flags = record[FLAGS_AT] ?? 0;
  if ((flags & ~FLAG_SESSION) !== 0 || record.subarray(53, 56).some((b) => b !== 0)) {
    throw new FormatError("receipt", "reserved bytes are not zero");
  }
  const read = new Reader(record);
  const payer = read.raw(32);
  const payee = read.raw(20);
  read.zeros(4);
  return {
    payer,
    payee,
    session: (flags & FLAG_SESSION) !== 0,
    amount: read.u64(),
    nonce: read.u64(),
    timestampMs: read.u64(),
    requestHash: read.raw(32),
    signature: read.raw(SIGNATURE_BYTES),
  };
}

/** What the server's signature checks say of a receipt on its own (reason names of the ACK). */
export type SignatureVerdict = "accepted" | "malformed" | "bad_payer_key" | "bad_signature";

/**
 * The receipt's verdict under docs/PROTOCOL.md "Signature rule", in its order: a key that is not
 * canonical, of small order or with torsion is `bad_payer_key`; then `S < L`, `R` canonical and
 * the cofactored equation, else `bad_signature`. Only the parse and signature checks: funds,
 * replay and time are the server's.
 */
export function verifyReceipt(receipt: Receipt | Uint8Array, domain: Domain): SignatureVerdict {
  let parsed: Receipt;
  try {
    parsed = receipt instanceof Uint8Array ? decodeReceipt(receipt) : receipt;
    // Re-encoding checks every field's size and range as the record would carry it.
    encodeReceipt(parsed);
  } catch {
    return "malformed";
  }
  if (!isGoodPayerKey(parsed.payer)) return "bad_payer_key";
  return verifyCofactored(parsed.signature, signingBytes(parsed, domain), parsed.payer)
    ? "accepted"
    : "bad_signature";
}

/**
 * One line of `tollgate receipts sign|verify`: hex bytes (`payee` with `0x`), integers as decimal
 * strings, `session` present only when true.
 */
export interface ReceiptJson {
  payer?: string;
  payee: string;
  amount: string;
  nonce: string;
  timestamp_ms: string;
  request_hash: string;
  signature?: string;
  session?: boolean;
}

const JSON_FIELDS = new Set([
  "payer",
  "payee",
  "amount",
  "nonce",
  "timestamp_ms",
  "request_hash",
  "signature",
  "session",
]);

/** The JSON object for a signed receipt, field for field as the Rust tools write it. */
export function receiptToJson(receipt: Receipt): ReceiptJson {
  const line: ReceiptJson = {
    payer: toHex(receipt.payer),
    payee: `0x${toHex(receipt.payee)}`,
    amount: receipt.amount.toString(),
    nonce: receipt.nonce.toString(),
    timestamp_ms: receipt.timestampMs.toString(),
    request_hash: toHex(receipt.requestHash),
    signature: toHex(receipt.signature),
  };
  if (receipt.session) line.session = true;
  return line;
}

/**
 * A signed receipt from a JSON line (text or parsed object). Like the Rust reader it takes
 * integers as strings or numbers (a number must be one JavaScript holds exactly), hex with or
 * without `0x`, and refuses unknown fields.
 */
export function receiptFromJson(line: string | object): Receipt {
  let value: unknown = line;
  if (typeof line === "string") {
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new FormatError("receipt", `not JSON: ${(error as Error).message}`);
    }
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new FormatError("receipt", "not a JSON object");
  }
  const fields = value as Record<string, unknown>;
  for (const name of Object.keys(fields)) {
    if (!JSON_FIELDS.has(name)) throw new FormatError(name, "unknown field");
  }
  const text = (name: string): string => {
    const field = fields[name];
    if (typeof field !== "string") throw new FormatError(name, "missing, or not a string");
    return field;
  };
  const session = fields.session ?? false;
  if (typeof session !== "boolean") throw new FormatError("session", "not a boolean");
  return {
    payer: fromHex("payer", text("payer"), 32),
    payee: fromHex("payee", text("payee"), 20),
    amount: u64Text("amount", fields.amount),
    nonce: u64Text("nonce", fields.nonce),
    timestampMs: u64Text("timestamp_ms", fields.timestamp_ms),
    requestHash: fromHex("request_hash", text("request_hash"), 32),
    signature: fromHex("signature", text("signature"), SIGNATURE_BYTES),
    session,
  };
}
