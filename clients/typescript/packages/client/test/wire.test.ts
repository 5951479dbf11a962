// The codec on its own: every frame survives encode → decode (split anywhere in a stream), and
// bytes that are not a frame fail with a `WireError` carrying the server's ERROR code for them,
// never with another exception.

import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  FRAME_TYPES,
  FrameReader,
  GRANT_ERROR_CODES,
  REASON_CODES,
  WireError,
  crc32c,
  decodeFrame,
  encodeFrame,
  type ErrorCodeName,
  type Frame,
  type GrantErrorName,
  type ReasonName,
} from "../src/index.js";

const MAX = 1 << 20;
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const u128 = fc.bigInt({ min: 0n, max: (1n << 128n) - 1n });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
const text = fc.string({ unit: "grapheme", maxLength: 60 });
const reasons = Object.keys(REASON_CODES) as ReasonName[];
const grantErrors = Object.entries(GRANT_ERROR_CODES) as [GrantErrorName, number][];

const ack = fc.integer({ min: 1, max: 600 }).chain((total) =>
  fc
    .record({
      batchSeq: u64,
      indices: fc.uniqueArray(fc.integer({ min: 0, max: total - 1 }), { maxLength: Math.min(total, 40) }),
      reasons: fc.array(fc.constantFrom(...reasons), { minLength: 40, maxLength: 40 }),
    })
    .map(({ batchSeq, indices, reasons: picked }): Frame => {
      const sorted = [...indices].sort((a, b) => a - b);
      return {
        type: "ACK",
        batchSeq,
        accepted: total - sorted.length,
        rejections: sorted.map((index, i) => ({ index, reason: picked[i] as ReasonName })),
      };
    }),
);

const frame: fc.Arbitrary<Frame> = fc.oneof(
  bytes(32).map((nonce): Frame => ({ type: "CHALLENGE", nonce })),
  fc
    .record({ clientId: u64, producerId: u64, sessionEpoch: u64, chainId: u64, contract: bytes(20), clientKey: bytes(32), signature: bytes(64) })
    .map((hello): Frame => ({ type: "HELLO", ...hello })),
  fc
    .record({ frameBytesMax: u32, batchReceiptsMax: u32, batchesInFlightMax: u32, idleTimeoutMs: u32 })
    .map((ok): Frame => ({ type: "HELLO_OK", ...ok })),
  fc
    .record({ batchSeq: u64, count: fc.integer({ min: 1, max: 5 }), fill: fc.uint8Array({ minLength: 1, maxLength: 1 }) })
    .map(({ batchSeq, count, fill }): Frame => ({ type: "SUBMIT", batchSeq, receipts: new Uint8Array(176 * count).fill(fill[0] ?? 0) })),
  ack,
  fc.record({ requestId: u64, payer: bytes(32) }).map((q): Frame => ({ type: "QUERY_BALANCE", ...q })),
  fc
    .record({ requestId: u64, payer: bytes(32), netDeposited: u128, settled: u128, pending: u128, available: u128, receipts: u64, channels: u64 })
    .map((b): Frame => ({ type: "BALANCE", ...b })),
  fc.record({ type: fc.constantFrom("PING" as const, "PONG" as const), nonce: u64 }).map((p): Frame => ({ ...p })),
  fc.record({ code: fc.integer({ min: 0, max: 0xffff }), text }).map((e): Frame => ({ type: "ERROR", ...e })),
  fc.record({ requestId: u64, record: bytes(288) }).map((g): Frame => ({ type: "GRANT", ...g })),
  fc.record({ requestId: u64, record: bytes(164) }).map((r): Frame => ({ type: "REVOKE", ...r })),
  fc.record({ requestId: u64, refusal: fc.option(fc.record({ entry: fc.constantFrom(...grantErrors), text })) }).map(
    ({ requestId, refusal }): Frame => ({
      type: "GRANT_RESULT",
      requestId,
      outcome: refusal === null ? { ok: true } : { ok: false, name: refusal.entry[0], code: refusal.entry[1], text: refusal.text },
    }),
  ),
);

