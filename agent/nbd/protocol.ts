/**
 * The NBD wire format: every constant, limit, encoder and decoder lives here and nowhere else.
 * `L123` refers to a line of ../shared/reference/nbd-proto.md (NetworkBlockDevice doc/proto.md).
 *
 * All integers on the wire are big-endian. 64-bit fields are handled as two u32 halves (hi, lo) so
 * the hot path never touches BigInt; offsets become plain numbers only after a range check.
 */
import { assert } from "../../engine/util/assert.ts";
import type { NbdErrno } from "./backend.ts";

// ---------------------------------------------------------------------------------------------
// Magic numbers (L127-131, L197-205, L351-357, L366, L416)

/** "NBDMAGIC", sent first by the server. */
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
/** "IHAVEOPT": follows NBDMAGIC and starts every client option. */
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
/** 0x3e889045565a9: starts every option reply. */
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---------------------------------------------------------------------------------------------
// Handshake (L1052-1089)

/** Server handshake flags. No other bit may be set (L1057-1064). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags; any other bit, or NO_ZEROES not advertised, means drop the connection (L1087-1089). */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** Option codes (L1159-1512). 4 (PEEK_EXPORT) and 11 (EXTENDED_HEADERS) are deliberately unknown. */
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

/** Option reply types (L1514-1714); errors have bit 31 set. */
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_PLATFORM = 0x80000004;
export const REP_ERR_TLS_REQD = 0x80000005;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_SHUTDOWN = 0x80000007;
export const REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const REP_ERR_TOO_BIG = 0x80000009;

/** NBD_REP_INFO types (L1577-1635). */
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

/** Transmission flags (L1091-1157). RESIZE (9) and BLOCK_STATUS_PAYLOAD (12) stay unused. */
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_SEND_FUA = 1 << 3;
export const TFLAG_ROTATIONAL = 1 << 4;
export const TFLAG_SEND_TRIM = 1 << 5;
export const TFLAG_SEND_WRITE_ZEROES = 1 << 6;
export const TFLAG_SEND_DF = 1 << 7;
export const TFLAG_CAN_MULTI_CONN = 1 << 8;
export const TFLAG_SEND_CACHE = 1 << 10;
export const TFLAG_SEND_FAST_ZERO = 1 << 11;

/** The one metadata context we offer (L981-1038). */
export const META_CONTEXT_BASE_ALLOCATION = "base:allocation";
export const META_NAMESPACE_BASE = "base:";
/** Context id we hand out for base:allocation in NBD_OPT_SET_META_CONTEXT; LIST replies use 0 (L1469). */
export const META_CONTEXT_ID_ALLOCATION = 1;
/** base:allocation status flags (L1014-1032). */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Transmission (L347-430, L1716-1942)

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = 0x8001;
export const REPLY_TYPE_ERROR_OFFSET = 0x8002;

/** Wire error numbers (L2317-2326). */
export const ERRNO: Readonly<Record<NbdErrno, number>> = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
};

// ---------------------------------------------------------------------------------------------
// Sizes of fixed wire structures

/** NBDMAGIC + IHAVEOPT + u16 handshake flags. */
export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
/** IHAVEOPT + u32 option + u32 length. */
export const OPTION_HEADER_BYTES = 16;
/** Reply magic (8) + u32 option + u32 type + u32 length. */
export const OPTION_REPLY_HEADER_BYTES = 20;
/** NBD_OPT_EXPORT_NAME reply: u64 size + u16 flags (+ 124 zero bytes unless NO_ZEROES). */
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_PADDING_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const CHUNK_HEADER_BYTES = 20;
/** Chunk header + u64 offset: where the data of an OFFSET_DATA chunk starts. */
export const OFFSET_DATA_HEADER_BYTES = CHUNK_HEADER_BYTES + 8;
/** Chunk header + u64 offset + u32 hole size. */
export const OFFSET_HOLE_CHUNK_BYTES = CHUNK_HEADER_BYTES + 12;
/** Chunk header + u32 error + u16 message length (+ message). */
export const ERROR_CHUNK_HEADER_BYTES = CHUNK_HEADER_BYTES + 6;
/** Chunk header + u32 context id (+ 8 bytes per extent). */
export const BLOCK_STATUS_HEADER_BYTES = CHUNK_HEADER_BYTES + 4;
export const BLOCK_STATUS_EXTENT_BYTES = 8;

