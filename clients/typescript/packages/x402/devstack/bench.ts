// `npm run bench:x402`: issue 18's Express comparison in one run. The same Express app serves
// `GET /forecast` behind the real @x402/express middleware and `GET /free` without it; paid
// requests go through (a) x402's HTTPFacilitatorClient pointed at `tollgate serve`'s facilitator
// routes and (b) the binary FleetFacilitatorClient (x402's default `authorization` flow: verify,
// handler, settle; and (b') the `upfront` flow, one settle), against (c) `/free`. Rounds
// interleave (c, a, b, b', c, a, b, b', …) so drift on a shared machine falls on every variant alike.
//
// The generator does not measure itself: every payment header is signed and encoded before the
// timed rounds (a payer that knows the price sends its payment with the first request, no 402
// round trip), and the timed loop only writes requests on keep-alive connections. It still shares
// the machine's cores with Express and `tollgate serve`, which the output says, but not Express's
// event loop: the requests are made by a worker thread. Needs
// TOLLGATE_BIN and the repository's npm packages (anvil), as the end-to-end test does.

import { Agent, request } from "node:http";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Worker, isMainThread, parentPort } from "node:worker_threads";
import { HTTPFacilitatorClient } from "@x402/core/http";
import type { FacilitatorClient } from "@x402/core/server";
import { x402HTTPClient } from "@x402/core/client";
import type { TollgateFlow } from "../src/index.js";
import { connectFleetFacilitator, startPaidApi, type PaidApi } from "./app.js";
import { startStack, type Stack } from "./stack.js";
import { Payer } from "./traffic.js";

const env = (name: string, fallback: number): number => Number(process.env[name] ?? fallback);
/** Requests per timed round. */
const REQUESTS = env("BENCH_REQUESTS", 3000);
/** Rounds of each variant (c, a, b repeated). */
const ROUNDS = env("BENCH_ROUNDS", 3);
/** Requests in flight, each on its own keep-alive connection: enough that CPU, not the fleet ACK wait, bounds the rates. */
const CONCURRENCY = env("BENCH_CONCURRENCY", 256);
/** Requests of the sequential round that measures latency alone (one in flight). */
const SEQUENTIAL = env("BENCH_SEQUENTIAL", 500);
const PAYERS = 16;
const PRICE = 1n;

const say = (line: string): void => void process.stdout.write(`${line}\n`);

/** What one round of requests measured. */
interface Round {
  requests: number;
  seconds: number;
  /** Each request's latency, milliseconds, sorted. */
  latencies: Float64Array;
}

/** The q-quantile (0..1) of sorted values, nearest rank. */
function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

/**
 * GETs `url` once per header (`undefined` sends no payment header), `concurrency` in flight on
 * `agent`'s keep-alive connections; every answer must be 200.
 */
