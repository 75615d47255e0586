/**
 * The transmission phase (proto.md §Transmission L280, §Request types L1944): request framing,
 * validation at the edge, dispatch to the export handle, and simple or structured replies.
 *
 * Requests are pipelined: each one is handed to the backend as soon as its header (and, for
 * WRITE, its payload) has arrived, and replied to when the backend is done, so replies may go out
 * of order (L314). The ordering rules still hold because the backend is asked to make a write
 * durable before answering FUA (L333-337), and FLUSH calls backend.flush(), which covers every
 * write that has completed, so every write already replied to (L319-326).
 *
 * validate() is the only place that turns a bad request into an error; the backend sees only
 * requests inside the export, with valid flags, non-zero lengths, and writes to writable exports.
 * A request header with a bad magic loses the framing for good, so it ends the connection.
 */
import { assert } from "../../engine/util/assert.ts";
import { type BlockExtent, type ExportHandle, NbdError } from "./backend.ts";
import type { Session } from "./handshake.ts";
import type { OutputQueue } from "./output-queue.ts";
import {
  BLOCK_STATUS_EXTENT_BYTES,
  BLOCK_STATUS_EXTENTS_MAX,
  BLOCK_STATUS_HEADER_BYTES,
  CHUNK_HEADER_BYTES,
  CMD_BLOCK_STATUS,
  CMD_DISC,
  CMD_FLAG_DF,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  encodeErrorMessage,
  ERRNO,
  ERROR_CHUNK_HEADER_BYTES,
  HOLE_CHUNK_BYTES_MIN,
  IN_FLIGHT_BYTES_MAX,
  OFFSET_DATA_HEADER_BYTES,
  OFFSET_HOLE_CHUNK_BYTES,
  OUTPUT_PENDING_BYTES_MAX,
  PAYLOAD_BYTES_MAX,
  readRequestHeader,
  REPLY_FLAG_DONE,
  REPLY_TYPE_NONE,
  REQUEST_HEADER_BYTES,
  type RequestHeader,
  REQUESTS_IN_FLIGHT_MAX,
  SIMPLE_REPLY_BYTES,
  STATE_HOLE,
  STATE_ZERO,
  TFLAG_READ_ONLY,
  TFLAG_SEND_DF,
  TFLAG_SEND_TRIM,
  TFLAG_SEND_WRITE_ZEROES,
  u64ToNumber,
  writeBlockStatusHeader,
  writeChunkHeader,
  writeErrorChunk,
  writeOffsetDataHeader,
  writeOffsetHoleChunk,
  writeSimpleReply,
  writeU32,
} from "./protocol.ts";

/** The connection around the transmission phase. */
export interface TransmissionHost {
  readonly out: OutputQueue;
  isShuttingDown(): boolean;
  log(line: string): void;
  /** Hard disconnect (L447-448). */
  hangUp(reason: string): void;
  /** A request that went asynchronous has completed: input may resume, DISC may finish. */
  requestDone(): void;
}

const enum State {
  Header,
  /** Receiving a WRITE payload into payloadBuffer. */
  Payload,
  /** Skipping the payload of a rejected WRITE, then replying with pendingError. */
  Discard,
  /** NBD_CMD_DISC received: nothing more is read (L2076-2077). */
  Disconnected,
}

export class Transmission {
  /** Requests handed to the backend that have not completed yet. */
  inFlight = 0;
  /** Payload bytes held by in-flight reads and writes. */
  private inFlightBytes = 0;
  private state = State.Header;
  private readonly header: RequestHeader = {
    magicOk: false,
    flags: 0,
    type: 0,
    cookieHi: 0,
    cookieLo: 0,
    offsetHi: 0,
    offsetLo: 0,
    length: 0,
  };
  // The WRITE whose payload is being received or skipped.
  private pendingFlags = 0;
  private pendingCookieHi = 0;
  private pendingCookieLo = 0;
  private pendingOffset = 0;
  private pendingRemaining = 0;
  private pendingError = 0;
  private pendingMessage = "";
  private payloadBuffer: Uint8Array | null = null;
  private payloadFilled = 0;
  /** Why validate() rejected the last request (for the error chunk's message). */
  private rejectMessage = "";
  /** Scratch for block status extents: (length, flags) pairs. */
  private extentScratch = new Uint32Array(64);
  private handleClosed = false;

