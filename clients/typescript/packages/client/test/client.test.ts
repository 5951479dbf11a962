// The client's batching, pipelining, re-sends and errors, against a scripted server built on this
// package's own codec (the real server is in serve.test.ts).

import assert from "node:assert/strict";
import * as net from "node:net";
import { test } from "node:test";
import {
  Client,
  ClosedError,
  ConfigError,
  ConnectError,
  DisconnectedError,
  ERROR_CODES,
  FrameReader,
  ProtocolError,
  RefusedError,
  SigningKey,
  encodeFrame,
  makeDomain,
  signReceipt,
  type ClientConfig,
  type ErrorCodeName,
  type Frame,
  type Receipt,
} from "../src/index.js";

type Submit = Extract<Frame, { type: "SUBMIT" }>;
type Hello = Extract<Frame, { type: "HELLO" }>;

/** One connection as the scripted server sees it. */
class Peer {
  readonly submits: Submit[] = [];
  hello: Hello | undefined;
  constructor(readonly socket: net.Socket) {}

  send(frame: Frame): void {
    this.socket.write(encodeFrame(frame));
  }

  ack(submit: Submit, rejections: Extract<Frame, { type: "ACK" }>["rejections"] = []): void {
    const count = submit.receipts.length / 176;
    this.send({ type: "ACK", batchSeq: submit.batchSeq, accepted: count - rejections.length, rejections });
  }

  refuse(code: ErrorCodeName): void {
    this.send({ type: "ERROR", code: ERROR_CODES[code], text: `scripted ${code}` });
    this.socket.end();
  }
}

interface Script {
  limits?: Partial<Extract<Frame, { type: "HELLO_OK" }>>;
  /** Instead of HELLO_OK. */
  onHello?: (peer: Peer) => void;
  /** Default: ACK every receipt at once. */
  onSubmit?: (peer: Peer, submit: Submit) => void;
}

/** A server that speaks the protocol as `script` says and records what it receives. */
class ScriptedServer {
  readonly peers: Peer[] = [];
  private readonly server: net.Server;
  private waiters: (() => void)[] = [];

