/**
 * On-disk record framing for the append-only log. This is the one place the format lives.
 *
 * Every record starts at an 8-byte aligned file offset. All integers are little-endian.
 *
 *   offset  size  field
 *   ------  ----  ---------------------------------------------------------------
 *        0     4  magic            RECORD_MAGIC ("TLG1")
 *        4     4  payload length   bytes of payload, at most RECORD_PAYLOAD_BYTES_MAX
 *        8     8  sequence number  previous record's + 1 (the file's first record sets the base)
 *       16     4  payload CRC32    over the payload bytes
 *       20     4  header CRC32     over header bytes [0, 20)
 *       24     n  payload          msgpack encoding of a plain object
 *     24+n     p  padding          zero bytes up to the next multiple of 8 (p < 8)
 *
 * The header CRC covers the length, so a damaged length can never send the reader off into the
 * rest of the file; padding must be zero, so every byte of a record is checked.
 */
import { Decoder, Encoder } from "@msgpack/msgpack";
import { assert } from "../util/assert.ts";

export const RECORD_MAGIC = 0x31474c54; // "TLG1" read as little-endian bytes
export const RECORD_HEADER_BYTES = 24;
export const RECORD_ALIGN_BYTES = 8;
/** Largest payload accepted on append and believed on read; anything larger is corruption. */
export const RECORD_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024;

const OFFSET_MAGIC = 0;
const OFFSET_LENGTH = 4;
const OFFSET_SEQUENCE = 8;
const OFFSET_PAYLOAD_CRC = 16;
const OFFSET_HEADER_CRC = 20;

// One shared encoder/decoder: `encode` returns a right-sized copy, so buffered records do not pin
// the encoder's scratch buffer.
const encoder = new Encoder();
const decoder = new Decoder();

/** CRC-32 (IEEE 802.3, as zlib). Uses Bun's native implementation when present. */
export function crc32(bytes: Uint8Array): number {
  const native = (globalThis as { Bun?: { hash?: { crc32?: (data: Uint8Array) => number } } }).Bun
    ?.hash?.crc32;
  return native ? native(bytes) >>> 0 : crc32Table(bytes);
}

let crcTable: Uint32Array | undefined;