  private readonly handle: ExportHandle;
  private readonly sizeBytes: number;
  private readonly tflags: number;
  private readonly structured: boolean;
  private readonly allocationContextId: number;

  constructor(
    private readonly host: TransmissionHost,
    session: Session,
  ) {
    this.handle = session.handle;
    this.sizeBytes = session.handle.info.sizeBytes;
    this.tflags = session.transmissionFlags;
    this.structured = session.structuredReplies;
    this.allocationContextId = session.allocationContextId;
    assert(Number.isSafeInteger(this.sizeBytes) && this.sizeBytes >= 0, "export size is a safe integer");
    if ((this.tflags & TFLAG_SEND_DF) !== 0) assert(this.structured, "DF is only advertised with structured replies");
  }

  /** NBD_CMD_DISC has been received; the connection closes once nothing is in flight. */
  get disconnecting(): boolean {
    return this.state === State.Disconnected;
  }

  /** Whether another request may be started now (per-connection limits on queued work). */
  mayStartRequest(): boolean {
    return (
      this.inFlight < REQUESTS_IN_FLIGHT_MAX &&
      this.inFlightBytes < IN_FLIGHT_BYTES_MAX &&
      this.host.out.pendingBytes < OUTPUT_PENDING_BYTES_MAX
    );
  }

  /** Closes the export handle once nothing is in flight; returns whether it is closed. */
  closeHandleWhenIdle(): boolean {
    if (this.handleClosed) return true;
    if (this.inFlight > 0) return false;
    this.handleClosed = true;
    try {
      this.handle.close();
    } catch (e) {
      this.host.log(`export handle close failed: ${String(e)}`);
    }
    return true;
  }

  /**
   * Consumes requests from buf[pos, end) and returns the position after what it took. `owned`
   * says buf is not reused by the caller, so WRITE payloads may be passed on as views of it.
   * Stops before a request header when mayStartRequest() says no; the caller keeps the rest.
   */
  parse(buf: Uint8Array, pos: number, end: number, owned: boolean): number {
    while (pos < end) {
      const state = this.state;
      if (state === State.Payload || state === State.Discard) {
        const take = Math.min(this.pendingRemaining, end - pos);
        if (state === State.Payload) {
          this.payloadBuffer!.set(buf.subarray(pos, pos + take), this.payloadFilled);
          this.payloadFilled += take;
        }
        pos += take;
        this.pendingRemaining -= take;
        if (this.pendingRemaining > 0) return pos;
        this.state = State.Header;
        if (state === State.Payload) {
          const payload = this.payloadBuffer!;
          this.payloadBuffer = null;
          this.write(this.pendingFlags, this.pendingCookieHi, this.pendingCookieLo, this.pendingOffset, payload);
        } else {
          this.replyError(this.pendingCookieHi, this.pendingCookieLo, this.pendingError, this.pendingMessage);
        }
        continue;
      }
      if (state === State.Disconnected) return end;
      if (end - pos < REQUEST_HEADER_BYTES || !this.mayStartRequest()) return pos;

      const h = this.header;
      readRequestHeader(buf, pos, h);
      pos += REQUEST_HEADER_BYTES;
      if (!h.magicOk) {
        this.state = State.Disconnected;
        this.host.hangUp("request without NBD_REQUEST_MAGIC");
        return end;
      }
      const offset = u64ToNumber(h.offsetHi, h.offsetLo);
      const length = h.length;
      if (h.type === CMD_DISC) {
        // No reply; outstanding requests finish, then the connection closes (L2072-2082).
        this.state = State.Disconnected;
        return end;
      }
      let error = this.validate(h.type, h.flags, offset, length);
      if (error === 0 && this.host.isShuttingDown()) {
        error = ERRNO.ESHUTDOWN;
        this.rejectMessage = "server is shutting down";
      }
      if (h.type === CMD_WRITE) {
        // The payload is always consumed, even when the write is refused (L2065-2067).
        if (error !== 0 || length === 0) {
          this.pendingCookieHi = h.cookieHi;
          this.pendingCookieLo = h.cookieLo;
          this.pendingError = error;
          this.pendingMessage = this.rejectMessage;
          if (length === 0) {
            if (error === 0) this.replyOk(h.cookieHi, h.cookieLo);
            else this.replyError(h.cookieHi, h.cookieLo, error, this.rejectMessage);
          } else {
            this.state = State.Discard;
            this.pendingRemaining = length;
          }
          continue;
        }
        if (owned && end - pos >= length) {
          // The whole payload is in a buffer nobody reuses: no copy.
          this.write(h.flags, h.cookieHi, h.cookieLo, offset, buf.subarray(pos, pos + length));
          pos += length;
          continue;
        }
        this.pendingFlags = h.flags;
        this.pendingCookieHi = h.cookieHi;
        this.pendingCookieLo = h.cookieLo;
        this.pendingOffset = offset;
        this.pendingRemaining = length;
        this.payloadBuffer = Buffer.allocUnsafe(length); // filled from the socket before use
        this.payloadFilled = 0;
        this.state = State.Payload;
        continue;
      }
      if (error !== 0) {
        this.replyError(h.cookieHi, h.cookieLo, error, this.rejectMessage);
        continue;
      }
      this.dispatch(h.type, h.flags, h.cookieHi, h.cookieLo, offset, length);
    }
    return pos;
  }

