// The fleet protocol, version 1 (docs/PROTOCOL.md), encoder and decoder side by side: every frame
// type, the header checks in the spec's order, and the stable code tables. Decoding never throws
// anything but a `WireError`, whose `code` is the ERROR code the server would answer with.

import { Reader, Writer, bytesArg, u64 } from "./bytes.js";
import { TollgateError } from "./errors.js";
import type { SigningKey } from "./keys.js";
import { RECEIPT_BYTES, type Domain } from "./receipt.js";

export const MAGIC = new Uint8Array([0x54, 0x4f, 0x4c, 0x4c]); // "TOLL"
export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 24;
/** Before HELLO_OK: one HELLO frame. */
export const HANDSHAKE_FRAME_BYTES_MAX = 176;
/** The default announced maximum. */
export const FRAME_BYTES_MAX = 1 << 20;
export const ERROR_TEXT_BYTES_MAX = 1024;
export const GRANT_BYTES = 288;
export const REVOCATION_BYTES = 164;
export const HELLO_TAG = "tollgate-hello-v1";

/** Frame type codes. */
export const FRAME_TYPES = {
  CHALLENGE: 1,
  HELLO: 2,
  HELLO_OK: 3,
  SUBMIT: 4,
  ACK: 5,
  QUERY_BALANCE: 6,
  BALANCE: 7,
  PING: 8,
  PONG: 9,
  ERROR: 10,
  GRANT: 11,
  REVOKE: 12,
  GRANT_RESULT: 13,
} as const;
export type FrameTypeName = keyof typeof FRAME_TYPES;
const FRAME_TYPE_NAMES = new Map<number, FrameTypeName>(
  Object.entries(FRAME_TYPES).map(([name, code]) => [code, name as FrameTypeName]),
);

/** ERROR frame codes: stable, never renumbered. */
export const ERROR_CODES = {
  bad_magic: 1,
  unsupported_version: 2,
  unknown_frame_type: 3,
  unknown_flags: 4,
  reserved_not_zero: 5,
  checksum_mismatch: 6,
  frame_too_large: 7,
  truncated_frame: 8,
  bad_body_length: 9,
  batch_not_whole_receipts: 10,
  empty_batch: 11,
  malformed_body: 12,
  unexpected_frame: 20,
  wrong_chain: 21,
  wrong_contract: 22,
  unknown_client: 23,
  bad_client_auth: 24,
  producer_fenced: 25,
  batch_mismatch: 26,
  partition_not_owned: 27,
  not_in_cluster: 28,
  handshake_timeout: 40,
  idle_timeout: 41,
  read_deadline: 42,
  too_many_connections: 43,
  too_many_batches_in_flight: 44,
  batch_too_large: 45,
  shutting_down: 60,
  internal: 61,
} as const;
export type ErrorCodeName = keyof typeof ERROR_CODES;

/** Receipt rejection reasons in ACKs: stable, never renumbered. */
export const REASON_CODES = {
  malformed: 1,
  bad_signature: 2,
  bad_payer_key: 3,
  duplicate: 4,
  stale: 5,
  timestamp_skew: 6,
  unknown_payer: 7,
  insufficient_funds: 8,
  overflow: 9,
  payee_not_allowed: 10,
  no_grant: 11,
  grant_not_yet_valid: 12,
  grant_expired: 13,
  grant_revoked: 14,
  over_grant_cap: 15,
  over_grant_allowance: 16,
  payee_not_in_grant: 17,
} as const;
export type ReasonName = keyof typeof REASON_CODES;

/** Why a GRANT or REVOKE was refused, in GRANT_RESULT: stable, never renumbered. */
export const GRANT_ERROR_CODES = {
  malformed: 1,
  wrong_deployment: 2,
  bad_signature: 3,
  bad_payer_key: 4,
  bad_session_key: 5,
  zero_cap: 6,
  bad_allowance: 7,
  empty_validity: 8,
  session_key_is_payer: 9,
  granted_by_another_payer: 10,
  already_granted: 11,
  revoked: 12,
  no_grant: 13,
  not_the_granter: 14,
  payer_is_session_key: 15,
  unknown_payer: 16,
} as const;
export type GrantErrorName = keyof typeof GRANT_ERROR_CODES;

