// The Tollgate binding of x402 v2 as docs/X402.md specifies it (the Rust twin is
// tools/src/x402.rs): names, `PaymentRequirements.extra`, `request_hash`, the nonce rule, the
// checks of a payment that need neither the ledger nor the network, and the commitment
// identifier a settle answers with.

import { createHash } from "node:crypto";
import { blake3 } from "@noble/hashes/blake3";
import {
  FormatError,
  encodeReceipt,
  fromHex,
  makeDomain,
  receiptFromJson,
  toHex,
  u64Text,
  verifyReceipt,
  type Domain,
  type Receipt,
} from "@tollgate/client";
import type { Network, PaymentPayload, PaymentRequirements } from "@x402/core/types";
import { Refusal, X402_REASONS } from "./reasons.js";

export const X402_VERSION = 2;
export const SCHEME = "tollgate";
export const REQUEST_HASH_TAG = "tollgate-x402-v1";
/** The anti-replay window and timestamp skew `tollgate serve` uses unless configured otherwise. */
export const WINDOW_NONCES_DEFAULT = 1024;
export const TIMESTAMP_SKEW_MS_DEFAULT = 300_000;

/** The CAIP-2 network of a deployment on `chainId`. */
export function network(chainId: bigint | number): Network {
  return `eip155:${BigInt(chainId)}`;
}

/** The `extra` a payer needs, as `GET /supported` advertises it (docs/X402.md, PaymentRequirements). */
export interface TollgateExtra {
  /** u64 string. */
  chainId: string;
  /** `0x` hex. */
  contract: string;
  windowNonces: number;
  timestampSkewMs: number;
  /** The resource the price is for; bound into `request_hash`. */
  resource?: string;
}

/** The extra of a deployment. */
export function deploymentExtra(
  domain: Domain,
  windowNonces = WINDOW_NONCES_DEFAULT,
  timestampSkewMs = TIMESTAMP_SKEW_MS_DEFAULT,
): TollgateExtra {
  return { chainId: domain.chainId.toString(), contract: `0x${toHex(domain.contract)}`, windowNonces, timestampSkewMs };
}

/** The receipt domain named by requirements' `extra` (`chainId`, `contract`). */
export function domainOf(requirements: PaymentRequirements): Domain {
  const { chainId, contract } = requirements.extra;
  if (typeof chainId !== "string" && typeof chainId !== "number") {
    throw new FormatError("extra.chainId", "missing");
  }
  if (typeof contract !== "string") throw new FormatError("extra.contract", "missing");
  return makeDomain(u64Text("extra.chainId", chainId), contract);
}

/** `payTo` as 20 bytes. */
export function payeeOf(requirements: PaymentRequirements): Uint8Array {
  return fromHex("payTo", requirements.payTo, 20);
}

/** The price: `amount` as a u64. */
export function priceOf(requirements: PaymentRequirements): bigint {
  return u64Text("amount", requirements.amount);
}

/**
 * SHA-256 of `tollgate-x402-v1 LF network LF payTo LF amount LF asset LF resource`, with `payTo`
 * lowercase `0x` hex, `amount` canonical and `resource` `extra.resource` when it is a string.
 */
export function requestHash(requirements: PaymentRequirements): Uint8Array {
  const payTo = `0x${toHex(payeeOf(requirements))}`;
  const resource = typeof requirements.extra.resource === "string" ? requirements.extra.resource : "";
  const preimage = [
    REQUEST_HASH_TAG,
    requirements.network,
    payTo,
    priceOf(requirements).toString(),
    requirements.asset,
    resource,
  ].join("\n");
  return new Uint8Array(createHash("sha256").update(preimage, "utf8").digest());
}

/**
 * A payer's nonces without stored state: per channel a counter that starts at the clock (`now_ms`
 * for the first, then `last + 1`), strictly rising within the process and not moved by time, so a
 * payment held up for any time stays inside the window of later ones (docs/X402.md, "Nonces").
 */
export class NonceClock {
  private readonly last = new Map<string, bigint>();

  /** The next nonce of the channel named `channel`; `nowMs` is read only for its first. */
  next(channel: string, nowMs: bigint): bigint {
    const last = this.last.get(channel);
    const nonce = last === undefined ? nowMs : last + 1n;
    this.last.set(channel, nonce);
    return nonce;
  }
}