  /**
   * Request validation at the edge: returns 0 or the NBD error for the request (L2328-2351), and
   * leaves a message in rejectMessage. `offset` is Infinity when it does not fit in 2^53.
   */
  private validate(type: number, flags: number, offset: number, length: number): number {
    let allowed = CMD_FLAG_FUA; // FUA is valid on every command once SEND_FUA is advertised (L1722-1726).
    let writes = false;
    switch (type) {
      case CMD_READ:
        if ((this.tflags & TFLAG_SEND_DF) !== 0) allowed |= CMD_FLAG_DF;
        break;
      case CMD_WRITE:
        writes = true;
        break;
      case CMD_FLUSH:
        break;
      case CMD_TRIM:
        writes = true;
        break;
      case CMD_WRITE_ZEROES:
        // FAST_ZERO is not advertised, so it is an invalid flag here (L2191-2193).
        allowed |= CMD_FLAG_NO_HOLE;
        writes = true;
        break;
      case CMD_BLOCK_STATUS:
        allowed |= CMD_FLAG_REQ_ONE;
        break;
      default:
        // Unknown commands, and CACHE (5) which we do not advertise (L2346).
        return this.reject(ERRNO.EINVAL, `unsupported command ${type}`);
    }
    if ((flags & ~allowed) !== 0) return this.reject(ERRNO.EINVAL, `invalid flags 0x${flags.toString(16)} for command ${type}`);
    if (writes && (this.tflags & TFLAG_READ_ONLY) !== 0) return this.reject(ERRNO.EPERM, "the export is read-only");
    if (type === CMD_TRIM && (this.tflags & TFLAG_SEND_TRIM) === 0) return this.reject(ERRNO.EINVAL, "TRIM is not enabled");
    if (type === CMD_WRITE_ZEROES && (this.tflags & TFLAG_SEND_WRITE_ZEROES) === 0) {
      return this.reject(ERRNO.EINVAL, "WRITE_ZEROES is not enabled");
    }
    if (type === CMD_FLUSH) {
      // offset and length are reserved and must be zero (L2092-2093).
      if (offset !== 0 || length !== 0) return this.reject(ERRNO.EINVAL, "FLUSH with non-zero offset or length");
      return 0;
    }
    if (type === CMD_BLOCK_STATUS) {
      if (this.allocationContextId === 0) return this.reject(ERRNO.EINVAL, "no metadata context was selected (L939-940)");
      if (length === 0) return this.reject(ERRNO.EINVAL, "BLOCK_STATUS needs a non-zero length");
    }
    // Subtraction, not addition: offset + length must never wrap (a u64 offset near 2^64 is Infinity here).
    if (offset > this.sizeBytes || length > this.sizeBytes - offset) {
      const error = type === CMD_WRITE || type === CMD_WRITE_ZEROES ? ERRNO.ENOSPC : ERRNO.EINVAL;
      return this.reject(error, "request beyond the end of the export");
    }
    if (length > PAYLOAD_BYTES_MAX && (type === CMD_READ || type === CMD_WRITE)) {
      // A DF read that is too big is the documented EOVERFLOW case (L2050-2052, L2337-2340).
      const error = (flags & CMD_FLAG_DF) !== 0 ? ERRNO.EOVERFLOW : ERRNO.EINVAL;
      return this.reject(error, `payload of ${length} bytes exceeds ${PAYLOAD_BYTES_MAX}`);
    }
    return 0;
  }