function invert<K extends string>(table: Record<K, number>): Map<number, K> {
  return new Map(Object.entries(table).map(([name, code]) => [code as number, name as K]));
}
const ERROR_NAMES = invert(ERROR_CODES);
const REASON_NAMES = invert(REASON_CODES);
const GRANT_ERROR_NAMES = invert(GRANT_ERROR_CODES);

/** The stable name of an ERROR code, or `code N` for one this client does not know. */
export function errorCodeName(code: number): string {
  return ERROR_NAMES.get(code) ?? `code ${code}`;
}

export interface Challenge {
  type: "CHALLENGE";
  nonce: Uint8Array;
}
export interface Hello {
  type: "HELLO";
  clientId: bigint;
  producerId: bigint;
  sessionEpoch: bigint;
  chainId: bigint;
  contract: Uint8Array;
  clientKey: Uint8Array;
  signature: Uint8Array;
}
export interface HelloOk {
  type: "HELLO_OK";
  frameBytesMax: number;
  batchReceiptsMax: number;
  batchesInFlightMax: number;
  idleTimeoutMs: number;
}
export interface Submit {
  type: "SUBMIT";
  batchSeq: bigint;
  /** N ≥ 1 records of 176 bytes, back to back. */
  receipts: Uint8Array;
}
export interface Rejection {
  index: number;
  reason: ReasonName;
}
export interface Ack {
  type: "ACK";
  batchSeq: bigint;
  accepted: number;
  /** Strictly increasing indices. */
  rejections: Rejection[];
}
export interface QueryBalance {
  type: "QUERY_BALANCE";
  requestId: bigint;
  payer: Uint8Array;
}
export interface Balance {
  type: "BALANCE";
  requestId: bigint;
  payer: Uint8Array;
  netDeposited: bigint;
  settled: bigint;
  pending: bigint;
  available: bigint;
  receipts: bigint;
  channels: bigint;
}
export interface Ping {
  type: "PING" | "PONG";
  nonce: bigint;
}
export interface ErrorFrame {
  type: "ERROR";
  code: number;
  text: string;
}
export interface Registration {
  type: "GRANT" | "REVOKE";
  requestId: bigint;
  /** The signed grant (288 bytes) or revocation (164 bytes), as the payer signed it. */
  record: Uint8Array;
}
export type GrantOutcome = { ok: true } | { ok: false; code: number; name: GrantErrorName; text: string };
export interface GrantResult {
  type: "GRANT_RESULT";
  requestId: bigint;
  outcome: GrantOutcome;
}
export type Frame =
  | Challenge
  | Hello
  | HelloOk
  | Submit
  | Ack
  | QueryBalance
  | Balance
  | Ping
  | ErrorFrame
  | Registration
  | GrantResult;

