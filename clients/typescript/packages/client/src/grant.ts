// Session capabilities as docs/PROTOCOL.md "Grant layout" and "Revocation layout" define them: a
// payer's signed grant of a session key, and its revocation. A fleet registers the bytes with
// `Client.grant` / `Client.revoke`; the server checks them, so this only builds and signs.

import { Writer, bytesArg, u64 } from "./bytes.js";
import { FormatError } from "./errors.js";
import type { SigningKey } from "./keys.js";
import type { Domain } from "./receipt.js";
import { GRANT_BYTES, REVOCATION_BYTES } from "./wire.js";

export const GRANT_TAG = "tollgate-grant-v1";
export const REVOKE_TAG = "tollgate-revoke-v1";
const PAYEES_MAX = 4;

/** What a payer grants a session key. */
export interface GrantTerms {
  /** The session key's public key, 32 bytes. */
  readonly sessionKey: Uint8Array;
  /** The payer's, so no two of its grants are the same bytes. */
  readonly grantNonce: bigint;
  /** The most the session may ever spend. */
  readonly cap: bigint;
  /** Per period; 0 for none (then `periodMs` is 0 too). */
  readonly allowance: bigint;
  readonly periodMs: bigint;
  /** Unix ms, inclusive. */
  readonly validFromMs: bigint;
  /** Unix ms, exclusive. */
  readonly validUntilMs: bigint;
  /** Up to 4 payee addresses (20 bytes each); empty for any payee. */
  readonly payees: readonly Uint8Array[];
}

/** `tollgate-grant-v1 ‖ grant bytes 0..224`: 241 bytes. */
export function grantSigningBytes(payer: Uint8Array, terms: GrantTerms, domain: Domain): Uint8Array {
  if (terms.payees.length > PAYEES_MAX) throw new FormatError("payees", `at most ${PAYEES_MAX}`);
  const out = new Writer(GRANT_TAG.length + 224)
    .raw(new TextEncoder().encode(GRANT_TAG))
    .u64(u64("chainId", domain.chainId))
    .raw(bytesArg("contract", domain.contract, 20))
    .raw(bytesArg("payer", payer, 32))
    .raw(bytesArg("sessionKey", terms.sessionKey, 32))
    .u64(u64("grantNonce", terms.grantNonce))
    .u64(u64("cap", terms.cap))
    .u64(u64("allowance", terms.allowance))
    .u64(u64("periodMs", terms.periodMs))
    .u64(u64("validFromMs", terms.validFromMs))
    .u64(u64("validUntilMs", terms.validUntilMs))
    .u8(terms.payees.length)
    .zeros(3);
  for (const payee of terms.payees) out.raw(bytesArg("payee", payee, 20));
  return out.bytes;
}

/** The 288-byte grant `payer` signs. */
export function signGrant(payer: SigningKey, terms: GrantTerms, domain: Domain): Uint8Array {
  const signing = grantSigningBytes(payer.publicKey, terms, domain);
  return new Writer(GRANT_BYTES).raw(signing.subarray(GRANT_TAG.length)).raw(payer.sign(signing)).bytes;
}

/** `tollgate-revoke-v1 ‖ revocation bytes 0..100`: 118 bytes. */
export function revocationSigningBytes(
  payer: Uint8Array,
  sessionKey: Uint8Array,
  revokedAtMs: bigint,
  domain: Domain,
): Uint8Array {
  return new Writer(REVOKE_TAG.length + 100)
    .raw(new TextEncoder().encode(REVOKE_TAG))
    .u64(u64("chainId", domain.chainId))
    .raw(bytesArg("contract", domain.contract, 20))
    .raw(bytesArg("payer", payer, 32))
    .raw(bytesArg("sessionKey", sessionKey, 32))
    .u64(u64("revokedAtMs", revokedAtMs)).bytes;
}

/** The 164-byte revocation of `sessionKey` that `payer` signs. */
export function signRevocation(
  payer: SigningKey,
  sessionKey: Uint8Array,
  revokedAtMs: bigint,
  domain: Domain,
): Uint8Array {
  const signing = revocationSigningBytes(payer.publicKey, sessionKey, revokedAtMs, domain);
  return new Writer(REVOCATION_BYTES).raw(signing.subarray(REVOKE_TAG.length)).raw(payer.sign(signing)).bytes;
}