  private reject(error: number, message: string): number {
    this.rejectMessage = message;
    return error;
  }

  private dispatch(type: number, flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    if (type === CMD_READ) return this.read(flags, cookieHi, cookieLo, offset, length);
    if (type === CMD_BLOCK_STATUS) return this.blockStatus(flags, cookieHi, cookieLo, offset, length);
    if (length === 0 && type !== CMD_FLUSH) return this.replyOk(cookieHi, cookieLo); // nothing to trim or zero
    const fua = (flags & CMD_FLAG_FUA) !== 0;
    let result: void | Promise<void>;
    try {
      switch (type) {
        case CMD_FLUSH:
          result = this.handle.flush();
          break;
        case CMD_TRIM:
          result = this.handle.trim(offset, length, fua);
          break;
        case CMD_WRITE_ZEROES:
          result = this.handle.writeZeroes(offset, length, fua, (flags & CMD_FLAG_NO_HOLE) !== 0);
          break;
        default:
          assert(false, `validate() lets through only known commands, got ${type}`);
      }
    } catch (e) {
      return this.replyFailure(COMMAND_NAMES[type]!, cookieHi, cookieLo, e);
    }
    if (result === undefined) return this.replyOk(cookieHi, cookieLo);
    this.awaitVoid(COMMAND_NAMES[type]!, cookieHi, cookieLo, 0, result);
  }

  // ------------------------------------------------------------------------------------------
  // WRITE, FLUSH, TRIM, WRITE_ZEROES: no reply payload

  private write(flags: number, cookieHi: number, cookieLo: number, offset: number, data: Uint8Array): void {
    assert(data.length > 0, "zero-length writes are answered before dispatch");
    let result: void | Promise<void>;
    try {
      result = this.handle.write(offset, data, (flags & CMD_FLAG_FUA) !== 0);
    } catch (e) {
      return this.replyFailure("write", cookieHi, cookieLo, e);
    }
    if (result === undefined) return this.replyOk(cookieHi, cookieLo);
    this.awaitVoid("write", cookieHi, cookieLo, data.length, result);
  }

  private awaitVoid(what: string, cookieHi: number, cookieLo: number, bytes: number, pending: Promise<void>): void {
    this.begin(bytes);
    pending.then(
      () => {
        this.replyOk(cookieHi, cookieLo);
        this.end(bytes);
      },
      (e: unknown) => {
        this.replyFailure(what, cookieHi, cookieLo, e);
        this.end(bytes);
      },
    );
  }

  // ------------------------------------------------------------------------------------------
  // READ (L1954-2054)

