// Byte helpers shared by the receipt and the wire codec: hex, and little-endian unsigned integers
// as bigint (a u64 does not fit a JavaScript number).

import { FormatError } from "./errors.js";

const U64_MAX = (1n << 64n) - 1n;

/** Lowercase hex of `bytes`, no prefix. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Exactly `length` bytes from hex text, with or without `0x` (either case of digits). */
export function fromHex(field: string, text: string, length: number): Uint8Array {
  const digits = text.startsWith("0x") ? text.slice(2) : text;
  if (!/^[0-9a-fA-F]*$/.test(digits) || digits.length % 2 !== 0) {
    throw new FormatError(field, `not hex: ${JSON.stringify(text)}`);
  }
  if (digits.length !== length * 2) {
    throw new FormatError(field, `expected ${length} bytes of hex, got ${digits.length / 2}`);
  }
  return new Uint8Array(Buffer.from(digits, "hex"));
}

/** `bytes`, checked to be exactly `length` long (keys, addresses, hashes given as bytes). */
export function exactly(field: string, bytes: Uint8Array, length: number): Uint8Array {
  if (!(bytes instanceof Uint8Array) || bytes.length !== length) {
    throw new FormatError(field, `expected ${length} bytes`);
  }
  return bytes;
}

/** A bytes-or-hex argument as exactly `length` bytes. */
export function bytesArg(field: string, value: Uint8Array | string, length: number): Uint8Array {
  return typeof value === "string" ? fromHex(field, value, length) : exactly(field, value, length);
}

/** `value` as a u64, refusing anything that does not fit rather than wrapping it. */
export function u64(field: string, value: bigint | number): bigint {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new FormatError(field, `${value} is not an integer a JavaScript number holds exactly`);
  }
  const big = BigInt(value);
  if (big < 0n || big > U64_MAX) {
    throw new FormatError(field, `${big} is not an unsigned 64-bit integer`);
  }
  return big;
}

/** A u64 from decimal text, or from a JSON number that is a safe integer. */
export function u64Text(field: string, value: unknown): bigint {
  if (typeof value === "number") return u64(field, value);
  if (typeof value !== "string" || !/^[0-9]+$/.test(value)) {
    throw new FormatError(field, `${JSON.stringify(value)} is not an unsigned 64-bit integer`);
  }
  return u64(field, BigInt(value));
}

/** A fixed-size little-endian writer over a fresh buffer. */
export class Writer {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private at = 0;

  constructor(length: number) {
    this.bytes = new Uint8Array(length);
    this.view = new DataView(this.bytes.buffer);
  }

  u8(value: number): this {
    this.view.setUint8(this.at, value);
    this.at += 1;
    return this;
  }

  u16(value: number): this {
    this.view.setUint16(this.at, value, true);
    this.at += 2;
    return this;
  }

  u32(value: number): this {
    this.view.setUint32(this.at, value, true);
    this.at += 4;
    return this;
  }

  u64(value: bigint): this {
    this.view.setBigUint64(this.at, value, true);
    this.at += 8;
    return this;
  }

  u128(value: bigint): this {
    this.u64(value & U64_MAX);
    return this.u64(value >> 64n);
  }

  raw(bytes: Uint8Array): this {
    this.bytes.set(bytes, this.at);
    this.at += bytes.length;
    return this;
  }

  zeros(count: number): this {
    this.at += count;
    return this;
  }
}

/** A little-endian reader over a slice whose length the caller has already checked. */
export class Reader {
  private readonly view: DataView;
  private at = 0;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  u8(): number {
    const value = this.view.getUint8(this.at);
    this.at += 1;
    return value;
  }

  u16(): number {
    const value = this.view.getUint16(this.at, true);
    this.at += 2;
    return value;
  }

  u32(): number {
    const value = this.view.getUint32(this.at, true);
    this.at += 4;
    return value;
  }

  u64(): bigint {
    const value = this.view.getBigUint64(this.at, true);
    this.at += 8;
    return value;
  }

  u128(): bigint {
    const low = this.u64();
    return (this.u64() << 64n) | low;
  }

  /** A copy of the next `count` bytes. */
  raw(count: number): Uint8Array {
    const out = this.bytes.slice(this.at, this.at + count);
    this.at += count;
    return out;
  }

  /** True when the next `count` bytes are all zero; skips them. */
  zeros(count: number): boolean {
    const slice = this.bytes.subarray(this.at, this.at + count);
    this.at += count;
    return slice.every((b) => b === 0);
  }

  get remaining(): number {
    return this.bytes.length - this.at;
  }
}

/** True when both hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}