// ---------------------------------------------------------------------------------------------
// Limits. Every input the client controls is bounded here.

/** Strings (export names, queries, messages) are at most 4096 bytes (L36-40). */
export const STRING_LENGTH_MAX = 4096;
/** Largest option payload we buffer; more is a denial of service and ends the connection (L270-273). */
export const OPTION_LENGTH_MAX = 256 * 1024;
/** Options per connection before we call it a denial of service and hang up... */
export const OPTION_COUNT_MAX = 1024;
/** ...plus this many per export once the client has listed them (`nbdinfo --list` asks about
 *  each export in turn on one connection, and a host may serve thousands). */
export const OPTIONS_PER_LISTED_EXPORT = 4;
/** Metadata queries per LIST/SET_META_CONTEXT option. */
export const META_QUERY_COUNT_MAX = 128;
/** Advertised size constraints (L814-845): byte-granular, 4 KiB preferred, 32 MiB per payload. */
export const BLOCK_SIZE_MIN = 1;
export const BLOCK_SIZE_PREFERRED = 4096;
export const PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
/** Extents per NBD_REPLY_TYPE_BLOCK_STATUS chunk (L1865-1868). */
export const BLOCK_STATUS_EXTENTS_MAX = 1 << 20;
/** Error messages we put in error chunks are cut to this many bytes (<= STRING_LENGTH_MAX). */
export const ERROR_MESSAGE_BYTES_MAX = 512;
/** Holes shorter than this are sent as explicit zeroes: a hole chunk costs 32 bytes of header. */
export const HOLE_CHUNK_BYTES_MIN = 512;
/** Requests of one connection handed to the backend and not completed; beyond it input pauses. */
export const REQUESTS_IN_FLIGHT_MAX = 256;
/** READ/WRITE payload bytes one connection may hold in flight; beyond it input pauses. */
export const IN_FLIGHT_BYTES_MAX = 64 * 1024 * 1024;
/** Reply bytes one connection may have waiting for the socket; beyond it input pauses. */
export const OUTPUT_PENDING_BYTES_MAX = 16 * 1024 * 1024;
/** Bytes buffered from a client that have not been parsed yet; beyond it is a denial of service. */
export const INPUT_BUFFERED_BYTES_MAX = 2 * PAYLOAD_BYTES_MAX;

assert(isPowerOfTwo(BLOCK_SIZE_MIN) && BLOCK_SIZE_MIN <= 65536, "minimum block size: power of 2, <= 64 KiB");
assert(isPowerOfTwo(BLOCK_SIZE_PREFERRED), "preferred block size is a power of 2");
assert(BLOCK_SIZE_PREFERRED >= Math.max(BLOCK_SIZE_MIN, 512), "preferred block size >= max(min, 512)");
assert(PAYLOAD_BYTES_MAX >= BLOCK_SIZE_PREFERRED, "max payload >= preferred block size");
assert(PAYLOAD_BYTES_MAX >= 1 << 25, "max payload must cover the 32 MiB every client may assume (L827)");
assert(PAYLOAD_BYTES_MAX + OFFSET_DATA_HEADER_BYTES <= 0xffffffff, "an OFFSET_DATA chunk length fits in u32");
assert(OPTION_LENGTH_MAX >= 4 + STRING_LENGTH_MAX + 2 + 2 * 0xffff, "an INFO/GO option with every info code fits");
assert(ERROR_MESSAGE_BYTES_MAX <= STRING_LENGTH_MAX, "error messages are strings");

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

