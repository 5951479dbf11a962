// ed25519 for receipts and HELLO: Node's own crypto (OpenSSL) signs and checks the ordinary
// equation, fast; @noble/ed25519 (audited, maintained) answers the two questions OpenSSL does
// not ask the way docs/PROTOCOL.md's "Signature rule" does: is a key canonical, of large order
// and torsion-free, and does a signature OpenSSL refuses still hold under the cofactored
// equation. noble's synchronous API needs a SHA-512: Node's own.

import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";
import * as ed from "@noble/ed25519";
import { bytesArg, exactly } from "./bytes.js";

ed.hashes.sha512 = (message: Uint8Array) =>
  new Uint8Array(createHash("sha512").update(message).digest());

/** DER of a PKCS#8 ed25519 private key up to its 32-byte seed (RFC 8410). */
const PKCS8_SEED_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
/** DER of an ed25519 SubjectPublicKeyInfo up to its 32-byte key (RFC 8410). */
const SPKI_KEY_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** An ed25519 key pair from its 32-byte RFC 8032 seed. */
export class SigningKey {
  /** The 32-byte compressed public key. */
  readonly publicKey: Uint8Array;
  private readonly privateKey: KeyObject;

  private constructor(seed: Uint8Array) {
    this.privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_SEED_PREFIX, seed]), format: "der", type: "pkcs8" });
    const spki = createPublicKey(this.privateKey).export({ format: "der", type: "spki" });
    this.publicKey = new Uint8Array(spki.subarray(SPKI_KEY_PREFIX.length));
  }

  /** The key with this seed (32 bytes, or 64 hex digits with or without `0x`). */
  static fromSeed(seed: Uint8Array | string): SigningKey {
    return new SigningKey(Uint8Array.from(bytesArg("seed", seed, 32)));
  }

  /** A fresh random key. */
  static generate(): SigningKey {
    return new SigningKey(new Uint8Array(randomBytes(32)));
  }

  /** The deterministic RFC 8032 signature `R ‖ S` over `message`. */
  sign(message: Uint8Array): Uint8Array {
    return new Uint8Array(sign(null, message, this.privateKey));
  }
}

/**
 * Keys already judged: a good one's KeyObject, or null for a bad one. A payer signs many
 * receipts, and the torsion check is a full scalar multiplication in JavaScript, so each key is
 * judged once; the map is emptied when full rather than grown without bound.
 */
const judged = new Map<string, KeyObject | null>();
const JUDGED_MAX = 65_536;

/** The key's KeyObject when it may be a payer key (docs/PROTOCOL.md "Signature rule", step 1). */
function payerKey(key: Uint8Array): KeyObject | null {
  const bytes = exactly("key", key, 32);
  const id = Buffer.from(bytes).toString("hex");
  const known = judged.get(id);
  if (known !== undefined) return known;
  let good: KeyObject | null = null;
  try {
    // Strict decoding: y < p, and no x = 0 with the sign bit set.
    const point = ed.Point.fromBytes(bytes, false);
    if (!point.isSmallOrder() && point.isTorsionFree()) {
      good = createPublicKey({ key: Buffer.concat([SPKI_KEY_PREFIX, bytes]), format: "der", type: "spki" });
    }
  } catch {
    good = null;
  }
  if (judged.size >= JUDGED_MAX) judged.clear();
  judged.set(id, good);
  return good;
}

/** True when `key` may be a payer key: docs/PROTOCOL.md "Signature rule", step 1. */
export function isGoodPayerKey(key: Uint8Array): boolean {
  return key.length === 32 && payerKey(key) !== null;
}

/**
 * The receipt signature rule for a good key: `S < L`, `R` canonical (any order), and the
 * cofactored equation `[8](R + kA - SB) = 0`. OpenSSL checks `R = SB - kA` byte for byte (which
 * also refuses `S >= L` and a non-canonical `R`): when that holds the cofactored equation holds.
 * It differs only for an `R` with a small-order part, which OpenSSL refuses and the rule accepts,
 * so a signature OpenSSL refuses is judged by noble's non-ZIP-215 branch, exactly the rule once
 * the key is good (it decodes strictly, refuses `S >= L` and checks the cofactored equation).
 */
export function verifyCofactored(signature: Uint8Array, message: Uint8Array, key: Uint8Array): boolean {
  try {
    // A key outside the rule (small order, torsion, not canonical) signs nothing.
    const good = payerKey(key);
    if (good === null) return false;
    if (signature.length === 64 && verify(null, message, good, signature)) return true;
    return ed.verify(signature, message, key, { zip215: false });
  } catch {
    return false;
  }
}
