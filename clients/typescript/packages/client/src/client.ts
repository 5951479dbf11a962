// The fleet client: one producer session streaming receipts to a Tollgate server, with the same
// semantics as the Rust `ingest::Client` (ingest/src/client.rs). Receipts are gathered into
// batches sent when full or when the oldest has waited `batchLingerMs`; up to W batches await
// their ACK at once. When the connection breaks, the client reconnects with exponential backoff in
// the same session and re-sends every unacknowledged batch under its original sequence number and
// byte for byte, so the server answers with the original ACK and nothing is counted twice.

import * as net from "node:net";
import { u64 } from "./bytes.js";
import {
  ClosedError,
  ConfigError,
  ConnectError,
  DisconnectedError,
  ProtocolError,
  RefusedError,
  TollgateError,
} from "./errors.js";
import type { SigningKey } from "./keys.js";
import { RECEIPT_BYTES, encodeReceipt, type Domain, type Receipt } from "./receipt.js";
import {
  FRAME_BYTES_MAX,
  FrameReader,
  HEADER_BYTES,
  WireError,
  encodeFrame,
  errorCodeName,
  signHello,
  type Ack,
  type Balance,
  type ErrorCodeName,
  type Frame,
  type GrantOutcome,
  type HelloOk,
  type ReasonName,
} from "./wire.js";

/** How a client connects and batches. */
export interface ClientConfig {
  host: string;
  port: number;
  /** The client id the server is configured with (any value for a server in open mode). */
  clientId: bigint;
  /** The key whose public half the server has for `clientId`. */
  clientKey: SigningKey;
  /**
   * This producer's id: one per process streaming batches. A client connected later with the
   * same id starts a newer session of the producer, which fences off the older one.
   */
  producerId: bigint;
  /** The deployment the receipts are signed for; the server refuses a HELLO for another. */
  domain: Domain;
  /** Most receipts per batch (lowered to the server's limit if that is smaller). Default 1024. */
  batchReceiptsMax?: number;
  /** Longest a receipt waits for its batch to fill before it is sent anyway. Default 5 ms. */
  batchLingerMs?: number;
  /** Most batches awaiting their ACK (lowered to the server's limit). Default 8. */
  batchesInFlightMax?: number;
  /** First reconnect delay, doubled per failed attempt up to the maximum. Default 50 ms. */
  reconnectBackoffMsMin?: number;
  /** Default 5,000 ms. */
  reconnectBackoffMsMax?: number;
  /** Failed reconnects in a row after which every waiting request fails. Default 20. */
  reconnectAttemptsMax?: number;
  /** TCP connect plus handshake. Default 5,000 ms. */
  connectTimeoutMs?: number;
}

/** A receipt's verdict: accepted (durable, counted once), or the server's rejection reason. */
export type Verdict = "accepted" | ReasonName;

/** Counters since the client connected. */
export interface ClientStats {
  receiptsSubmitted: number;
  receiptsAccepted: number;
  receiptsRejected: number;
  /** SUBMIT frames written, re-sends included. */
  batchesSent: number;
  /** SUBMIT frames written again after a reconnect. */
  batchesResent: number;
  batchesAcked: number;
  reconnects: number;
}

const RETRYABLE: readonly ErrorCodeName[] = [
  "shutting_down",
  "internal",
  "idle_timeout",
  "too_many_connections",
  "handshake_timeout",
  "read_deadline",
];

/** True when reconnecting may help: the network or the server's state, not the request. */
function isRetryable(error: TollgateError): boolean {
  if (error instanceof ConnectError) return true;
  return error instanceof RefusedError && (RETRYABLE as readonly string[]).includes(error.codeName);
}

function refused(frame: Extract<Frame, { type: "ERROR" }>): RefusedError {
  return new RefusedError(frame.code, errorCodeName(frame.code), frame.text);
}

function asProtocol(error: unknown): TollgateError {
  if (error instanceof WireError) return new ProtocolError(`server sent bad bytes: ${error.message}`);
  if (error instanceof TollgateError) return error;
  return new ProtocolError(String(error));
}

let lastSessionEpoch = 0n;