// ---------------------------------------------------------------------------------------------
// Byte helpers. Plain index arithmetic: no DataView to allocate per buffer.

export function readU16(b: Uint8Array, p: number): number {
  return (b[p]! << 8) | b[p + 1]!;
}

export function readU32(b: Uint8Array, p: number): number {
  return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
}

export function writeU16(b: Uint8Array, p: number, v: number): void {
  b[p] = v >>> 8;
  b[p + 1] = v;
}

export function writeU32(b: Uint8Array, p: number, v: number): void {
  b[p] = v >>> 24;
  b[p + 1] = v >>> 16;
  b[p + 2] = v >>> 8;
  b[p + 3] = v;
}

const TWO_POW_32 = 0x1_0000_0000;

/** Writes a non-negative safe integer as u64. */
export function writeU64(b: Uint8Array, p: number, v: number): void {
  assert(Number.isSafeInteger(v) && v >= 0, "u64 value is a non-negative safe integer");
  writeU32(b, p, Math.floor(v / TWO_POW_32));
  writeU32(b, p + 4, v >>> 0);
}

/** Joins u64 halves into a number, or returns Infinity when it exceeds 2^53 - 1 (never a valid offset). */
export function u64ToNumber(hi: number, lo: number): number {
  return hi < 0x200000 ? hi * TWO_POW_32 + lo : Number.POSITIVE_INFINITY;
}

const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

export function encodeUtf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