  constructor(private readonly script: Script) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  private accept(socket: net.Socket): void {
    const peer = new Peer(socket);
    this.peers.push(peer);
    socket.on("error", () => {});
    const reader = new FrameReader(1 << 20);
    peer.send({ type: "CHALLENGE", nonce: new Uint8Array(32).fill(7) });
    socket.on("data", (chunk: Buffer) => {
      reader.push(chunk);
      for (let frame = reader.next(); frame !== undefined; frame = reader.next()) {
        if (frame.type === "HELLO") {
          peer.hello = frame;
          if (this.script.onHello) this.script.onHello(peer);
          else
            peer.send({
              type: "HELLO_OK",
              frameBytesMax: 1 << 20,
              batchReceiptsMax: 4096,
              batchesInFlightMax: 16,
              idleTimeoutMs: 60_000,
              ...this.script.limits,
            });
        } else if (frame.type === "SUBMIT") {
          peer.submits.push(frame);
          (this.script.onSubmit ?? ((p, s) => p.ack(s)))(peer, frame);
        } else if (frame.type === "QUERY_BALANCE") {
          const zero = { netDeposited: 0n, settled: 0n, pending: 0n, available: 0n, receipts: 0n, channels: 0n };
          peer.send({ type: "BALANCE", requestId: frame.requestId, payer: frame.payer, ...zero });
        } else if (frame.type === "PING") {
          peer.send({ type: "PONG", nonce: frame.nonce });
        }
        this.wake();
      }
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves once `condition` holds, checked after every frame received. */
  async until(condition: () => boolean): Promise<void> {
    while (!condition()) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  get submits(): Submit[] {
    return this.peers.flatMap((peer) => peer.submits);
  }

  listen(): Promise<number> {
    return new Promise((resolve) =>
      this.server.listen(0, "127.0.0.1", () => resolve((this.server.address() as net.AddressInfo).port)),
    );
  }

  close(): Promise<void> {
    for (const peer of this.peers) peer.socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

const domain = makeDomain(31337n, new Uint8Array(20));
const payer = SigningKey.fromSeed(new Uint8Array(32).fill(9));

function receipts(count: number, from = 1): Receipt[] {
  return Array.from({ length: count }, (_, i) =>
    signReceipt(
      { payee: new Uint8Array(20).fill(1), amount: 10n, nonce: BigInt(from + i), timestampMs: 1n, requestHash: new Uint8Array(32) },
      payer,
      domain,
    ),
  );
}

async function withServer(script: Script, run: (server: ScriptedServer, config: ClientConfig) => Promise<void>): Promise<void> {
  const server = new ScriptedServer(script);
  const port = await server.listen();
  const config: ClientConfig = {
    host: "127.0.0.1",
    port,
    clientId: 3n,
    clientKey: SigningKey.fromSeed(new Uint8Array(32).fill(1)),
    producerId: 5n,
    domain,
    reconnectBackoffMsMin: 5,
    reconnectBackoffMsMax: 20,
  };
  try {
    await run(server, config);
  } finally {
    await server.close();
  }
}

const counts = (submits: Submit[]): number[] => submits.map((s) => s.receipts.length / 176);

test("receipts are batched by size, a partial batch goes when it has lingered, and sequence numbers run 1, 2, 3", () =>
  withServer({}, async (server, config) => {
    const client = await Client.connect({ ...config, batchReceiptsMax: 10, batchLingerMs: 5 });
    const verdicts = await Promise.all(receipts(25).map((r) => client.submit(r)));
    assert.deepEqual(verdicts, new Array(25).fill("accepted"));
    assert.deepEqual(counts(server.submits), [10, 10, 5]);
    assert.deepEqual(server.submits.map((s) => s.batchSeq), [1n, 2n, 3n]);
    const hello = server.peers[0]?.hello as Hello;
    assert.equal(hello.clientId, 3n);
    assert.equal(hello.producerId, 5n);
    await client.close();
  }));

test("a batch larger than the server's limit is split, and verdicts come back in input order", () =>
  withServer(
    { limits: { batchReceiptsMax: 4 }, onSubmit: (peer, submit) => peer.ack(submit, submit.batchSeq === 2n ? [{ index: 1, reason: "duplicate" }] : []) },
    async (server, config) => {
      const client = await Client.connect(config);
      const verdicts = await client.submitBatch(receipts(10));
      assert.deepEqual(counts(server.submits), [4, 4, 2]);
      const expected = new Array(10).fill("accepted");
      expected[5] = "duplicate";
      assert.deepEqual(verdicts, expected);
      assert.equal(client.stats().receiptsRejected, 1);
      await client.close();
    },
  ));

test("no more than W batches await their ACK, W being the smaller of the client's and the server's", () => {
  const held: [Peer, Submit][] = [];
  let mostHeld = 0;
  const hold = (peer: Peer, submit: Submit): void => {
    held.push([peer, submit]);
    mostHeld = Math.max(mostHeld, held.length);
  };
  return withServer({ limits: { batchesInFlightMax: 2 }, onSubmit: hold }, async (server, config) => {
    const client = await Client.connect({ ...config, batchReceiptsMax: 1, batchesInFlightMax: 8 });
    const verdicts = client.submitBatch(receipts(5));
    await server.until(() => server.submits.length === 2);
    // A round trip: whatever the client wrote before its query has reached the server.
    await client.balance(payer.publicKey);
    assert.equal(server.submits.length, 2);
    for (let acked = 0; acked < 5; acked++) {
      await server.until(() => held.length > 0);
      const [peer, submit] = held.shift() as [Peer, Submit];
      peer.ack(submit);
    }
    assert.deepEqual(await verdicts, new Array(5).fill("accepted"));
    assert.equal(mostHeld, 2);
    assert.deepEqual(server.submits.map((s) => s.batchSeq), [1n, 2n, 3n, 4n, 5n]);
    await client.close();
  });
});

test("after a broken connection, unacknowledged batches go again in the same session, numbers and bytes unchanged", () => {
  let first: Peer | undefined;
  const onSubmit = (peer: Peer, submit: Submit): void => {
    first ??= peer;
    // The first connection dies once its second batch arrives, both unanswered.
    if (peer !== first) peer.ack(submit);
    else if (peer.submits.length === 2) peer.socket.destroy();
  };
  return withServer({ onSubmit }, async (server, config) => {
    const client = await Client.connect({ ...config, batchReceiptsMax: 3 });
    const verdicts = await client.submitBatch(receipts(6));
    assert.deepEqual(verdicts, new Array(6).fill("accepted"));
    assert.equal(server.peers.length, 2);
    const [dead, second] = server.peers as [Peer, Peer];
    assert.equal(dead.submits.length, 2);
    assert.equal(dead.hello?.sessionEpoch, second.hello?.sessionEpoch);
    assert.deepEqual(second.submits, dead.submits);
    assert.equal(client.stats().reconnects, 1);
    assert.equal(client.stats().batchesResent, 2);
    await client.close();
  });
});

test("a refusal that retrying cannot help fails every waiting receipt with a RefusedError, then ClosedError", () =>
  withServer({ onSubmit: (peer) => peer.refuse("batch_mismatch") }, async (_server, config) => {
    const client = await Client.connect(config);
    await assert.rejects(client.submitBatch(receipts(2)), (e: unknown) => e instanceof RefusedError && e.codeName === "batch_mismatch" && e.code === 26);
    await assert.rejects(client.submit(receipts(1)[0] as Receipt), ClosedError);
  }));

test("a HELLO refused is a RefusedError from connect", () =>
  withServer({ onHello: (peer) => peer.refuse("producer_fenced") }, async (_server, config) => {
    await assert.rejects(Client.connect(config), (e: unknown) => e instanceof RefusedError && e.codeName === "producer_fenced");
  }));

test("an ACK that does not cover the batch, or bytes that are not a frame, are ProtocolErrors", async () => {
  await withServer(
    { onSubmit: (peer, submit) => peer.send({ type: "ACK", batchSeq: submit.batchSeq, accepted: 1, rejections: [] }) },
    async (_server, config) => {
      const client = await Client.connect(config);
      await assert.rejects(client.submitBatch(receipts(2)), ProtocolError);
    },
  );
  await withServer({ onSubmit: (peer) => peer.socket.write("HTTP/1.1 400 Bad Request\r\n\r\n") }, async (_server, config) => {
    const client = await Client.connect(config);
    await assert.rejects(client.submitBatch(receipts(1)), ProtocolError);
  });
});

test("nobody listening is a ConnectError; a server gone for good ends in DisconnectedError", async () => {
  await withServer({ onSubmit: (peer) => peer.socket.destroy() }, async (server, config) => {
    await assert.rejects(Client.connect({ ...config, port: 1 }), ConnectError);
    const client = await Client.connect({ ...config, reconnectAttemptsMax: 3 });
    const verdict = client.submit(receipts(1)[0] as Receipt);
    await server.until(() => server.submits.length === 1);
    await server.close();
    await assert.rejects(verdict, (e: unknown) => e instanceof DisconnectedError && e.attempts === 3);
  });
});

test("a configuration that cannot work is a ConfigError", async () => {
  const config = { host: "127.0.0.1", port: 1, clientId: 1n, clientKey: payer, producerId: 1n, domain };
  await assert.rejects(Client.connect({ ...config, batchReceiptsMax: 0 }), ConfigError);
  await assert.rejects(Client.connect({ ...config, reconnectBackoffMsMin: 100, reconnectBackoffMsMax: 10 }), ConfigError);
});
