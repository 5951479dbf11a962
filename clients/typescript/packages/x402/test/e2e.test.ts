// End to end with the real x402 packages: anvil, the contract deployed and payers funded by the
// tollgate CLI, `tollgate serve` settling to the chain every second, an Express app protected by
// the real @x402/express middleware with the Tollgate server scheme, once with x402's own
// HTTPFacilitatorClient pointed at serve's facilitator routes and once with the binary
// FleetFacilitatorClient; payers drive it with the real @x402/fetch and the Tollgate client
// scheme. A thousand and more paid requests succeed with a PAYMENT-RESPONSE; every kind of bad payment
// gets a 402 with its reason and the app keeps serving; then an epoch is committed onchain and
// every payer has paid exactly what its clients were charged. Skipped, saying why, without
// TOLLGATE_BIN.

import assert from "node:assert/strict";
import { test } from "node:test";
import { SigningKey, receiptFromJson, receiptToJson, signReceipt } from "@tollgate/client";
import { HTTPFacilitatorClient } from "@x402/core/http";
import type { FacilitatorClient } from "@x402/core/server";
import type { PaymentPayload } from "@x402/core/types";
import { decodePaymentResponseHeader } from "@x402/fetch";
import { X402_REASONS, domainOf, paymentFailure, transactionId, type FleetFacilitatorClient } from "../src/index.js";
import { connectFleetFacilitator, forecast, startPaidApi, type PaidApi } from "../devstack/app.js";
import { sleep, startStack } from "../devstack/stack.js";
import { Payer, payMany, payOnce, sendPayment } from "../devstack/traffic.js";

const BIN = process.env.TOLLGATE_BIN;
const PAYERS = 4;
const DEPOSIT = 1_000_000n;
const PRICE = 7n;
/**
 * Paid requests per payer through each facilitator client: 1,200 in all (each also an unpaid
 * 402 first, as @x402/fetch does), sized to keep the test within a minute on CI's two cores.
 */
const REQUESTS = 150;
/** Requests in flight per payer. */
const CONCURRENCY = 8;

/** Adds a settle's `transaction`, which no other payment may share. */
function once(transactions: Set<string>, transaction: string): void {
  assert.match(transaction, /^0x[0-9a-f]{64}$/);
  assert.ok(!transactions.has(transaction), "every payment is its own receipt");
  transactions.add(transaction);
}

/** Holds x402's console warnings (a header it cannot decode) until `restore`, which counts them. */
function quietly(): { restore(): number } {
  const warn = console.warn;
  let count = 0;
  console.warn = () => void (count += 1);
  return {
    restore: () => {
      console.warn = warn;
      return count;
    },
  };
}

/** The payment's receipt re-signed by `key` with `change` applied (a payer that means it). */
function resigned(payment: PaymentPayload, key: SigningKey, change: { amount?: bigint; payee?: string }): PaymentPayload {
  const receipt = receiptFromJson(payment.payload);
  const again = signReceipt(
    {
      ...receipt,
      ...(change.amount !== undefined ? { amount: change.amount } : {}),
      ...(change.payee ? { payee: Buffer.from(change.payee.slice(2), "hex") } : {}),
    },
    key,
    domainOf(payment.accepted),
  );
  return { ...payment, payload: { ...receiptToJson(again) } };
}

async function expectRefused(response: Response, reason: string, what: string): Promise<void> {
  assert.equal(response.status, 402, `${what}: status`);
  assert.equal(paymentFailure(response.headers)?.reason, reason, `${what}: reason`);
  await response.arrayBuffer();
}