async function drive(agent: Agent, url: URL, headers: readonly (string | undefined)[], concurrency: number): Promise<Round> {
  const latencies = new Float64Array(headers.length);
  let next = 0;
  const one = (header: string | undefined): Promise<number> =>
    new Promise((resolve, reject) => {
      const started = process.hrtime.bigint();
      const req = request(
        { agent, host: url.hostname, port: url.port, path: url.pathname, headers: header === undefined ? {} : { "PAYMENT-SIGNATURE": header } },
        (res) => {
          res.resume();
          res.on("end", () => {
            if (res.statusCode !== 200) {
              reject(new Error(`${url.pathname} answered ${res.statusCode}: ${String(res.headers["payment-required"] ?? "").slice(0, 400)}`));
            } else {
              resolve(Number(process.hrtime.bigint() - started) / 1e6);
            }
          });
        },
      );
      req.on("error", reject);
      req.end();
    });
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, headers.length) }, async () => {
      while (next < headers.length) {
        const at = next++;
        latencies[at] = await one(headers[at]);
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { requests: headers.length, seconds, latencies: latencies.sort() };
}

/** A round the main thread asks the driver thread for. */
interface Job {
  url: string;
  headers: (string | undefined)[];
  concurrency: number;
}

/**
 * The driver thread: runs each job it is sent on a keep-alive agent of its own, answers the
 * Round. An agent per job: connections left idle through other variants' rounds would meet the
 * server's keep-alive timeout mid-request (ECONNRESET).
 */
function driverThread(): void {
  parentPort?.on("message", (job: Job) => {
    const agent = new Agent({ keepAlive: true, maxSockets: job.concurrency });
    drive(agent, new URL(job.url), job.headers, job.concurrency)
      .then(
        (round) => parentPort?.postMessage({ round }),
        (error: Error) => parentPort?.postMessage({ error: error.message }),
      )
      .finally(() => agent.destroy());
  });
}

/** Runs `job` on the driver thread. */
function onDriver(driver: Worker, job: Job): Promise<Round> {
  return new Promise((resolve, reject) => {
    driver.once("message", (answer: { round?: Round; error?: string }) => (answer.round ? resolve(answer.round) : reject(new Error(answer.error))));
    driver.postMessage(job);
  });
}

/** `count` payment headers for `api`, dealt round-robin across the payers, in nonce order. */
async function presign(payers: readonly Payer[], api: PaidApi, count: number): Promise<string[]> {
  const unpaid = await fetch(api.paidUrl);
  await unpaid.arrayBuffer();
  const asked = new x402HTTPClient((payers[0] as Payer).client).getPaymentRequiredResponse((name) => unpaid.headers.get(name));
  const headers: string[] = [];
  for (let i = 0; i < count; i++) {
    const payload = await (payers[i % payers.length] as Payer).client.createPaymentPayload(asked);
    headers.push(Buffer.from(JSON.stringify(payload)).toString("base64"));
  }
  return headers;
}

function cpuModel(): string {
  try {
    return /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
  } catch {
    return "unknown";
  }
}

interface Variant {
  name: string;
  url: URL;
  /** The headers of each timed round, then of the sequential round. */
  headers: (string | undefined)[][];
  rounds: Round[];
  sequential?: Round;
}

const rate = (rounds: readonly Round[]): number =>
  rounds.reduce((sum, r) => sum + r.requests, 0) / rounds.reduce((sum, r) => sum + r.seconds, 0);

function merged(rounds: readonly Round[]): Float64Array {
  const all = new Float64Array(rounds.reduce((sum, r) => sum + r.latencies.length, 0));
  let at = 0;
  for (const r of rounds) {
    all.set(r.latencies, at);
    at += r.latencies.length;
  }
  return all.sort();
}

async function main(): Promise<void> {
  if (!process.env.TOLLGATE_BIN) {
    process.stderr.write("set TOLLGATE_BIN to a built tollgate (cargo build --release: target/release/tollgate)\n");
    process.exit(2);
  }
  say(`x402 through Express: ${ROUNDS} rounds of ${REQUESTS} requests per variant, ${CONCURRENCY} in flight on keep-alive connections, then ${SEQUENTIAL} one at a time`);
  say(`cpu: ${cpuModel()}, ${availableParallelism()} cores shared by this generator (a worker thread), Express (the main thread) and tollgate serve; node ${process.version}`);
  const paidTotal = REQUESTS * (ROUNDS + 1) + SEQUENTIAL;
  // Epochs as far apart as the dev contract's withdrawal delay allows: few commits during the rounds.
  const stack: Stack = await startStack({ payers: PAYERS, deposit: 10n ** 15n, epochSecs: 60 });
  const fleet = await connectFleetFacilitator(stack);
  const apis: PaidApi[] = [];
  const driver = new Worker(new URL(import.meta.url));
  try {
    const payers = stack.payers.map((key) => new Payer(key, stack, PRICE));
    const start = async (facilitator: FacilitatorClient, payTo: string, flow?: TollgateFlow): Promise<PaidApi> => {
      const api = await startPaidApi({ stack, facilitator, payTo, price: PRICE, ...(flow ? { flow } : {}) });
      apis.push(api);
      return api;
    };
    const viaHttp = await start(new HTTPFacilitatorClient({ url: stack.http }), `0x${"a1".repeat(20)}`);
    const viaFleet = await start(fleet, `0x${"b2".repeat(20)}`);
    const viaFleetUpfront = await start(fleet, `0x${"b3".repeat(20)}`, "upfront");
    const split = (headers: (string | undefined)[]): (string | undefined)[][] => {
      const rounds = Array.from({ length: ROUNDS + 1 }, (_, i) => headers.slice(i * REQUESTS, (i + 1) * REQUESTS));
      return [...rounds, headers.slice((ROUNDS + 1) * REQUESTS)];
    };
    say(`signing ${3 * paidTotal} payments ahead of the timed rounds…`);
    const free: Variant = { name: "(c) no payment", url: new URL(`${viaFleet.url}/free`), headers: split(new Array(paidTotal).fill(undefined)), rounds: [] };
    const http: Variant = { name: "(a) HTTPFacilitatorClient", url: new URL(viaHttp.paidUrl), headers: split(await presign(payers, viaHttp, paidTotal)), rounds: [] };
    const binary: Variant = { name: "(b) FleetFacilitatorClient", url: new URL(viaFleet.paidUrl), headers: split(await presign(payers, viaFleet, paidTotal)), rounds: [] };
    // The flow the server scheme recommends for this client: one settle, no verify before it.
    const upfront: Variant = { name: "(b') the same, upfront flow", url: new URL(viaFleetUpfront.paidUrl), headers: split(await presign(payers, viaFleetUpfront, paidTotal)), rounds: [] };
    const variants = [free, http, binary, upfront];

    // Round 0 warms up connections, JIT and serve's caches; it is not counted.
    for (let round = 0; round <= ROUNDS; round++) {
      for (const variant of variants) {
        const measured = await onDriver(driver, { url: variant.url.href, headers: variant.headers[round] as string[], concurrency: CONCURRENCY });
        if (round > 0) variant.rounds.push(measured);
        say(`  ${round === 0 ? "warm-up" : `round ${round}`.padEnd(7)}  ${variant.name.padEnd(28)} ${(measured.requests / measured.seconds).toFixed(0).padStart(6)} requests/s`);
      }
    }
    for (const variant of variants) {
      variant.sequential = await onDriver(driver, { url: variant.url.href, headers: variant.headers[ROUNDS + 1] as string[], concurrency: 1 });
    }

    const base = free;
    const baseAll = merged(base.rounds);
    say(`\nvariant                        requests/s  of (c)   p50 ms  p99 ms  added p50/p99 ms | one at a time: p50 ms  p99 ms  added p50/p99 ms`);
    for (const variant of variants) {
      const all = merged(variant.rounds);
      const seq = (variant.sequential as Round).latencies;
      const baseSeq = (base.sequential as Round).latencies;
      const cells = (lat: Float64Array, baseLat: Float64Array): string =>
        `${quantile(lat, 0.5).toFixed(2).padStart(7)} ${quantile(lat, 0.99).toFixed(2).padStart(7)}  ${(quantile(lat, 0.5) - quantile(baseLat, 0.5)).toFixed(2).padStart(6)}/${(quantile(lat, 0.99) - quantile(baseLat, 0.99)).toFixed(2).padEnd(6)}`;
      say(
        `${variant.name.padEnd(28)} ${rate(variant.rounds).toFixed(0).padStart(10)}  ${((100 * rate(variant.rounds)) / rate(base.rounds)).toFixed(0).padStart(5)}%  ${cells(all, baseAll)}     | ${cells(seq, baseSeq)}`,
      );
    }
    say(`\nb/c = ${(rate(binary.rounds) / rate(base.rounds)).toFixed(2)}, b'/c = ${(rate(upfront.rounds) / rate(base.rounds)).toFixed(2)}, a/c = ${(rate(http.rounds) / rate(base.rounds)).toFixed(2)} (goal: b/c >= 0.80)`);
    const stats = fleet.stats();
    say(`the fleet client sent ${stats.receiptsSubmitted} receipts in ${stats.batchesAcked} SUBMIT frames`);
  } finally {
    await driver.terminate();
    for (const api of apis) await api.close();
    await fleet.close();
    await stack.stop();
  }
}

if (isMainThread) await main();
else driverThread();
