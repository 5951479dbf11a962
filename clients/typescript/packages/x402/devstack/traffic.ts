// Payers of the end-to-end test, the demo and benches: each an x402Client with the Tollgate
// client scheme behind the real `@x402/fetch`, and the loop that makes many paid requests.

import { toHex, type SigningKey } from "@tollgate/client";
import { x402Client, x402HTTPClient } from "@x402/core/client";
import type { PaymentPayload } from "@x402/core/types";
import { decodePaymentResponseHeader, wrapFetchWithPayment } from "@x402/fetch";
import { TollgateClientScheme, network, paymentFailure } from "../src/index.js";
import type { PaidApi } from "./app.js";
import type { Stack } from "./stack.js";

/** A payer: its key, its x402 client with the Tollgate scheme, and a paying fetch. */
export class Payer {
  readonly client: x402Client;
  readonly pay: typeof fetch;
  /** What its successful payments added up to. */
  charged = 0n;

  constructor(
    readonly key: SigningKey,
    stack: Stack,
    /** The most it signs for one request (x402's spend controls). */
    maxAmountPerPayment = 100n,
  ) {
    const net = network(stack.chainId);
    this.client = new x402Client()
      .register(net, new TollgateClientScheme({ key }))
      .setSpendControls({ allowedAssets: [{ network: net, asset: stack.token, maxAmountPerPayment: maxAmountPerPayment.toString() }] });
    this.pay = wrapFetchWithPayment(fetch, this.client);
  }

  get hex(): string {
    return toHex(this.key.publicKey);
  }

  /** A signed payment for the route, made from its 402 as @x402/fetch would, not yet sent. */
  async payment(api: PaidApi): Promise<PaymentPayload> {
    const unpaid = await fetch(api.paidUrl);
    await unpaid.arrayBuffer();
    const asked = new x402HTTPClient(this.client).getPaymentRequiredResponse((name) => unpaid.headers.get(name));
    return this.client.createPaymentPayload(asked);
  }
}

/** What one paid request's PAYMENT-RESPONSE said. */
export interface Paid {
  payer: string;
  transaction: string;
}

/**
 * One paid request through @x402/fetch that must succeed; adds the price to the payer's charge.
 * Throws with the 402's reason otherwise.
 */
export async function payOnce(payer: Payer, api: PaidApi): Promise<Paid> {
  const response = await payer.pay(api.paidUrl);
  if (response.status !== 200) {
    await response.arrayBuffer();
    throw new Error(`paid request answered ${response.status}: ${JSON.stringify(paymentFailure(response.headers))}`);
  }
  await response.arrayBuffer();
  const settled = decodePaymentResponseHeader(response.headers.get("PAYMENT-RESPONSE") ?? "");
  if (!settled.success || settled.payer !== payer.hex) {
    throw new Error(`a 200 whose PAYMENT-RESPONSE is ${JSON.stringify(settled)}`);
  }
  payer.charged += api.price;
  return { payer: settled.payer, transaction: settled.transaction };
}

/** `perPayer` paid requests from each payer, `concurrency` of each in flight; `onPaid` sees each. */
export async function payMany(
  payers: readonly Payer[],
  api: PaidApi,
  perPayer: number,
  concurrency: number,
  onPaid: (paid: Paid) => void = () => {},
): Promise<void> {
  await Promise.all(
    payers.flatMap((payer) => {
      let left = perPayer;
      return Array.from({ length: Math.min(concurrency, perPayer) }, async () => {
        while (left > 0) {
          left -= 1;
          onPaid(await payOnce(payer, api));
        }
      });
    }),
  );
}

/** A request to the paid route carrying `payment` (a payload, or a raw header value) as is. */
export function sendPayment(api: PaidApi, payment: PaymentPayload | string): Promise<Response> {
  const header = typeof payment === "string" ? payment : Buffer.from(JSON.stringify(payment)).toString("base64");
  return fetch(api.paidUrl, { headers: { "PAYMENT-SIGNATURE": header } });
}