/** Every bad payment of the list against `api`, each refused with its reason. */
async function badPayments(api: PaidApi, payer: Payer, unfunded: Payer, transactions: Set<string>): Promise<void> {
  await expectRefused(await fetch(api.paidUrl), "Payment required", "unpaid");
  // x402 reads a header it cannot decode as no payment at all (and says so on the console).
  const warned = quietly();
  try {
    await expectRefused(await sendPayment(api, "%%% not base64 %%%"), "Payment required", "not base64");
    await expectRefused(await sendPayment(api, Buffer.from("not json").toString("base64")), "Payment required", "not JSON");
  } finally {
    assert.equal(warned.restore(), 2, "x402 said it could not decode either header");
  }

  const good = await payer.payment(api);
  for (const [what, accepted] of [
    ["another scheme", { ...good.accepted, scheme: "exact" }],
    ["another network", { ...good.accepted, network: "eip155:1" as const }],
  ] as const) {
    await expectRefused(await sendPayment(api, { ...good, accepted }), "No matching payment requirements", what);
  }
  const underpaid = resigned(good, payer.key, { amount: PRICE - 1n });
  await expectRefused(await sendPayment(api, underpaid), X402_REASONS.amount, "underpaid");
  const elsewhere = resigned(good, payer.key, { payee: `0x${"ee".repeat(20)}` });
  await expectRefused(await sendPayment(api, elsewhere), X402_REASONS.recipient, "wrong payee");
  const forged = { ...good, payload: { ...good.payload, amount: (PRICE + 1n).toString() } };
  await expectRefused(await sendPayment(api, forged), X402_REASONS.signature, "bad signature");

  // The good payment is still unspent: it pays once, and a replay of it is refused.
  const first = await sendPayment(api, good);
  assert.equal(first.status, 200);
  assert.deepEqual(await first.json(), forecast());
  const settled = decodePaymentResponseHeader(first.headers.get("PAYMENT-RESPONSE") as string);
  assert.equal(settled.transaction, transactionId(receiptFromJson(good.payload)));
  once(transactions, settled.transaction);
  payer.charged += PRICE;
  await expectRefused(await sendPayment(api, good), X402_REASONS.replay, "replay");

  // A payer who never deposited pays through @x402/fetch like anyone and is refused.
  await expectRefused(await unfunded.pay(api.paidUrl), X402_REASONS.funds, "unfunded payer");
}

test(
  "x402 end to end: @x402/fetch pays an @x402/express route through Tollgate, via HTTP and via the fleet protocol",
  { skip: BIN ? false : "TOLLGATE_BIN is not set: this test runs a real tollgate serve (make test sets it)", timeout: 240_000 },
  async () => {
    const stack = await startStack({ payers: PAYERS, deposit: DEPOSIT, epochSecs: 1 });
    let fleet: FleetFacilitatorClient | undefined;
    try {
      const payers = stack.payers.map((key) => new Payer(key, stack));
      const unfunded = new Payer(SigningKey.generate(), stack);
      fleet = await connectFleetFacilitator(stack);
      const facilitators: [string, FacilitatorClient, string][] = [
        ["HTTPFacilitatorClient", new HTTPFacilitatorClient({ url: stack.http }), `0x${"a1".repeat(20)}`],
        ["FleetFacilitatorClient", fleet, `0x${"b2".repeat(20)}`],
      ];
      const transactions = new Set<string>();
      for (const [name, facilitator, payTo] of facilitators) {
        const api = await startPaidApi({ stack, facilitator, payTo, price: PRICE });
        try {
          await payMany(payers, api, REQUESTS, CONCURRENCY, (paid) => once(transactions, paid.transaction));
          await badPayments(api, payers[0] as Payer, unfunded, transactions);
          // The app still serves after all of that.
          once(transactions, (await payOnce(payers[1] as Payer, api)).transaction);
        } catch (error) {
          throw new Error(`through the ${name}: ${(error as Error).message}\n--- tollgate serve ---\n${stack.serveLog()}`, { cause: error });
        } finally {
          await api.close();
        }
      }
      const stats = await fleet.close();
      fleet = undefined;
      assert.ok(stats.batchesAcked < stats.receiptsSubmitted, "concurrent settles share SUBMIT frames");

      // Every payment is in an epoch committed onchain, and each payer paid what it was charged.
      const deadline = Date.now() + 60_000;
      for (const payer of payers) {
        for (;;) {
          const view = await stack.payer(payer.key);
          if (view.pending === "0" && BigInt(view.settled) === payer.charged) {
            assert.equal(BigInt(view.available), DEPOSIT - payer.charged);
            break;
          }
          assert.ok(Date.now() < deadline, `payer ${view.payer} settled ${view.settled}, pending ${view.pending}, charged ${payer.charged}`);
          await sleep(200);
        }
      }
      assert.ok((await stack.epochs()).some((epoch) => epoch.status === "committed" && epoch.receipts > 0));
      const total = payers.reduce((sum, payer) => sum + payer.charged, 0n);
      assert.equal(total, BigInt(transactions.size) * PRICE);
    } finally {
      await fleet?.close();
      await stack.stop();
    }
  },
);