/**
 * A session epoch larger than any this process took before, even for two clients connecting in
 * the same millisecond, and (the wall clock in nanoseconds) larger than any an earlier run took.
 */
export function nextSessionEpoch(): bigint {
  const nowNs = BigInt(Date.now()) * 1_000_000n;
  lastSessionEpoch = nowNs > lastSessionEpoch ? nowNs : lastSessionEpoch + 1n;
  return lastSessionEpoch;
}

/** One handshaken connection. */
interface Connection {
  socket: net.Socket;
  reader: FrameReader;
  limits: HelloOk;
}

/** Connects, answers the CHALLENGE with a signed HELLO and waits for HELLO_OK. */
function openConnection(config: Required<ClientConfig>, sessionEpoch: bigint): Promise<Connection> {
  const addr = `${config.host}:${config.port}`;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: config.host, port: config.port });
    socket.setNoDelay(true);
    const reader = new FrameReader(FRAME_BYTES_MAX);
    let challenged = false;
    const done = (error: TollgateError | undefined, limits?: HelloOk): void => {
      clearTimeout(timer);
      socket.removeAllListeners();
      if (error !== undefined || limits === undefined) {
        socket.on("error", () => {});
        socket.destroy();
        reject(error);
      } else {
        resolve({ socket, reader, limits });
      }
    };
    const timer = setTimeout(
      () => done(new ConnectError(addr, `no HELLO_OK within ${config.connectTimeoutMs} ms`)),
      config.connectTimeoutMs,
    );
    socket.on("error", (error) => done(new ConnectError(addr, error.message)));
    socket.on("close", () => done(new ConnectError(addr, "server closed the connection")));
    socket.on("data", (chunk: Buffer) => {
      reader.push(chunk);
      try {
        for (let frame = reader.next(); frame !== undefined; frame = reader.next()) {
          if (frame.type === "ERROR") return done(refused(frame));
          if (!challenged) {
            if (frame.type !== "CHALLENGE") return done(new ProtocolError(`expected CHALLENGE, got ${frame.type}`));
            challenged = true;
            const ids = { clientId: config.clientId, producerId: config.producerId, sessionEpoch };
            socket.write(encodeFrame(signHello(ids, config.domain, config.clientKey, frame.nonce)));
            continue;
          }
          if (frame.type !== "HELLO_OK") return done(new ProtocolError(`expected HELLO_OK, got ${frame.type}`));
          if (frame.batchReceiptsMax === 0 || frame.batchesInFlightMax === 0) {
            return done(new ProtocolError("HELLO_OK allows nothing"));
          }
          // Returning here leaves anything after HELLO_OK in the reader, for the client.
          return done(undefined, frame);
        }
      } catch (error) {
        done(asProtocol(error));
      }
    });
  });
}

/** A request's receipts waiting for verdicts. */
interface PendingRequest {
  verdicts: Verdict[];
  outstanding: number;
  resolve: (verdicts: Verdict[]) => void;
  reject: (error: TollgateError) => void;
}

/** A run of one request's receipts inside a batch. */
interface Segment {
  request: PendingRequest;
  requestOffset: number;
  batchOffset: number;
  length: number;
}

/** A numbered batch, kept until its ACK arrives so it can be re-sent unchanged. */
interface SealedBatch {
  seq: bigint;
  count: number;
  frame: Uint8Array;
  segments: Segment[];
  written: boolean;
}

/** A request answered by its own frame, matched by request id; kept to be re-sent. */
interface Query {
  frame: Frame;
  resolve: (frame: Frame) => void;
  reject: (error: TollgateError) => void;
}