/** Decodes a protocol string (L36-40): valid UTF-8, no NUL, at most 4096 bytes; null if not. */
export function decodeString(b: Uint8Array, start: number, end: number): string | null {
  if (end - start > STRING_LENGTH_MAX) return null;
  for (let i = start; i < end; i++) if (b[i] === 0) return null;
  try {
    return utf8Decoder.decode(b.subarray(start, end));
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake encoders

/**
 * Server greeting (L127-131):
 *   +----------+----------+-------+
 *   | NBDMAGIC | IHAVEOPT | flags |
 *   +----------+----------+-------+
 *       8          8         2
 */
export function writeGreeting(b: Uint8Array, p: number, handshakeFlags: number): void {
  writeU32(b, p, NBDMAGIC_HI);
  writeU32(b, p + 4, NBDMAGIC_LO);
  writeU32(b, p + 8, IHAVEOPT_HI);
  writeU32(b, p + 12, IHAVEOPT_LO);
  writeU16(b, p + 16, handshakeFlags);
}

/** Option header sent by the client (L149-153): IHAVEOPT, u32 option, u32 length. */
export interface OptionHeader {
  magicOk: boolean;
  option: number;
  length: number;
}

export function readOptionHeader(b: Uint8Array, p: number, into: OptionHeader): void {
  into.magicOk = readU32(b, p) === IHAVEOPT_HI && readU32(b, p + 4) === IHAVEOPT_LO;
  into.option = readU32(b, p + 8);
  into.length = readU32(b, p + 12);
}

/** Option reply header (L197-205); `length` bytes of data follow. */
export function writeOptionReplyHeader(b: Uint8Array, p: number, option: number, type: number, length: number): void {
  writeU32(b, p, OPTION_REPLY_MAGIC_HI);
  writeU32(b, p + 4, OPTION_REPLY_MAGIC_LO);
  writeU32(b, p + 8, option);
  writeU32(b, p + 12, type);
  writeU32(b, p + 16, length);
}

/** NBD_REP_INFO / NBD_INFO_EXPORT payload (L1584-1590): u16 type, u64 size, u16 tflags. */
export const INFO_EXPORT_BYTES = 12;
export function writeInfoExport(b: Uint8Array, p: number, sizeBytes: number, tflags: number): void {
  writeU16(b, p, INFO_EXPORT);
  writeU64(b, p + 2, sizeBytes);
  writeU16(b, p + 10, tflags);
}

/** NBD_INFO_BLOCK_SIZE payload (L1628-1635): u16 type, u32 min, u32 preferred, u32 max payload. */
export const INFO_BLOCK_SIZE_BYTES = 14;
export function writeInfoBlockSize(b: Uint8Array, p: number): void {
  writeU16(b, p, INFO_BLOCK_SIZE);
  writeU32(b, p + 2, BLOCK_SIZE_MIN);
  writeU32(b, p + 6, BLOCK_SIZE_PREFERRED);
  writeU32(b, p + 10, PAYLOAD_BYTES_MAX);
}

// ---------------------------------------------------------------------------------------------
// Handshake decoders. They check syntax only; a null/-1 result means NBD_REP_ERR_INVALID.

/** NBD_OPT_INFO / NBD_OPT_GO data (L1267-1272): u32 name length, name, u16 n, n x u16 info codes. */
export interface InfoRequest {
  name: string;
  infoCodes: number[];
}

export function decodeInfoRequest(data: Uint8Array): InfoRequest | null {
  if (data.length < 6) return null;
  const nameLength = readU32(data, 0);
  if (nameLength > data.length - 6) return null; // L1267-1268
  const name = decodeString(data, 4, 4 + nameLength);
  if (name === null) return null;
  let p = 4 + nameLength;
  const count = readU16(data, p);
  p += 2;
  if (data.length !== p + 2 * count) return null;
  const infoCodes: number[] = [];
  for (let i = 0; i < count; i++, p += 2) infoCodes.push(readU16(data, p));
  return { name, infoCodes };
}

/** NBD_OPT_LIST/SET_META_CONTEXT data (L1400-1412): u32 name length, name, u32 n, n x (u32 length, query). */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export type MetaContextDecodeResult = MetaContextRequest | "invalid" | "too-big";

export function decodeMetaContextRequest(data: Uint8Array): MetaContextDecodeResult {
  if (data.length < 8) return "invalid";
  const nameLength = readU32(data, 0);
  if (nameLength > data.length - 8) return "invalid";
  const exportName = decodeString(data, 4, 4 + nameLength);
  if (exportName === null) return "invalid";
  let p = 4 + nameLength;
  const count = readU32(data, p);
  p += 4;
  // Each query takes at least its 4-byte length: a larger count overruns the option (L1418-1421).
  if (count > (data.length - p) / 4) return "invalid";
  if (count > META_QUERY_COUNT_MAX) return "too-big";
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - p < 4) return "invalid";
    const length = readU32(data, p);
    p += 4;
    if (length > data.length - p) return "invalid";
    const query = decodeString(data, p, p + length);
    if (query === null) return "invalid";
    queries.push(query);
    p += length;
  }
  if (p !== data.length) return "invalid";
  return { exportName, queries };
}

// ---------------------------------------------------------------------------------------------
// Transmission decoders and encoders

/** A decoded request header (L351-357), reused for every request of a connection. */
export interface RequestHeader {
  magicOk: boolean;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offsetHi: number;
  offsetLo: number;
  length: number;
}

/**
 *   +-------+-------+------+--------+--------+--------+
 *   | magic | flags | type | cookie | offset | length |  (+ length bytes for NBD_CMD_WRITE)
 *   +-------+-------+------+--------+--------+--------+
 *       4       2      2       8        8        4
 */
export function readRequestHeader(b: Uint8Array, p: number, into: RequestHeader): void {
  into.magicOk = readU32(b, p) === REQUEST_MAGIC;
  into.flags = readU16(b, p + 4);
  into.type = readU16(b, p + 6);
  into.cookieHi = readU32(b, p + 8);
  into.cookieLo = readU32(b, p + 12);
  into.offsetHi = readU32(b, p + 16);
  into.offsetLo = readU32(b, p + 20);
  into.length = readU32(b, p + 24);
}

