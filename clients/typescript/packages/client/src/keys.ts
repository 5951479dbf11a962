// ed25519 through @noble/ed25519 (audited, maintained): keys from RFC 8032 seeds, signing, and
// the two acceptance rules docs/PROTOCOL.md gives (receipts: strict keys, cofactored equation;
// HELLO: RFC 8032 strict). The synchronous API needs a SHA-512: Node's own.

import { createHash, randomBytes } from "node:crypto";
import * as ed from "@noble/ed25519";
import { bytesArg, exactly } from "./bytes.js";

ed.hashes.sha512 = (message: Uint8Array) =>
  new Uint8Array(createHash("sha512").update(message).digest());

/** An ed25519 key pair from its 32-byte RFC 8032 seed. */
export class SigningKey {
  /** The 32-byte compressed public key. */
  readonly publicKey: Uint8Array;
  private readonly seed: Uint8Array;

  private constructor(seed: Uint8Array) {
    this.seed = seed;
    this.publicKey = ed.getPublicKey(seed);
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
    return ed.sign(message, this.seed);
  }
}

/** True when `key` may be a payer key: docs/PROTOCOL.md "Signature rule", step 1. */
export function isGoodPayerKey(key: Uint8Array): boolean {
  let point: ed.Point;
  try {
    // Strict decoding: y < p, and no x = 0 with the sign bit set.
    point = ed.Point.fromBytes(exactly("key", key, 32), false);
  } catch {
    return false;
  }
  return !point.isSmallOrder() && point.isTorsionFree();
}

/**
 * The receipt signature rule: a good key (checked by the caller), `S < L`, `R` canonical (any
 * order), and the cofactored equation. noble's non-ZIP-215 branch is exactly that once the key
 * is known to be good: it decodes strictly, refuses `S >= L` and checks `[8](R + kA - SB) = 0`.
 */
export function verifyCofactored(signature: Uint8Array, message: Uint8Array, key: Uint8Array): boolean {
  try {
    return ed.verify(signature, message, key, { zip215: false });
  } catch {
    return false;
  }
}