test("CRC-32C is the Castagnoli checksum (the iSCSI check value)", () => {
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  assert.equal(crc32c(new Uint8Array()), 0);
});

test("every frame decodes to itself, however the stream is split", () => {
  fc.assert(
    fc.property(fc.array(frame, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 10 }), (frames, cuts) => {
      const stream = Buffer.concat(frames.map(encodeFrame));
      for (const one of frames) {
        const encoded = encodeFrame(one);
        const decoded = decodeFrame(encoded, MAX);
        assert.deepEqual(decoded, { frame: one, bytes: encoded.length });
      }
      const reader = new FrameReader(MAX);
      const out: Frame[] = [];
      let at = 0;
      for (const cut of [...cuts.map((c) => c % (stream.length + 1)), stream.length].sort((a, b) => a - b)) {
        reader.push(new Uint8Array(stream.subarray(at, cut)));
        at = cut;
        for (let f = reader.next(); f !== undefined; f = reader.next()) out.push(f);
      }
      reader.end();
      assert.deepEqual(out, frames);
    }),
    { numRuns: 300 },
  );
});

test("a frame cut short is incomplete, and an ended stream then says truncated_frame", () => {
  fc.assert(
    fc.property(frame, fc.nat(), (one, cut) => {
      const encoded = encodeFrame(one);
      const prefix = encoded.subarray(0, cut % encoded.length);
      assert.equal(decodeFrame(prefix, MAX).frame, undefined);
      const reader = new FrameReader(MAX);
      reader.push(prefix);
      assert.equal(reader.next(), undefined);
      if (prefix.length === 0) return reader.end();
      assert.throws(() => reader.end(), (e: unknown) => e instanceof WireError && e.code === "truncated_frame");
    }),
  );
});

/** Decoding `input` either yields a frame, waits for more, or throws a WireError: nothing else. */
function decodesOrRefuses(input: Uint8Array, max = MAX): void {
  try {
    decodeFrame(input, max);
  } catch (error) {
    assert.ok(error instanceof WireError, `not a WireError: ${String(error)}`);
  }
}

test("garbage, and frames with a byte changed, never throw anything but a WireError", () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 400 }), (garbage) => decodesOrRefuses(garbage)));
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 400 }), (body) => {
      // Garbage behind a valid header prefix reaches the body decoders.
      const header = encodeFrame({ type: "PING", nonce: 0n }).subarray(0, 6);
      decodesOrRefuses(Uint8Array.from([...header, ...body]));
    }),
  );
  fc.assert(
    fc.property(frame, fc.nat(), fc.integer({ min: 1, max: 255 }), (one, at, xor) => {
      const encoded = Uint8Array.from(encodeFrame(one));
      const i = at % encoded.length;
      encoded[i] = (encoded[i] as number) ^ xor;
      decodesOrRefuses(encoded);
    }),
  );
});

/** A frame of type `type` with `body`, its checksum right. */
function raw(type: number, body: Uint8Array, patch: (header: DataView) => void = () => {}): Uint8Array {
  const out = new Uint8Array(24 + body.length);
  const view = new DataView(out.buffer);
  out.set([0x54, 0x4f, 0x4c, 0x4c, 1, type]);
  view.setBigUint64(8, BigInt(body.length), true);
  view.setUint32(16, crc32c(body), true);
  out.set(body, 24);
  patch(view);
  return out;
}