/** A connection to a Tollgate server as one producer session. */
export class Client {
  private readonly config: Required<ClientConfig>;
  private readonly sessionEpoch: bigint;
  private connection: Connection | undefined;
  private batchReceiptsMax = 1;
  private inFlightMax = 1;
  private pingIntervalMs = 1000;
  private pingTimer: NodeJS.Timeout | undefined;
  private lastReceived = 0;
  private pingOutstanding = false;
  private open: Uint8Array[] = [];
  private openSegments: Segment[] = [];
  private lingerTimer: NodeJS.Timeout | undefined;
  private nextSeq = 1n;
  /** Sealed, not yet written on the current connection, in sequence order. */
  private unsent: SealedBatch[] = [];
  /** Written, awaiting their ACK. */
  private readonly inFlight = new Map<bigint, SealedBatch>();
  private readonly queries = new Map<bigint, Query>();
  private unsentQueries: bigint[] = [];
  private nextQuery = 1n;
  private closing: ((stats: ClientStats) => void) | undefined;
  private stopped: TollgateError | undefined;
  private roomWaiters: (() => void)[] = [];
  private readonly counters: ClientStats = {
    receiptsSubmitted: 0,
    receiptsAccepted: 0,
    receiptsRejected: 0,
    batchesSent: 0,
    batchesResent: 0,
    batchesAcked: 0,
    reconnects: 0,
  };

  private constructor(config: Required<ClientConfig>, sessionEpoch: bigint, connection: Connection) {
    this.config = config;
    this.sessionEpoch = sessionEpoch;
    this.attach(connection);
  }