/** Simple reply (L366-372): magic, u32 error, u64 cookie (+ read data on success). */
export function writeSimpleReply(b: Uint8Array, p: number, error: number, cookieHi: number, cookieLo: number): void {
  writeU32(b, p, SIMPLE_REPLY_MAGIC);
  writeU32(b, p + 4, error);
  writeU32(b, p + 8, cookieHi);
  writeU32(b, p + 12, cookieLo);
}

/** Structured reply chunk header (L414-420): magic, u16 flags, u16 type, u64 cookie, u32 length. */
export function writeChunkHeader(
  b: Uint8Array,
  p: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  writeU32(b, p, STRUCTURED_REPLY_MAGIC);
  writeU16(b, p + 4, flags);
  writeU16(b, p + 6, type);
  writeU32(b, p + 8, cookieHi);
  writeU32(b, p + 12, cookieLo);
  writeU32(b, p + 16, length);
}

/** NBD_REPLY_TYPE_OFFSET_DATA header (L1805-1818); `dataLength` bytes of data follow. */
export function writeOffsetDataHeader(
  b: Uint8Array,
  p: number,
  flags: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  dataLength: number,
): void {
  assert(dataLength >= 1, "an OFFSET_DATA chunk carries at least one byte (L1806)");
  writeChunkHeader(b, p, flags, REPLY_TYPE_OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeU64(b, p + CHUNK_HEADER_BYTES, offset);
}

/** NBD_REPLY_TYPE_OFFSET_HOLE chunk (L1820-1835): length 12, u64 offset, u32 non-zero hole size. */
export function writeOffsetHoleChunk(
  b: Uint8Array,
  p: number,
  flags: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  holeLength: number,
): void {
  assert(holeLength >= 1 && holeLength <= 0xffffffff, "hole size is a non-zero u32");
  writeChunkHeader(b, p, flags, REPLY_TYPE_OFFSET_HOLE, cookieHi, cookieLo, 12);
  writeU64(b, p + CHUNK_HEADER_BYTES, offset);
  writeU32(b, p + CHUNK_HEADER_BYTES + 8, holeLength);
}

/** NBD_REPLY_TYPE_ERROR chunk (L1897-1913), always final: u32 error, u16 message length, message. */
export function writeErrorChunk(
  b: Uint8Array,
  p: number,
  cookieHi: number,
  cookieLo: number,
  error: number,
  message: Uint8Array,
): void {
  assert(error !== 0, "an error chunk carries a non-zero error");
  assert(message.length <= ERROR_MESSAGE_BYTES_MAX, "error message fits the limit");
  writeChunkHeader(b, p, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookieHi, cookieLo, 6 + message.length);
  writeU32(b, p + CHUNK_HEADER_BYTES, error);
  writeU16(b, p + CHUNK_HEADER_BYTES + 4, message.length);
  b.set(message, p + ERROR_CHUNK_HEADER_BYTES);
}

/** Start of an NBD_REPLY_TYPE_BLOCK_STATUS chunk (L1837-1880); 8-byte extents follow. */
export function writeBlockStatusHeader(
  b: Uint8Array,
  p: number,
  flags: number,
  cookieHi: number,
  cookieLo: number,
  contextId: number,
  extentCount: number,
): void {
  assert(extentCount >= 1 && extentCount <= BLOCK_STATUS_EXTENTS_MAX, "1..2^20 extents per chunk");
  writeChunkHeader(b, p, flags, REPLY_TYPE_BLOCK_STATUS, cookieHi, cookieLo, 4 + 8 * extentCount);
  writeU32(b, p + CHUNK_HEADER_BYTES, contextId);
}

/** Cuts a message to ERROR_MESSAGE_BYTES_MAX bytes without splitting a UTF-8 sequence. */
export function encodeErrorMessage(message: string): Uint8Array {
  const bytes = utf8Encoder.encode(message);
  if (bytes.length <= ERROR_MESSAGE_BYTES_MAX) return bytes;
  let end = ERROR_MESSAGE_BYTES_MAX;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