  private read(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    if (length === 0) {
      // Nothing to send; a structured reply still needs its final chunk.
      if (this.structured) return this.replyNone(cookieHi, cookieLo);
      return this.replyOk(cookieHi, cookieLo);
    }
    // The data goes straight into the reply buffer, behind room for the header.
    const headerBytes = this.structured ? OFFSET_DATA_HEADER_BYTES : SIMPLE_REPLY_BYTES;
    const out = this.host.out;
    out.reserve(headerBytes + length);
    const buffer = out.reserved;
    const start = out.reservedStart;
    const into = buffer.subarray(start + headerBytes, start + headerBytes + length);
    let result: void | Uint32Array | Promise<void | Uint32Array>;
    try {
      result = this.handle.read(offset, into);
    } catch (e) {
      out.cancel();
      return this.replyFailure("read", cookieHi, cookieLo, e);
    }
    if (result === undefined || result instanceof Uint32Array) {
      const separate = this.finishRead(flags, cookieHi, cookieLo, offset, buffer, start, headerBytes, length, result);
      if (separate === null) return out.commit();
      out.cancel();
      if (separate === BAD_HOLES) return this.replyBadHoles(cookieHi, cookieLo);
      return out.commitBuffer(separate);
    }
    const region = out.detach();
    this.begin(length);
    result.then(
      (holes) => {
        const separate = this.finishRead(flags, cookieHi, cookieLo, offset, buffer, start, headerBytes, length, holes);
        if (separate === null) {
          out.commitDetached(region);
        } else {
          out.dropDetached(region);
          if (separate === BAD_HOLES) this.replyBadHoles(cookieHi, cookieLo);
          else out.commitBuffer(separate);
        }
        this.end(length);
      },
      (e: unknown) => {
        out.dropDetached(region);
        this.replyFailure("read", cookieHi, cookieLo, e);
        this.end(length);
      },
    );
  }

  /**
   * Completes a read whose data sits in buffer after `headerBytes` of room. Returns null when the
   * reply is ready in place, a separately built reply (structured, with hole chunks), or BAD_HOLES
   * when the backend's hole list is unusable (the caller then sends an error instead).
   */
  private finishRead(
    flags: number,
    cookieHi: number,
    cookieLo: number,
    offset: number,
    buffer: Uint8Array,
    start: number,
    headerBytes: number,
    length: number,
    holes: void | Uint32Array,
  ): Uint8Array | null {
    const dataStart = start + headerBytes;
    let holeChunks = 0;
    if (holes !== undefined && holes.length > 0) {
      if (!validHoles(holes, length)) return BAD_HOLES;
      // Holes we do not send as hole chunks must read as zeroes: the backend need not fill them.
      const chunkable = this.structured && (flags & CMD_FLAG_DF) === 0;
      for (let i = 0; i < holes.length; i += 2) {
        const s = holes[i]!;
        const l = holes[i + 1]!;
        if (chunkable && l >= HOLE_CHUNK_BYTES_MIN) holeChunks++;
        else buffer.fill(0, dataStart + s, dataStart + s + l);
      }
    }
    if (!this.structured) {
      writeSimpleReply(buffer, start, 0, cookieHi, cookieLo);
      return null;
    }
    if (holeChunks === 0) {
      // One data chunk, final: all data is in hand, so no error can follow (L2005-2010).
      writeOffsetDataHeader(buffer, start, REPLY_FLAG_DONE, cookieHi, cookieLo, offset, length);
      return null;
    }
    return this.buildSparseRead(cookieHi, cookieLo, offset, buffer, dataStart, length, holes as Uint32Array);
  }

  /** A structured read reply of OFFSET_DATA and OFFSET_HOLE chunks covering the range in order (L1983-2004). */
  private buildSparseRead(
    cookieHi: number,
    cookieLo: number,
    offset: number,
    data: Uint8Array,
    dataStart: number,
    length: number,
    holes: Uint32Array,
  ): Uint8Array {
    // Pass 1: size. Pass 2: write. Small holes stay inside data chunks (already zero-filled).
    let size = 0;
    let chunks = 0;
    forEachSegment(holes, length, (_s, l, isHole) => {
      size += isHole ? OFFSET_HOLE_CHUNK_BYTES : OFFSET_DATA_HEADER_BYTES + l;
      chunks++;
    });
    const reply = new Uint8Array(size);
    let p = 0;
    let n = 0;
    forEachSegment(holes, length, (s, l, isHole) => {
      n++;
      const flags = n === chunks ? REPLY_FLAG_DONE : 0;
      if (isHole) {
        writeOffsetHoleChunk(reply, p, flags, cookieHi, cookieLo, offset + s, l);
        p += OFFSET_HOLE_CHUNK_BYTES;
      } else {
        writeOffsetDataHeader(reply, p, flags, cookieHi, cookieLo, offset + s, l);
        reply.set(data.subarray(dataStart + s, dataStart + s + l), p + OFFSET_DATA_HEADER_BYTES);
        p += OFFSET_DATA_HEADER_BYTES + l;
      }
    });
    assert(p === size, "sparse read reply size matches");
    return reply;
  }