/** Bytes that can never become a valid frame. */
export class WireError extends TollgateError {
  constructor(
    /** The ERROR code a server answers these bytes with. */
    readonly code: ErrorCodeName,
    readonly detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32C (Castagnoli, reflected 0x82f63b78, init and final xor 0xffffffff). */
export function crc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = (CRC32C_TABLE[(crc ^ byte) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** The body of `frame`. */
function encodeBody(frame: Frame): Uint8Array {
  switch (frame.type) {
    case "CHALLENGE":
      return Uint8Array.from(bytesArg("nonce", frame.nonce, 32));
    case "HELLO":
      return new Writer(152).raw(helloSignedPart(frame)).raw(bytesArg("signature", frame.signature, 64)).bytes;
    case "HELLO_OK":
      return new Writer(16)
        .u32(frame.frameBytesMax)
        .u32(frame.batchReceiptsMax)
        .u32(frame.batchesInFlightMax)
        .u32(frame.idleTimeoutMs).bytes;
    case "SUBMIT":
      return new Writer(8 + frame.receipts.length).u64(u64("batchSeq", frame.batchSeq)).raw(frame.receipts).bytes;
    case "ACK": {
      const out = new Writer(16 + 8 * frame.rejections.length)
        .u64(u64("batchSeq", frame.batchSeq))
        .u32(frame.accepted)
        .u32(frame.rejections.length);
      for (const { index, reason } of frame.rejections) out.u32(index).u8(REASON_CODES[reason]).zeros(3);
      return out.bytes;
    }
    case "QUERY_BALANCE":
      return new Writer(40).u64(u64("requestId", frame.requestId)).raw(bytesArg("payer", frame.payer, 32)).bytes;
    case "BALANCE":
      return new Writer(120)
        .u64(u64("requestId", frame.requestId))
        .raw(bytesArg("payer", frame.payer, 32))
        .u128(frame.netDeposited)
        .u128(frame.settled)
        .u128(frame.pending)
        .u128(frame.available)
        .u64(frame.receipts)
        .u64(frame.channels).bytes;
    case "PING":
    case "PONG":
      return new Writer(8).u64(u64("nonce", frame.nonce)).bytes;
    case "ERROR": {
      const text = utf8(frame.text);
      return new Writer(4 + text.length).u16(frame.code).zeros(2).raw(text).bytes;
    }
    case "GRANT":
    case "REVOKE":
      return new Writer(8 + frame.record.length).u64(u64("requestId", frame.requestId)).raw(frame.record).bytes;
    case "GRANT_RESULT": {
      const text = frame.outcome.ok ? new Uint8Array() : utf8(frame.outcome.text);
      return new Writer(12 + text.length)
        .u64(u64("requestId", frame.requestId))
        .u8(frame.outcome.ok ? 0 : frame.outcome.code)
        .zeros(3)
        .raw(text).bytes;
    }
  }
}

/** The whole frame: header and body. */
export function encodeFrame(frame: Frame): Uint8Array {
  const body = encodeBody(frame);
  return new Writer(HEADER_BYTES + body.length)
    .raw(MAGIC)
    .u8(PROTOCOL_VERSION)
    .u8(FRAME_TYPES[frame.type])
    .u16(0)
    .u64(BigInt(body.length))
    .u32(crc32c(body))
    .zeros(4)
    .raw(body).bytes;
}

/** HELLO body bytes 0..88: everything the client key signs after the tag and nonce. */
function helloSignedPart(hello: Omit<Hello, "type" | "signature">): Uint8Array {
  return new Writer(88)
    .u64(u64("clientId", hello.clientId))
    .u64(u64("producerId", hello.producerId))
    .u64(u64("sessionEpoch", hello.sessionEpoch))
    .u64(u64("chainId", hello.chainId))
    .raw(bytesArg("contract", hello.contract, 20))
    .zeros(4)
    .raw(bytesArg("clientKey", hello.clientKey, 32)).bytes;
}

/** `"tollgate-hello-v1" ‖ CHALLENGE nonce ‖ HELLO body bytes 0..88`: 137 bytes. */
export function helloSigningBytes(nonce: Uint8Array, hello: Omit<Hello, "type" | "signature">): Uint8Array {
  return new Writer(137).raw(utf8(HELLO_TAG)).raw(bytesArg("nonce", nonce, 32)).raw(helloSignedPart(hello)).bytes;
}

/** A HELLO signed by `clientKey` over the connection's CHALLENGE nonce. */
export function signHello(
  ids: { clientId: bigint; producerId: bigint; sessionEpoch: bigint },
  domain: Domain,
  clientKey: SigningKey,
  nonce: Uint8Array,
): Hello {
  const unsigned = { ...ids, chainId: domain.chainId, contract: domain.contract, clientKey: clientKey.publicKey };
  return { type: "HELLO", ...unsigned, signature: clientKey.sign(helloSigningBytes(nonce, unsigned)) };
}

/** What the front of a buffer holds. */
export type Decoded = { frame: Frame; bytes: number } | { frame: undefined; started: boolean };

/**
 * Takes one frame off the front of `buf` without copying more than the frame: the header is
 * checked field by field as far as it has arrived, in the spec's order (so garbage is refused at
 * its first bytes), and a frame over `frameBytesMax` is refused before its body is awaited.
 */
export function decodeFrame(buf: Uint8Array, frameBytesMax: number): Decoded {
  const seen = Math.min(buf.length, MAGIC.length);
  for (let i = 0; i < seen; i++) {
    if (buf[i] !== MAGIC[i]) throw new WireError("bad_magic", "the stream does not start a Tollgate frame");
  }
  if (buf.length > 4 && buf[4] !== PROTOCOL_VERSION) {
    throw new WireError("unsupported_version", `unsupported protocol version ${buf[4]}`);
  }
  if (buf.length <= 5) return { frame: undefined, started: buf.length > 0 };
  const typeCode = buf[5] as number;
  const type = FRAME_TYPE_NAMES.get(typeCode);
  if (type === undefined) throw new WireError("unknown_frame_type", `unknown frame type ${typeCode}`);
  if (buf.length < HEADER_BYTES) return { frame: undefined, started: true };
  const header = new Reader(buf.subarray(0, HEADER_BYTES));
  header.raw(6);
  const flags = header.u16();
  if (flags !== 0) throw new WireError("unknown_flags", `unknown flags ${flags}`);
  const bodyBytes = header.u64();
  const crc = header.u32();
  if (!header.zeros(4)) throw new WireError("reserved_not_zero", "reserved bytes are not zero in frame header");
  const frameBytes = bodyBytes + BigInt(HEADER_BYTES);
  if (frameBytes > BigInt(frameBytesMax)) {
    throw new WireError("frame_too_large", `frame of ${frameBytes} bytes is over the maximum of ${frameBytesMax}`);
  }
  const total = Number(frameBytes);
  if (buf.length < total) return { frame: undefined, started: true };
  const body = buf.subarray(HEADER_BYTES, total);
  const computed = crc32c(body);
  if (computed !== crc) {
    throw new WireError("checksum_mismatch", `body checksum mismatch: header says ${crc}, body is ${computed}`);
  }
  return { frame: decodeBody(type, body), bytes: total };
}

function bodyLength(type: FrameTypeName, body: Uint8Array): WireError {
  return new WireError("bad_body_length", `a ${type} body cannot be ${body.length} bytes`);
}

function fixed(type: FrameTypeName, body: Uint8Array, length: number): Reader {
  if (body.length !== length) throw bodyLength(type, body);
  return new Reader(body);
}

function zeros(read: Reader, count: number, place: string): void {
  if (!read.zeros(count)) throw new WireError("reserved_not_zero", `reserved bytes are not zero in ${place}`);
}

function malformed(type: FrameTypeName, detail: string): WireError {
  return new WireError("malformed_body", `malformed ${type} body: ${detail}`);
}

function text(type: FrameTypeName, bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw malformed(type, "text is not UTF-8");
  }
}

/** Decodes a body whose length and checksum the header has vouched for. */
export function decodeBody(type: FrameTypeName, body: Uint8Array): Frame {
  switch (type) {
    case "CHALLENGE":
      return { type, nonce: fixed(type, body, 32).raw(32) };
    case "HELLO": {
      const read = fixed(type, body, 152);
      const clientId = read.u64();
      const producerId = read.u64();
      const sessionEpoch = read.u64();
      const chainId = read.u64();
      const contract = read.raw(20);
      zeros(read, 4, "HELLO");
      return { type, clientId, producerId, sessionEpoch, chainId, contract, clientKey: read.raw(32), signature: read.raw(64) };
    }
    case "HELLO_OK": {
      const read = fixed(type, body, 16);
      return {
        type,
        frameBytesMax: read.u32(),
        batchReceiptsMax: read.u32(),
        batchesInFlightMax: read.u32(),
        idleTimeoutMs: read.u32(),
      };
    }
    case "SUBMIT": {
      if (body.length < 8) throw bodyLength(type, body);
      if (body.length === 8) throw new WireError("empty_batch", "a SUBMIT must carry at least one receipt");
      if ((body.length - 8) % RECEIPT_BYTES !== 0) {
        throw new WireError(
          "batch_not_whole_receipts",
          `${body.length - 8} bytes of receipts is not a whole number of ${RECEIPT_BYTES}-byte records`,
        );
      }
      const read = new Reader(body);
      return { type, batchSeq: read.u64(), receipts: read.raw(body.length - 8) };
    }
    case "ACK": {
      if (body.length < 16) throw bodyLength(type, body);
      const read = new Reader(body);
      const batchSeq = read.u64();
      const accepted = read.u32();
      const count = read.u32();
      if (body.length - 16 !== count * 8) throw bodyLength(type, body);
      const batchReceipts = accepted + count;
      if (batchReceipts > 0xffffffff) throw malformed(type, "accepted + rejected overflows u32");
      const rejections: Rejection[] = [];
      for (let i = 0; i < count; i++) {
        const index = read.u32();
        const code = read.u8();
        zeros(read, 3, "ACK rejection");
        const reason = REASON_NAMES.get(code);
        if (reason === undefined) throw malformed(type, "unknown reason code");
        if (index >= batchReceipts) throw malformed(type, "rejection index beyond the batch");
        const last = rejections[rejections.length - 1];
        if (last !== undefined && last.index >= index) throw malformed(type, "rejection indices not strictly increasing");
        rejections.push({ index, reason });
      }
      return { type, batchSeq, accepted, rejections };
    }
    case "QUERY_BALANCE": {
      const read = fixed(type, body, 40);
      return { type, requestId: read.u64(), payer: read.raw(32) };
    }
    case "BALANCE": {
      const read = fixed(type, body, 120);
      return {
        type,
        requestId: read.u64(),
        payer: read.raw(32),
        netDeposited: read.u128(),
        settled: read.u128(),
        pending: read.u128(),
        available: read.u128(),
        receipts: read.u64(),
        channels: read.u64(),
      };
    }
    case "PING":
    case "PONG":
      return { type, nonce: fixed(type, body, 8).u64() };
    case "ERROR": {
      if (body.length < 4) throw bodyLength(type, body);
      const read = new Reader(body);
      const code = read.u16();
      zeros(read, 2, "ERROR");
      return { type, code, text: text(type, body.subarray(4)) };
    }
    case "GRANT":
    case "REVOKE": {
      const read = fixed(type, body, 8 + (type === "GRANT" ? GRANT_BYTES : REVOCATION_BYTES));
      return { type, requestId: read.u64(), record: read.raw(read.remaining) };
    }
    case "GRANT_RESULT": {
      if (body.length < 12) throw bodyLength(type, body);
      const read = new Reader(body);
      const requestId = read.u64();
      const code = read.u8();
      zeros(read, 3, "GRANT_RESULT");
      const rest = body.subarray(12);
      if (code === 0) {
        if (rest.length !== 0) throw malformed(type, "an accepted GRANT_RESULT carries no text");
        return { type, requestId, outcome: { ok: true } };
      }
      const name = GRANT_ERROR_NAMES.get(code);
      if (name === undefined) throw malformed(type, "unknown grant error code");
      return { type, requestId, outcome: { ok: false, code, name, text: text(type, rest) } };
    }
  }
}

/**
 * Frames out of a byte stream that arrives in arbitrary pieces. `push` bytes as they come, take
 * frames with `next`; `end` when the stream ends refuses an unfinished frame.
 */
export class FrameReader {
  private buffer: Uint8Array = new Uint8Array(0);

  constructor(public frameBytesMax: number = HANDSHAKE_FRAME_BYTES_MAX) {}

  push(chunk: Uint8Array): void {
    if (this.buffer.length === 0) {
      this.buffer = chunk;
      return;
    }
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    this.buffer = joined;
  }

  /** The next whole frame, or undefined until more bytes arrive. Throws `WireError`. */
  next(): Frame | undefined {
    const decoded = decodeFrame(this.buffer, this.frameBytesMax);
    if (decoded.frame === undefined) return undefined;
    this.buffer = this.buffer.subarray(decoded.bytes);
    return decoded.frame;
  }

  /** The stream ended: an unfinished frame is `truncated_frame`. */
  end(): void {
    if (this.buffer.length > 0) {
      throw new WireError("truncated_frame", `stream ended ${this.buffer.length} bytes into a frame`);
    }
  }
}
