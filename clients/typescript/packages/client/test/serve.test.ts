// The client against a real `tollgate serve` (the binary TOLLGATE_BIN names): thousands of
// receipts from several payers, the connection cut mid-stream and the server killed and restarted while
// receipts flow, and still every receipt acked once and every payer charged exactly what it
// signed. Without TOLLGATE_BIN the test is skipped and says why.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { Client, SigningKey, makeDomain, signGrant, signReceipt, signRevocation, toHex, type Verdict } from "../src/index.js";

const BIN = process.env.TOLLGATE_BIN;

interface Server {
  child: ChildProcess;
  listen: { host: string; port: number };
  http: string;
}

/** Starts a chainless `tollgate serve` on kernel-chosen ports and waits for its ready line. */
function startServer(dataDir: string): Promise<Server> {
  const child = spawn(
    BIN as string,
    [
      "serve",
      "--unknown-payers",
      "accept",
      "--listen",
      "127.0.0.1:0",
      "--http",
      "127.0.0.1:0",
      "--data-dir",
      dataDir,
      "--log-format",
      "json",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  return new Promise((resolve, reject) => {
    const tail: string[] = [];
    const lines = createInterface({ input: child.stderr as NodeJS.ReadableStream });
    lines.on("line", (line) => {
      tail.push(line);
      if (tail.length > 40) tail.shift();
      try {
        const fields = (JSON.parse(line) as { fields?: Record<string, string> }).fields;
        if (fields?.message === "tollgate ready" && fields.listen && fields.http) {
          const [host, port] = fields.listen.split(":");
          resolve({ child, listen: { host: host as string, port: Number(port) }, http: fields.http });
        }
      } catch {
        // Not every line need be JSON; only the ready line matters.
      }
    });
    child.on("exit", (code) => reject(new Error(`tollgate serve exited (${code}) before ready:\n${tail.join("\n")}`)));
  });
}

function stopServer(server: Server, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (server.child.exitCode !== null || server.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    server.child.once("exit", () => resolve());
    server.child.kill(signal);
  });
}

/**
 * A TCP proxy between the client and the server, so the test can cut connections at a chosen
 * point and move to a restarted server without the client knowing.
 */
class Proxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private cutAfter: number | undefined;
  cuts = 0;

  constructor(public target: { host: string; port: number }) {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.pairs.add(pair);
      const close = (): void => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("error", close).on("close", close);
      upstream.on("error", close).on("close", close);
      upstream.on("data", (chunk) => client.write(chunk));
      client.on("data", (chunk: Buffer) => {
        upstream.write(chunk);
        if (this.cutAfter === undefined) return;
        this.cutAfter -= chunk.length;
        if (this.cutAfter <= 0) {
          // Cut right after the server got these bytes: the SUBMITs in them may be applied, and
          // none of their ACKs can have reached the client.
          this.cutAfter = undefined;
          this.cuts += 1;
          this.cutAll();
        }
      });
    });
  }

  listen(): Promise<number> {
    return new Promise((resolve) =>
      this.server.listen(0, "127.0.0.1", () => resolve((this.server.address() as net.AddressInfo).port)),
    );
  }

  /** Cut every connection once `bytes` more have gone from a client to the server. */
  cutAfterClientBytes(bytes: number): void {
    this.cutAfter = bytes;
  }

  cutAll(): void {
    for (const [client, upstream] of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  close(): Promise<void> {
    this.cutAll();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

test(
  "receipts from several payers are acked once each across a cut connection and a server killed and restarted",
  { skip: BIN ? false : "TOLLGATE_BIN is not set: set it to a built `tollgate` to run this test", timeout: 180_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "tollgate-ts-"));
    const dataDir = join(dir, "data");
    let server = await startServer(dataDir);
    const proxy = new Proxy(server.listen);
    try {
      const port = await proxy.listen();
      // A chainless server: chain 31337 and the zero contract.
      const domain = makeDomain(31337n, new Uint8Array(20));
      const client = await Client.connect({
        host: "127.0.0.1",
        port,
        clientId: 7n,
        clientKey: SigningKey.generate(),
        producerId: 1n,
        domain,
        batchReceiptsMax: 50,
        batchLingerMs: 2,
        batchesInFlightMax: 4,
        reconnectBackoffMsMin: 20,
        reconnectBackoffMsMax: 200,
        reconnectAttemptsMax: 200,
      });
      const payers = Array.from({ length: 5 }, () => SigningKey.generate());
      const payees = [new Uint8Array(20).fill(0x11), new Uint8Array(20).fill(0x22)];
      const owed = new Map(payers.map((p) => [toHex(p.publicKey), 0n]));
      const verdicts: Promise<Verdict>[] = [];
      const total = 4000;
      for (let i = 0; i < total; i++) {
        if (i === 1000) proxy.cutAfterClientBytes(20_000);
        if (i === 2500) {
          // The server dies with batches in flight (killed: no graceful drain, so only what it
          // fsynced survives) and comes back on the same data.
          await stopServer(server, "SIGKILL");
          server = await startServer(dataDir);
          proxy.target = server.listen;
        }
        const payer = payers[i % payers.length] as SigningKey;
        const amount = BigInt(1 + (i % 97));
        const receipt = signReceipt(
          {
            payee: payees[i % 2] as Uint8Array,
            amount,
            // Per (payer, payee) channel: increasing, never reused.
            nonce: BigInt(i + 1),
            timestampMs: BigInt(Date.now()),
            requestHash: new Uint8Array(32).fill(i % 256),
          },
          payer,
          domain,
        );
        owed.set(toHex(payer.publicKey), (owed.get(toHex(payer.publicKey)) as bigint) + amount);
        await client.waitForRoom();
        verdicts.push(client.submit(receipt));
      }
      const answers = await Promise.all(verdicts);
      const counts = new Map<string, number>();
      for (const verdict of answers) counts.set(verdict, (counts.get(verdict) ?? 0) + 1);
      assert.deepEqual(Object.fromEntries(counts), { accepted: total });
      assert.equal(proxy.cuts, 1);

      for (const [payer, amount] of owed) {
        const view = (await (await fetch(`http://${server.http}/v1/payers/${payer}`)).json()) as {
          pending: string;
          receipts: number;
        };
        assert.equal(view.pending, amount.toString(), `payer ${payer} charged other than it signed`);
        assert.equal(view.receipts, total / payers.length);
        const balance = await client.balance(Buffer.from(payer, "hex"));
        assert.equal(balance.pending, amount);
      }
      const stats = await client.close();
      assert.equal(stats.receiptsAccepted, total);
      assert.equal(stats.receiptsRejected, 0);
      assert.ok(stats.reconnects >= 2, `reconnects: ${stats.reconnects}`);
      // The cut came right after SUBMIT bytes reached the server: their batches went again.
      assert.ok(stats.batchesResent >= 1, `batches re-sent: ${stats.batchesResent}`);
      assert.equal(stats.batchesAcked, stats.batchesSent - stats.batchesResent);
    } finally {
      await proxy.close();
      await stopServer(server);
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  "a grant registered over GRANT lets its session key pay for the payer, until the REVOKE",
  { skip: BIN ? false : "TOLLGATE_BIN is not set: set it to a built `tollgate` to run this test", timeout: 60_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "tollgate-ts-"));
    const server = await startServer(join(dir, "data"));
    try {
      const domain = makeDomain(31337n, new Uint8Array(20));
      const client = await Client.connect({ ...server.listen, clientId: 8n, clientKey: SigningKey.generate(), producerId: 1n, domain });
      const payer = SigningKey.generate();
      const session = SigningKey.generate();
      const payee = new Uint8Array(20).fill(0x33);
      const now = BigInt(Date.now());
      const terms = {
        sessionKey: session.publicKey,
        grantNonce: 1n,
        cap: 1_000n,
        allowance: 0n,
        periodMs: 0n,
        validFromMs: now - 60_000n,
        validUntilMs: now + 3_600_000n,
        payees: [payee],
      };
      const pay = (nonce: bigint, amount: bigint): Promise<Verdict> =>
        client.submit(
          signReceipt(
            { payee, amount, nonce, timestampMs: BigInt(Date.now()), requestHash: new Uint8Array(32), session: true },
            session,
            domain,
          ),
        );
      assert.equal(await pay(1n, 10n), "no_grant");
      assert.deepEqual(await client.grant(signGrant(payer, terms, domain)), { ok: true });
      assert.equal(await pay(2n, 400n), "accepted");
      assert.equal(await pay(3n, 700n), "over_grant_cap");
      const other = { ...terms, grantNonce: 2n };
      const refused = await client.grant(signGrant(payer, other, domain));
      assert.equal(refused.ok ? "accepted" : refused.name, "already_granted");
      assert.deepEqual(await client.revoke(signRevocation(payer, session.publicKey, BigInt(Date.now()), domain)), { ok: true });
      assert.equal(await pay(4n, 10n), "grant_revoked");
      // Charged to the payer's deposit: the session's one accepted receipt.
      assert.equal((await client.balance(payer.publicKey)).pending, 400n);
      await client.close();
    } finally {
      await stopServer(server);
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
