// The payer's side: an x402 `SchemeNetworkClient` for `x402Client.register("eip155:<id>", …)`.
// From the requirements alone (x402 shows a client scheme neither the request nor the URL) it
// signs one Tollgate receipt: payee `payTo`, the price, the next nonce of the channel, the
// requirements' `request_hash`, for the deployment `extra` names. The receipt travels in the
// paid request itself; nothing is sent anywhere else.

import { SigningKey, receiptToJson, signReceipt, toHex } from "@tollgate/client";
import type {
  PaymentPayloadContext,
  PaymentPayloadResult,
  PaymentRequirements,
  SchemeNetworkClient,
} from "@x402/core/types";
import { NonceClock, SCHEME, X402_VERSION, domainOf, payeeOf, priceOf, requestHash } from "./binding.js";

/** How a payer signs. */
export interface TollgateClientOptions {
  /** The payer's key, or with `session` a session key the payer granted (docs/PROTOCOL.md). */
  key: SigningKey | Uint8Array | string;
  /** `key` is a granted session key: receipts carry the session flag and its grant applies. */
  session?: boolean;
  /** Refuse to sign more than this per payment (token units), whatever the server asks. */
  maxAmount?: bigint;
  /** Unix milliseconds for nonces and timestamps; default `Date.now`. */
  now?: () => number;
}

export class TollgateClientScheme implements SchemeNetworkClient {
  readonly scheme = SCHEME;
  private readonly key: SigningKey;
  private readonly session: boolean;
  private readonly maxAmount: bigint | undefined;
  private readonly now: () => number;
  private readonly nonces = new NonceClock();

  constructor(options: TollgateClientOptions) {
    this.key = options.key instanceof SigningKey ? options.key : SigningKey.fromSeed(options.key);
    this.session = options.session ?? false;
    this.maxAmount = options.maxAmount;
    this.now = options.now ?? Date.now;
  }

  /** The signing key's public half, 64 hex digits: the `payer` of every receipt. */
  get payer(): string {
    return toHex(this.key.publicKey);
  }

  async createPaymentPayload(
    x402Version: number,
    requirements: PaymentRequirements,
    context?: PaymentPayloadContext,
  ): Promise<PaymentPayloadResult> {
    if (x402Version !== X402_VERSION) throw new Error(`tollgate: x402 version ${x402Version} is not supported`);
    const price = priceOf(requirements);
    // x402Client's spend controls hand the cap down; the scheme enforces it as well as its own.
    for (const cap of [this.maxAmount, context?.maxAmountPerPayment]) {
      if (cap !== undefined && price > BigInt(cap)) {
        throw new Error(`tollgate: the price ${price} is above the cap of ${cap}`);
      }
    }
    const payee = payeeOf(requirements);
    const nowMs = BigInt(Math.trunc(this.now()));
    const receipt = signReceipt(
      {
        payee,
        amount: price,
        nonce: this.nonces.next(toHex(payee), nowMs),
        timestampMs: nowMs,
        requestHash: requestHash(requirements),
        session: this.session,
      },
      this.key,
      domainOf(requirements),
    );
    return { x402Version: X402_VERSION, payload: { ...receiptToJson(receipt) } };
  }
}