  private replyBadHoles(cookieHi: number, cookieLo: number): void {
    this.host.log("backend read returned an invalid hole list");
    this.replyError(cookieHi, cookieLo, ERRNO.EIO, "internal error: invalid hole list");
  }

  // ------------------------------------------------------------------------------------------
  // BLOCK_STATUS (L2225-2290)

  private blockStatus(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    let result: BlockExtent[] | Promise<BlockExtent[]>;
    try {
      result = this.handle.blockStatus(offset, length);
    } catch (e) {
      return this.replyFailure("blockStatus", cookieHi, cookieLo, e);
    }
    if (Array.isArray(result)) return this.replyBlockStatus(flags, cookieHi, cookieLo, length, result);
    this.begin(0);
    result.then(
      (extents) => {
        this.replyBlockStatus(flags, cookieHi, cookieLo, length, extents);
        this.end(0);
      },
      (e: unknown) => {
        this.replyFailure("blockStatus", cookieHi, cookieLo, e);
        this.end(0);
      },
    );
  }

  /**
   * One NBD_REPLY_TYPE_BLOCK_STATUS chunk: extents cut at the end of the request, neighbours with
   * equal flags merged, at most 2^20 of them, exactly one with REQ_ONE (L1852-1868).
   */
  private replyBlockStatus(
    flags: number,
    cookieHi: number,
    cookieLo: number,
    length: number,
    extents: BlockExtent[],
  ): void {
    const one = (flags & CMD_FLAG_REQ_ONE) !== 0;
    const limit = one ? 1 : BLOCK_STATUS_EXTENTS_MAX;
    let count = 0;
    let covered = 0;
    let scratch = this.extentScratch;
    for (let i = 0; i < extents.length && covered < length; i++) {
      const e = extents[i]!;
      if (!Number.isSafeInteger(e.length) || e.length < 1) {
        this.host.log(`backend blockStatus returned an extent of length ${e.length}`);
        return this.replyError(cookieHi, cookieLo, ERRNO.EIO, "internal error: invalid extent");
      }
      const state = (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
      const take = Math.min(e.length, length - covered);
      covered += take;
      if (count > 0 && scratch[2 * count - 1] === state) {
        scratch[2 * count - 2]! += take; // stays <= length < 2^32
        continue;
      }
      if (count === limit) break;
      if (2 * count + 2 > scratch.length) {
        const bigger = new Uint32Array(Math.min(scratch.length * 2, 2 * BLOCK_STATUS_EXTENTS_MAX));
        bigger.set(scratch);
        scratch = this.extentScratch = bigger;
      }
      scratch[2 * count] = take;
      scratch[2 * count + 1] = state;
      count++;
    }
    if (count === 0) {
      this.host.log("backend blockStatus returned no extent");
      return this.replyError(cookieHi, cookieLo, ERRNO.EIO, "internal error: no extent");
    }
    const out = this.host.out;
    out.reserve(BLOCK_STATUS_HEADER_BYTES + BLOCK_STATUS_EXTENT_BYTES * count);
    const b = out.reserved;
    let p = out.reservedStart;
    writeBlockStatusHeader(b, p, REPLY_FLAG_DONE, cookieHi, cookieLo, this.allocationContextId, count);
    p += BLOCK_STATUS_HEADER_BYTES;
    for (let i = 0; i < 2 * count; i++, p += 4) writeU32(b, p, scratch[i]!);
    out.commit();
  }

  // ------------------------------------------------------------------------------------------
  // Replies and bookkeeping

  private begin(bytes: number): void {
    this.inFlight++;
    this.inFlightBytes += bytes;
  }

  private end(bytes: number): void {
    assert(this.inFlight > 0, "in-flight requests balance");
    this.inFlight--;
    this.inFlightBytes -= bytes;
    this.host.requestDone();
  }

  private replyOk(cookieHi: number, cookieLo: number): void {
    const out = this.host.out;
    out.reserve(SIMPLE_REPLY_BYTES);
    writeSimpleReply(out.reserved, out.reservedStart, 0, cookieHi, cookieLo);
    out.commit();
  }

  private replyNone(cookieHi: number, cookieLo: number): void {
    const out = this.host.out;
    out.reserve(CHUNK_HEADER_BYTES);
    writeChunkHeader(out.reserved, out.reservedStart, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookieHi, cookieLo, 0);
    out.commit();
  }

  /** With structured replies errors go in an error chunk with a message (L394-400); READ must never get a simple reply. */
  private replyError(cookieHi: number, cookieLo: number, error: number, message: string): void {
    assert(error !== 0, "error replies carry an error");
    const out = this.host.out;
    if (!this.structured) {
      out.reserve(SIMPLE_REPLY_BYTES);
      writeSimpleReply(out.reserved, out.reservedStart, error, cookieHi, cookieLo);
      out.commit();
      return;
    }
    const text = encodeErrorMessage(message);
    out.reserve(ERROR_CHUNK_HEADER_BYTES + text.length);
    writeErrorChunk(out.reserved, out.reservedStart, cookieHi, cookieLo, error, text);
    out.commit();
  }

  /** Maps what a backend threw to a wire error; anything but NbdError is a backend bug: EIO. */
  private replyFailure(what: string, cookieHi: number, cookieLo: number, e: unknown): void {
    if (e instanceof NbdError) {
      // We never advertise FAST_ZERO, so ENOTSUP must not reach the client (L2341-2343).
      const error = e.errno === "ENOTSUP" ? ERRNO.EIO : ERRNO[e.errno];
      return this.replyError(cookieHi, cookieLo, error, `${what}: ${e.message}`);
    }
    this.host.log(`backend ${what} failed: ${e instanceof Error ? e.message : String(e)}`);
    this.replyError(cookieHi, cookieLo, ERRNO.EIO, `${what} failed`);
  }
}

/** Names of the commands, for messages. */
const COMMAND_NAMES = ["read", "write", "disc", "flush", "trim", "cache", "writeZeroes", "blockStatus"];

/** Marker: the backend's hole list is unusable. */
const BAD_HOLES = new Uint8Array(0);

/** Hole pairs must be sorted, non-overlapping, non-empty and inside the read. */
function validHoles(holes: Uint32Array, length: number): boolean {
  if (holes.length % 2 !== 0) return false;
  let previousEnd = 0;
  for (let i = 0; i < holes.length; i += 2) {
    const s = holes[i]!;
    const l = holes[i + 1]!;
    if (l === 0 || s < previousEnd || s + l > length) return false;
    previousEnd = s + l;
  }
  return true;
}

/** Walks [0, length) as alternating data and hole segments; holes below HOLE_CHUNK_BYTES_MIN count as data. */
function forEachSegment(
  holes: Uint32Array,
  length: number,
  visit: (start: number, length: number, isHole: boolean) => void,
): void {
  let dataStart = 0;
  for (let i = 0; i < holes.length; i += 2) {
    const s = holes[i]!;
    const l = holes[i + 1]!;
    if (l < HOLE_CHUNK_BYTES_MIN) continue;
    if (s > dataStart) visit(dataStart, s - dataStart, false);
    visit(s, l, true);
    dataStart = s + l;
  }
  if (length > dataStart) visit(dataStart, length - dataStart, false);
}