  /**
   * Connects and completes the handshake, so a wrong address, key or deployment fails here
   * (`ConnectError`, `RefusedError`). The client runs in a new session of its producer, kept
   * across its reconnects.
   */
  static async connect(options: ClientConfig): Promise<Client> {
    const config: Required<ClientConfig> = {
      batchReceiptsMax: 1024,
      batchLingerMs: 5,
      batchesInFlightMax: 8,
      reconnectBackoffMsMin: 50,
      reconnectBackoffMsMax: 5000,
      reconnectAttemptsMax: 20,
      connectTimeoutMs: 5000,
      ...options,
      clientId: u64("clientId", options.clientId),
      producerId: u64("producerId", options.producerId),
    };
    const positive: (keyof ClientConfig)[] = ["batchReceiptsMax", "batchesInFlightMax", "reconnectBackoffMsMin"];
    for (const name of positive) {
      const value = config[name];
      if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
        throw new ConfigError(`${name} must be a positive integer`);
      }
    }
    if (config.reconnectBackoffMsMax < config.reconnectBackoffMsMin) {
      throw new ConfigError("reconnectBackoffMsMax is below reconnectBackoffMsMin");
    }
    const sessionEpoch = nextSessionEpoch();
    return new Client(config, sessionEpoch, await openConnection(config, sessionEpoch));
  }

  /** Queues one receipt; resolves to its verdict once its batch is acknowledged (durable). */
  async submit(receipt: Receipt | Uint8Array): Promise<Verdict> {
    const [verdict] = await this.enqueue([receipt], false);
    return verdict as Verdict;
  }

  /**
   * Queues receipts the caller already batched and sends them without waiting for the linger
   * time (split if over the batch limit). Resolves to the verdicts in input order.
   */
  submitBatch(receipts: readonly (Receipt | Uint8Array)[]): Promise<Verdict[]> {
    return this.enqueue(receipts, true);
  }

  /**
   * Resolves when the client has room for more receipts: fewer sealed batches wait to be written
   * than may be in flight. A producer that awaits this before submitting never queues more than
   * the server can take (back-pressure), instead of growing memory.
   */
  waitForRoom(): Promise<void> {
    if (this.stopped !== undefined || this.unsent.length < this.inFlightMax) return Promise.resolve();
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** A payer's balance as the server's durable ledger has it. */
  async balance(payer: Uint8Array): Promise<Balance> {
    const answer = await this.query({ type: "QUERY_BALANCE", requestId: 0n, payer });
    return answer as Balance;
  }

  /** Registers a payer's signed grant (288 bytes); resolves once durable, or with its refusal. */
  async grant(record: Uint8Array): Promise<GrantOutcome> {
    return this.registration("GRANT", record);
  }

  /** Registers a payer's signed revocation (164 bytes); resolves once durable, or refused. */
  async revoke(record: Uint8Array): Promise<GrantOutcome> {
    return this.registration("REVOKE", record);
  }

  /** Counters so far. */
  stats(): ClientStats {
    return { ...this.counters };
  }

  /**
   * Sends what is queued, waits for every answer, then closes the connection. Requests made
   * after it fail with `ClosedError`.
   */
  close(): Promise<ClientStats> {
    if (this.stopped !== undefined || this.closing !== undefined) return Promise.resolve(this.stats());
    return new Promise((resolve) => {
      this.closing = resolve;
      this.seal();
      this.pump();
    });
  }

  private async registration(type: "GRANT" | "REVOKE", record: Uint8Array): Promise<GrantOutcome> {
    const answer = await this.query({ type, requestId: 0n, record });
    return (answer as Extract<Frame, { type: "GRANT_RESULT" }>).outcome;
  }

  private query(frame: Extract<Frame, { type: "QUERY_BALANCE" | "GRANT" | "REVOKE" }>): Promise<Frame> {
    if (this.stopped !== undefined || this.closing !== undefined) return Promise.reject(new ClosedError());
    const requestId = this.nextQuery++;
    return new Promise((resolve, reject) => {
      this.queries.set(requestId, { frame: { ...frame, requestId }, resolve, reject });
      this.unsentQueries.push(requestId);
      this.pump();
    });
  }

  private enqueue(receipts: readonly (Receipt | Uint8Array)[], flush: boolean): Promise<Verdict[]> {
    if (this.stopped !== undefined || this.closing !== undefined) return Promise.reject(new ClosedError());
    let records: Uint8Array[];
    try {
      records = receipts.map((receipt) => (receipt instanceof Uint8Array ? receipt : encodeReceipt(receipt)));
    } catch (error) {
      return Promise.reject(error);
    }
    if (records.some((record) => record.length !== RECEIPT_BYTES)) {
      return Promise.reject(new ConfigError(`a receipt record is ${RECEIPT_BYTES} bytes`));
    }
    if (records.length === 0) return Promise.resolve([]);
    this.counters.receiptsSubmitted += records.length;
    return new Promise((resolve, reject) => {
      const request: PendingRequest = {
        verdicts: new Array<Verdict>(records.length).fill("accepted"),
        outstanding: records.length,
        resolve,
        reject,
      };
      let offset = 0;
      while (offset < records.length) {
        const room = this.batchReceiptsMax - this.open.length;
        const take = Math.min(room, records.length - offset);
        this.openSegments.push({ request, requestOffset: offset, batchOffset: this.open.length, length: take });
        for (let i = offset; i < offset + take; i++) this.open.push(records[i] as Uint8Array);
        offset += take;
        if (this.open.length >= this.batchReceiptsMax) this.seal();
      }
      if (flush) {
        this.seal();
      } else if (this.open.length > 0 && this.lingerTimer === undefined) {
        this.lingerTimer = setTimeout(() => {
          this.lingerTimer = undefined;
          this.seal();
          this.pump();
        }, this.config.batchLingerMs);
      }
      this.pump();
    });
  }

  /** Numbers the open batch and queues it for sending. */
  private seal(): void {
    if (this.lingerTimer !== undefined) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
    if (this.open.length === 0) return;
    const receipts = new Uint8Array(this.open.length * RECEIPT_BYTES);
    this.open.forEach((record, i) => receipts.set(record, i * RECEIPT_BYTES));
    const seq = this.nextSeq++;
    this.unsent.push({
      seq,
      count: this.open.length,
      frame: encodeFrame({ type: "SUBMIT", batchSeq: seq, receipts }),
      segments: this.openSegments,
      written: false,
    });
    this.open = [];
    this.openSegments = [];
  }

  /** Writes queued queries and as many sealed batches as the in-flight window allows. */
  private pump(): void {
    const connection = this.connection;
    if (connection !== undefined && this.stopped === undefined) {
      const { socket } = connection;
      socket.cork();
      for (const requestId of this.unsentQueries) {
        const query = this.queries.get(requestId);
        if (query !== undefined) socket.write(encodeFrame(query.frame));
      }
      this.unsentQueries = [];
      while (this.inFlight.size < this.inFlightMax) {
        const batch = this.unsent.shift();
        if (batch === undefined) break;
        socket.write(batch.frame);
        if (batch.written) this.counters.batchesResent += 1;
        batch.written = true;
        this.counters.batchesSent += 1;
        this.inFlight.set(batch.seq, batch);
      }
      socket.uncork();
    }
    if (this.unsent.length < this.inFlightMax || this.stopped !== undefined) {
      const waiters = this.roomWaiters;
      this.roomWaiters = [];
      for (const wake of waiters) wake();
    }
    if (
      this.closing !== undefined &&
      this.open.length === 0 &&
      this.unsent.length === 0 &&
      this.inFlight.size === 0 &&
      this.queries.size === 0
    ) {
      // Drained: stopping answers `close` with the final counters.
      this.stop(new ClosedError());
    }
  }

  private adoptLimits(limits: HelloOk): void {
    const byFrame = Math.floor(Math.max(0, limits.frameBytesMax - HEADER_BYTES - 8) / RECEIPT_BYTES);
    this.batchReceiptsMax = Math.max(1, Math.min(this.config.batchReceiptsMax, limits.batchReceiptsMax, byFrame));
    this.inFlightMax = Math.min(this.config.batchesInFlightMax, limits.batchesInFlightMax);
    // Well inside the server's idle timeout, so a quiet but healthy connection stays open.
    this.pingIntervalMs = Math.max(10, Math.floor(limits.idleTimeoutMs / 3));
  }

  private attach(connection: Connection): void {
    this.connection = connection;
    this.adoptLimits(connection.limits);
    const { socket, reader } = connection;
    let ended = false;
    const broken = (detail: string): void => {
      if (ended) return;
      ended = true;
      this.onConnectionLost(connection, detail);
    };
    socket.on("data", (chunk: Buffer) => {
      reader.push(chunk);
      this.readFrames(connection);
    });
    socket.on("error", (error) => broken(error.message));
    socket.on("close", () => broken("server closed the connection"));
    this.lastReceived = Date.now();
    this.pingOutstanding = false;
    this.pingTimer = setInterval(() => this.onPingTimer(connection), this.pingIntervalMs);
    this.readFrames(connection);
    this.pump();
  }

  private onPingTimer(connection: Connection): void {
    if (this.connection !== connection) return;
    const waiting = this.pingOutstanding || this.inFlight.size > 0;
    if (waiting && Date.now() - this.lastReceived > this.pingIntervalMs * 3) {
      this.fail(connection, new ConnectError(this.addr(), "server silent past its idle timeout"));
      return;
    }
    if (!this.pingOutstanding) {
      this.pingOutstanding = true;
      connection.socket.write(encodeFrame({ type: "PING", nonce: this.nextSeq }));
    }
  }

  private readFrames(connection: Connection): void {
    try {
      for (let frame = connection.reader.next(); frame !== undefined; frame = connection.reader.next()) {
        if (this.connection !== connection) return;
        this.lastReceived = Date.now();
        this.pingOutstanding = false;
        this.onFrame(connection, frame);
      }
    } catch (error) {
      this.fail(connection, asProtocol(error));
    }
  }

  private onFrame(connection: Connection, frame: Frame): void {
    switch (frame.type) {
      case "ACK":
        return this.onAck(connection, frame);
      case "BALANCE":
      case "GRANT_RESULT": {
        const query = this.queries.get(frame.requestId);
        const wanted = frame.type === "BALANCE" ? "QUERY_BALANCE" : ["GRANT", "REVOKE"];
        if (query !== undefined && wanted.includes(query.frame.type)) {
          this.queries.delete(frame.requestId);
          query.resolve(frame);
          this.pump();
        }
        return;
      }
      case "PING":
        connection.socket.write(encodeFrame({ type: "PONG", nonce: frame.nonce }));
        return;
      case "PONG":
        return;
      case "ERROR":
        return this.fail(connection, refused(frame));
      default:
        return this.fail(
          connection,
          new ProtocolError(`expected ACK, BALANCE, GRANT_RESULT, PING or PONG, got ${frame.type}`),
        );
    }
  }

  private onAck(connection: Connection, ack: Ack): void {
    const batch = this.inFlight.get(ack.batchSeq);
    if (batch === undefined) {
      return this.fail(connection, new ProtocolError(`ACK for batch ${ack.batchSeq} which is not in flight`));
    }
    const covered = ack.accepted + ack.rejections.length;
    if (covered !== batch.count) {
      return this.fail(
        connection,
        new ProtocolError(`ACK for batch ${ack.batchSeq} covers ${covered} receipts, the batch has ${batch.count}`),
      );
    }
    this.inFlight.delete(ack.batchSeq);
    this.counters.batchesAcked += 1;
    this.counters.receiptsAccepted += ack.accepted;
    this.counters.receiptsRejected += ack.rejections.length;
    const verdicts = new Array<Verdict>(batch.count).fill("accepted");
    for (const { index, reason } of ack.rejections) verdicts[index] = reason;
    for (const segment of batch.segments) {
      const { request } = segment;
      for (let i = 0; i < segment.length; i++) {
        request.verdicts[segment.requestOffset + i] = verdicts[segment.batchOffset + i] as Verdict;
      }
      request.outstanding -= segment.length;
      if (request.outstanding === 0) request.resolve(request.verdicts);
    }
    this.pump();
  }

  /** Ends `connection` for `error`: reconnect and re-send when that may help, else stop. */
  private fail(connection: Connection, error: TollgateError): void {
    if (this.connection !== connection) return;
    if (isRetryable(error)) {
      this.onConnectionLost(connection, error.message);
    } else {
      this.stop(error);
    }
  }

  private detach(connection: Connection): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    connection.socket.removeAllListeners();
    connection.socket.on("error", () => {});
    connection.socket.destroy();
    this.connection = undefined;
  }

  private onConnectionLost(connection: Connection, detail: string): void {
    if (this.connection !== connection || this.stopped !== undefined) return;
    this.detach(connection);
    // Whatever was written and not acknowledged goes out again, first and in sequence order.
    const written = [...this.inFlight.values()].sort((a, b) => (a.seq < b.seq ? -1 : 1));
    this.inFlight.clear();
    this.unsent = [...written, ...this.unsent];
    this.unsentQueries = [...this.queries.keys()];
    void this.reconnect(detail);
  }

  private async reconnect(detail: string): Promise<void> {
    let last = detail;
    let backoff = this.config.reconnectBackoffMsMin;
    for (let attempt = 1; attempt <= this.config.reconnectAttemptsMax; attempt++) {
      await new Promise((wake) => setTimeout(wake, backoff));
      if (this.stopped !== undefined) return;
      backoff = Math.min(backoff * 2, this.config.reconnectBackoffMsMax);
      try {
        const connection = await openConnection(this.config, this.sessionEpoch);
        if (this.stopped !== undefined) {
          connection.socket.destroy();
          return;
        }
        this.counters.reconnects += 1;
        this.attach(connection);
        return;
      } catch (error) {
        const failure = asProtocol(error);
        if (!isRetryable(failure)) return this.stop(failure);
        last = failure.message;
      }
    }
    this.stop(new DisconnectedError(this.config.reconnectAttemptsMax, last));
  }

  /** Stops for good: every waiting request fails with `error`. */
  private stop(error: TollgateError): void {
    if (this.stopped !== undefined) return;
    this.stopped = error;
    if (this.connection !== undefined) this.detach(this.connection);
    if (this.lingerTimer !== undefined) clearTimeout(this.lingerTimer);
    const requests = new Set<PendingRequest>();
    for (const batch of [...this.inFlight.values(), ...this.unsent]) {
      for (const segment of batch.segments) requests.add(segment.request);
    }
    for (const segment of this.openSegments) requests.add(segment.request);
    for (const request of requests) request.reject(error);
    for (const query of this.queries.values()) query.reject(error);
    this.inFlight.clear();
    this.unsent = [];
    this.open = [];
    this.openSegments = [];
    this.queries.clear();
    this.unsentQueries = [];
    const closing = this.closing;
    this.closing = undefined;
    closing?.(this.stats());
    for (const wake of this.roomWaiters) wake();
    this.roomWaiters = [];
  }

  private addr(): string {
    return `${this.config.host}:${this.config.port}`;
  }
}