/** Where a deployment's facilitator stands: what the local checks compare with. */
export interface Deployment {
  domain: Domain;
  /** Refuse a receipt further than this from `now()`; default 300,000. */
  timestampSkewMs?: number;
  /** Unix milliseconds; default `Date.now`. */
  now?: () => number;
}

/** The requirements are this deployment's kind: scheme, network and `extra` (docs/X402.md). */
function checkKind(domain: Domain, requirements: PaymentRequirements): void {
  if (requirements.scheme !== SCHEME) {
    throw new Refusal("wrong_scheme", `scheme ${JSON.stringify(requirements.scheme)}, this facilitator takes "${SCHEME}"`);
  }
  const ours = network(domain.chainId);
  if (requirements.network !== ours) {
    throw new Refusal("wrong_network", `network ${JSON.stringify(requirements.network)}, this deployment is "${ours}"`);
  }
  const want = deploymentExtra(domain);
  for (const field of ["chainId", "contract"] as const) {
    const given = requirements.extra?.[field];
    if (typeof given !== "string" || given.toLowerCase() !== want[field]) {
      throw new Refusal("wrong_deployment", `extra.${field} is ${JSON.stringify(given)}, this deployment's is "${want[field]}"`);
    }
  }
}

function requirementsField<T>(read: () => T): T {
  try {
    return read();
  } catch (error) {
    throw new Refusal("malformed", (error as Error).message, X402_REASONS.requirements);
  }
}

/**
 * The checks of docs/X402.md's `/verify` list that need no ledger, in its order: version, kind,
 * `accepted`, the receipt parses, pays `payTo` at least the price with the requirements'
 * `request_hash`, its signature holds under this deployment (unless `signature` is false, for a
 * caller whose server checks it anyway), its timestamp is within the skew.
 * Returns the receipt; throws a `Refusal`. What only the ledger knows (a deposit, funds, the
 * nonce window, a session's grant) is judged when the receipt is settled.
 */
export function checkPayment(
  deployment: Deployment,
  payload: PaymentPayload,
  requirements: PaymentRequirements,
  signature = true,
): Receipt {
  const { domain } = deployment;
  if (payload.x402Version !== X402_VERSION) {
    throw new Refusal("wrong_version", `paymentPayload.x402Version ${JSON.stringify(payload.x402Version)}`);
  }
  checkKind(domain, requirements);
  if (payload.accepted?.scheme !== requirements.scheme || payload.accepted?.network !== requirements.network) {
    throw new Refusal("wrong_kind", "paymentPayload.accepted names another scheme or network than paymentRequirements");
  }
  let receipt: Receipt;
  try {
    receipt = receiptFromJson(payload.payload);
  } catch (error) {
    throw new Refusal("malformed", (error as Error).message);
  }
  const payTo = requirementsField(() => payeeOf(requirements));
  if (toHex(receipt.payee) !== toHex(payTo)) {
    throw new Refusal("wrong_payee", `the receipt pays 0x${toHex(receipt.payee)}, payTo is 0x${toHex(payTo)}`);
  }
  const price = requirementsField(() => priceOf(requirements));
  if (receipt.amount < price) {
    throw new Refusal("underpaid", `the receipt pays ${receipt.amount}, the price is ${price}`);
  }
  if (toHex(receipt.requestHash) !== toHex(requestHash(requirements))) {
    throw new Refusal("wrong_request_hash", "the receipt's request_hash is not the requirements' (docs/X402.md, request_hash)");
  }
  const verdict = signature ? verifyReceipt(receipt, domain) : "accepted";
  if (verdict !== "accepted") throw new Refusal(verdict, "the signature does not verify under this deployment");
  const now = BigInt(Math.trunc((deployment.now ?? Date.now)()));
  const skew = BigInt(deployment.timestampSkewMs ?? TIMESTAMP_SKEW_MS_DEFAULT);
  const off = receipt.timestampMs > now ? receipt.timestampMs - now : now - receipt.timestampMs;
  if (off > skew) {
    throw new Refusal("timestamp_skew", `timestamp_ms ${receipt.timestampMs} is ${off} ms from the facilitator's clock (skew ${skew})`);
  }
  return receipt;
}

/** The commitment identifier a settle answers in `transaction`: `0x` and BLAKE3 of the 176 bytes. */
export function transactionId(receipt: Receipt): string {
  return `0x${toHex(blake3(encodeReceipt(receipt)))}`;
}