/** Table-driven CRC-32; the fallback when `Bun.hash.crc32` is missing. */
export function crc32Table(bytes: Uint8Array): number {
  crcTable ??= buildCrcTable();
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) {
    crc = crcTable[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function buildCrcTable(): Uint32Array {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
}

/** Bytes a record with a payload of `payloadBytes` occupies on disk, header and padding included. */
export function framedBytes(payloadBytes: number): number {
  const raw = RECORD_HEADER_BYTES + payloadBytes;
  return Math.ceil(raw / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
}

export function isPlainObject(value: unknown): value is object {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !ArrayBuffer.isView(value);
}

/**
 * Encodes a payload object. `context` names the log for the error message.
 * @throws RangeError when the encoding exceeds RECORD_PAYLOAD_BYTES_MAX.
 */
export function encodePayload(payload: object, context: string): Uint8Array {
  assert(isPlainObject(payload), `${context}: a record payload must be a plain object`);
  const bytes = encoder.encode(payload);
  if (bytes.length > RECORD_PAYLOAD_BYTES_MAX) {
    throw new RangeError(
      `${context}: record payload is ${bytes.length} bytes, over the limit of ${RECORD_PAYLOAD_BYTES_MAX}`,
    );
  }
  return bytes;
}

/** Decodes a payload; undefined when it is not valid msgpack of a plain object. */
export function decodePayload(bytes: Uint8Array): object | undefined {
  try {
    const value: unknown = decoder.decode(bytes);
    return isPlainObject(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

/** Writes one framed record into `target` at `offset`; returns the offset just past it. */
export function writeRecord(target: Uint8Array, offset: number, seq: number, payload: Uint8Array): number {
  assert(offset % RECORD_ALIGN_BYTES === 0, `record offset ${offset} is not 8-byte aligned`);
  assert(Number.isSafeInteger(seq) && seq >= 0, `bad sequence number ${seq}`);
  assert(payload.length <= RECORD_PAYLOAD_BYTES_MAX, "payload over the limit reached writeRecord");
  const end = offset + framedBytes(payload.length);
  assert(end <= target.length, "record does not fit its buffer");
  const view = new DataView(target.buffer, target.byteOffset + offset, RECORD_HEADER_BYTES);
  view.setUint32(OFFSET_MAGIC, RECORD_MAGIC, true);
  view.setUint32(OFFSET_LENGTH, payload.length, true);
  view.setBigUint64(OFFSET_SEQUENCE, BigInt(seq), true);
  view.setUint32(OFFSET_PAYLOAD_CRC, crc32(payload), true);
  const headerCrc = crc32(target.subarray(offset, offset + OFFSET_HEADER_CRC));
  view.setUint32(OFFSET_HEADER_CRC, headerCrc, true);
  target.set(payload, offset + RECORD_HEADER_BYTES);
  target.fill(0, offset + RECORD_HEADER_BYTES + payload.length, end);
  return end;
}

/** Frames a run of payloads with consecutive sequence numbers starting at `firstSeq`. */
export function frameRecords(payloads: readonly Uint8Array[], firstSeq: number): Uint8Array {
  let total = 0;
  for (const payload of payloads) total += framedBytes(payload.length);
  const out = new Uint8Array(total);
  let offset = 0;
  payloads.forEach((payload, i) => {
    offset = writeRecord(out, offset, firstSeq + i, payload);
  });
  return out;
}

/** Result of checking the framing (not the sequence or payload decoding) of a record. */
export type FrameCheck =
  | { kind: "ok"; seq: number; payload: Uint8Array; end: number }
  /** The record (or its header) runs past the end of the buffer. */
  | { kind: "truncated"; reason: string }
  /** The bytes at this offset are not a valid record. */
  | { kind: "bad"; reason: string };

/** Checks the record framed at `offset` of `buf` (a whole file image). */
export function checkFrame(buf: Uint8Array, offset: number): FrameCheck {
  if (offset + RECORD_HEADER_BYTES > buf.length) {
    return { kind: "truncated", reason: "incomplete header at end of file" };
  }
  const view = new DataView(buf.buffer, buf.byteOffset + offset, RECORD_HEADER_BYTES);
  if (view.getUint32(OFFSET_MAGIC, true) !== RECORD_MAGIC) return { kind: "bad", reason: "bad magic" };
  const headerCrc = crc32(buf.subarray(offset, offset + OFFSET_HEADER_CRC));
  if (view.getUint32(OFFSET_HEADER_CRC, true) !== headerCrc) {
    return { kind: "bad", reason: "header checksum mismatch" };
  }
  const length = view.getUint32(OFFSET_LENGTH, true);
  if (length > RECORD_PAYLOAD_BYTES_MAX) {
    return { kind: "bad", reason: `payload length ${length} over the limit` };
  }
  const seq = view.getBigUint64(OFFSET_SEQUENCE, true);
  if (seq > BigInt(Number.MAX_SAFE_INTEGER)) return { kind: "bad", reason: "sequence number out of range" };
  const end = offset + framedBytes(length);
  if (end > buf.length) return { kind: "truncated", reason: "record runs past end of file" };
  const payloadStart = offset + RECORD_HEADER_BYTES;
  const payload = buf.subarray(payloadStart, payloadStart + length);
  if (view.getUint32(OFFSET_PAYLOAD_CRC, true) !== crc32(payload)) {
    return { kind: "bad", reason: "payload checksum mismatch" };
  }
  if (!isZero(buf, payloadStart + length, end)) return { kind: "bad", reason: "nonzero padding" };
  return { kind: "ok", seq: Number(seq), payload, end };
}

export function isZero(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * Offset of the first record at or after `from` (scanning 8-byte aligned offsets) whose header and
 * payload checksums both check, or undefined. Used to tell a torn tail from damage in the middle.
 */
export function findValidFrame(buf: Uint8Array, from: number): number | undefined {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
  let offset = Math.ceil(from / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
  for (; offset + RECORD_HEADER_BYTES <= buf.length; offset += RECORD_ALIGN_BYTES) {
    // Cheap magic test first: this runs over every aligned offset of a damaged region.
    if (view.getUint32(offset + OFFSET_MAGIC, true) !== RECORD_MAGIC) continue;
    if (checkFrame(buf, offset).kind === "ok") return offset;
  }
  return undefined;
}
