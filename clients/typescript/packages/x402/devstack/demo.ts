// `npm run demo:x402`: the end-to-end flow for a person to watch. Agents pay an Express API
// protected by @x402/express through Tollgate, first with x402's HTTPFacilitatorClient pointed at
// `tollgate serve`, then with the binary FleetFacilitatorClient; a few bad payments are refused
// with their reasons; then the epoch commits onchain and each payer's settled balance is shown
// against what its agent was charged. Needs TOLLGATE_BIN (a built `tollgate`) and the
// repository's npm packages (anvil).

import { SigningKey } from "@tollgate/client";
import { HTTPFacilitatorClient } from "@x402/core/http";
import type { FacilitatorClient } from "@x402/core/server";
import { paymentFailure, type FleetFacilitatorClient } from "../src/index.js";
import { connectFleetFacilitator, startPaidApi } from "./app.js";
import { sleep, startStack, type Stack } from "./stack.js";
import { Payer, payMany, sendPayment } from "./traffic.js";

const PAYERS = 3;
const DEPOSIT = 1_000_000n;
const PRICE = 7n;
const REQUESTS = 300;
const CONCURRENCY = 8;

const say = (line: string): void => void process.stdout.write(`${line}\n`);

async function round(stack: Stack, name: string, facilitator: FacilitatorClient, payTo: string, payers: Payer[], unfunded: Payer): Promise<void> {
  const api = await startPaidApi({ stack, facilitator, payTo, price: PRICE });
  try {
    say(`\n${name}: ${PAYERS} agents, ${REQUESTS} paid requests each, ${CONCURRENCY} at a time, ${PRICE} units per request`);
    const total = PAYERS * REQUESTS;
    let paid = 0;
    const started = Date.now();
    const progress = setInterval(() => {
      const secs = (Date.now() - started) / 1000;
      process.stdout.write(`\r  ${paid}/${total} paid  ${(paid / secs).toFixed(0)} requests/s   `);
    }, 250);
    try {
      await payMany(payers, api, REQUESTS, CONCURRENCY, () => void (paid += 1));
    } finally {
      clearInterval(progress);
    }
    const secs = (Date.now() - started) / 1000;
    say(`\r  ${paid}/${total} paid in ${secs.toFixed(1)} s (${(paid / secs).toFixed(0)} requests/s), each answered 200 with a PAYMENT-RESPONSE`);

    const refused = async (what: string, response: Response): Promise<void> => {
      await response.arrayBuffer();
      const failure = paymentFailure(response.headers);
      say(`  ${what.padEnd(24)} ${response.status} ${failure?.reason ?? ""}${failure?.message ? ` (${failure.message})` : ""}`);
    };
    await refused("no payment", await fetch(api.paidUrl));
    const payment = await (payers[0] as Payer).payment(api);
    const first = await sendPayment(api, payment);
    await first.arrayBuffer();
    (payers[0] as Payer).charged += PRICE;
    await refused("the same payment again", await sendPayment(api, payment));
    await refused("an agent with no deposit", await unfunded.pay(api.paidUrl));
  } finally {
    await api.close();
  }
}

async function main(): Promise<void> {
  if (!process.env.TOLLGATE_BIN) {
    process.stderr.write("set TOLLGATE_BIN to a built tollgate (cargo build --release: target/release/tollgate)\n");
    process.exit(2);
  }
  say(`starting anvil, deploying the Settlement contract, funding ${PAYERS} agents with ${DEPOSIT} units each, starting tollgate serve (epochs every 2 s)…`);
  const stack = await startStack({ payers: PAYERS, deposit: DEPOSIT, epochSecs: 2 });
  let fleet: FleetFacilitatorClient | undefined;
  try {
    say(`chain ${stack.chainId}, Settlement ${stack.contract}, token ${stack.token}; facilitator ${stack.http}, fleet port ${stack.fleet.port}`);
    const payers = stack.payers.map((key) => new Payer(key, stack));
    const unfunded = new Payer(SigningKey.generate(), stack);
    await round(stack, "x402 HTTPFacilitatorClient -> POST /verify, /settle", new HTTPFacilitatorClient({ url: stack.http }), `0x${"a1".repeat(20)}`, payers, unfunded);
    fleet = await connectFleetFacilitator(stack);
    await round(stack, "FleetFacilitatorClient -> batched SUBMIT frames", fleet, `0x${"b2".repeat(20)}`, payers, unfunded);
    const stats = await fleet.close();
    fleet = undefined;
    say(`  the fleet client sent ${stats.receiptsSubmitted} receipts in ${stats.batchesAcked} SUBMIT frames`);

    say("\nwaiting for the epochs to commit onchain…");
    const deadline = Date.now() + 120_000;
    for (const payer of payers) {
      while (BigInt((await stack.payer(payer.key)).settled) !== payer.charged) {
        if (Date.now() > deadline) throw new Error(`agent ${payer.hex} was never settled its ${payer.charged}:\n${stack.serveLog()}`);
        await sleep(250);
      }
    }
    say("\nagent             charged   settled onchain   available of " + DEPOSIT.toString());
    for (const payer of payers) {
      const view = await stack.payer(payer.key);
      say(`${payer.hex.slice(0, 16)}  ${payer.charged.toString().padStart(7)}   ${view.settled.padStart(15)}   ${view.available.padStart(9)}`);
    }
    // Newest first, as the API lists them.
    const committed = (await stack.epochs()).filter((epoch) => epoch.status === "committed" && epoch.receipts > 0);
    const receipts = committed.reduce((sum, epoch) => sum + epoch.receipts, 0);
    say(`\n${receipts} receipts in ${committed.length} epochs committed onchain; the latest:`);
    for (const epoch of committed.slice(0, 3)) {
      say(`  epoch ${epoch.epoch}: ${epoch.receipts} receipts, ${epoch.debit_total} units, commit transaction ${epoch.tx_hash}`);
    }
    say("\nevery agent paid exactly what it was charged.");
  } finally {
    await fleet?.close();
    await stack.stop();
  }
}

await main();