test("each broken rule is refused with the ERROR code the spec gives it", () => {
  const ackBody = (accepted: number, rejections: [number, number][]): Uint8Array => {
    const body = new DataView(new ArrayBuffer(16 + 8 * rejections.length));
    body.setUint32(8, accepted, true);
    body.setUint32(12, rejections.length, true);
    rejections.forEach(([index, code], i) => {
      body.setUint32(16 + 8 * i, index, true);
      body.setUint8(20 + 8 * i, code);
    });
    return new Uint8Array(body.buffer);
  };
  const cases: [string, Uint8Array, ErrorCodeName, number?][] = [
    ["HTTP request", new TextEncoder().encode("GET / HTTP/1.1"), "bad_magic"],
    ["one wrong byte of magic", Uint8Array.from([0x54, 0x4f, 0x4c]).map((b, i) => (i === 2 ? 0 : b)), "bad_magic"],
    ["version 2", Uint8Array.from([0x54, 0x4f, 0x4c, 0x4c, 2]), "unsupported_version"],
    ["type 14", Uint8Array.from([0x54, 0x4f, 0x4c, 0x4c, 1, 14]), "unknown_frame_type"],
    ["type 0", Uint8Array.from([0x54, 0x4f, 0x4c, 0x4c, 1, 0]), "unknown_frame_type"],
    ["a flag", raw(FRAME_TYPES.PING, new Uint8Array(8), (h) => h.setUint16(6, 1, true)), "unknown_flags"],
    ["header reserved", raw(FRAME_TYPES.PING, new Uint8Array(8), (h) => h.setUint8(23, 1)), "reserved_not_zero"],
    ["over the maximum", raw(FRAME_TYPES.PING, new Uint8Array(8)), "frame_too_large", 31],
    ["u64 body length", raw(FRAME_TYPES.PING, new Uint8Array(8), (h) => h.setBigUint64(8, (1n << 64n) - 1n, true)), "frame_too_large"],
    ["checksum", raw(FRAME_TYPES.PING, new Uint8Array(8), (h) => h.setUint32(16, 1, true)), "checksum_mismatch"],
    ["PING of 7 bytes", raw(FRAME_TYPES.PING, new Uint8Array(7)), "bad_body_length"],
    ["HELLO_OK of 17", raw(FRAME_TYPES.HELLO_OK, new Uint8Array(17)), "bad_body_length"],
    ["SUBMIT under 8", raw(FRAME_TYPES.SUBMIT, new Uint8Array(7)), "bad_body_length"],
    ["SUBMIT of 8", raw(FRAME_TYPES.SUBMIT, new Uint8Array(8)), "empty_batch"],
    ["SUBMIT of 9", raw(FRAME_TYPES.SUBMIT, new Uint8Array(9)), "batch_not_whole_receipts"],
    ["GRANT of 295", raw(FRAME_TYPES.GRANT, new Uint8Array(295)), "bad_body_length"],
    ["HELLO reserved", raw(FRAME_TYPES.HELLO, new Uint8Array(152).fill(1, 52, 53)), "reserved_not_zero"],
    ["ACK count beyond body", raw(FRAME_TYPES.ACK, ackBody(1, [[0, 2]]).subarray(0, 16)), "bad_body_length"],
    ["ACK unknown reason", raw(FRAME_TYPES.ACK, ackBody(1, [[0, 18]])), "malformed_body"],
    ["ACK index beyond batch", raw(FRAME_TYPES.ACK, ackBody(1, [[2, 2]])), "malformed_body"],
    ["ACK unsorted", raw(FRAME_TYPES.ACK, ackBody(3, [[1, 2], [0, 2]])), "malformed_body"],
    ["ACK reserved", raw(FRAME_TYPES.ACK, ackBody(1, [[0, 2]]).fill(9, 23, 24)), "reserved_not_zero"],
    ["ERROR not UTF-8", raw(FRAME_TYPES.ERROR, Uint8Array.from([1, 0, 0, 0, 0xff])), "malformed_body"],
    ["ERROR under 4", raw(FRAME_TYPES.ERROR, new Uint8Array(3)), "bad_body_length"],
    ["GRANT_RESULT unknown code", raw(FRAME_TYPES.GRANT_RESULT, new Uint8Array(12).fill(17, 8, 9)), "malformed_body"],
    ["GRANT_RESULT ok with text", raw(FRAME_TYPES.GRANT_RESULT, new Uint8Array(13).fill(65, 12)), "malformed_body"],
  ];
  for (const [what, input, code, max] of cases) {
    assert.throws(
      () => decodeFrame(input, max ?? MAX),
      (error: unknown) => error instanceof WireError && error.code === code,
      `${what} should be ${code}`,
    );
  }
});
