/**
 * Fixed-newstyle negotiation (proto.md §Newstyle negotiation L115, §Fixed newstyle L177): the
 * greeting, the client flags, and option haggling until NBD_OPT_GO / NBD_OPT_EXPORT_NAME enters
 * transmission or the client aborts.
 *
 * Policy: every option the server does not understand gets NBD_REP_ERR_UNSUP and haggling goes on
 * (L2420-2422). The only hard disconnects are the ones the protocol mandates or permits: bad client
 * flags (L1087-1089), a lost option framing (bad IHAVEOPT magic), NBD_OPT_EXPORT_NAME that cannot
 * be satisfied (L1171-1174), and denial of service: an option longer than OPTION_LENGTH_MAX or more
 * than OPTION_COUNT_MAX options, plus OPTIONS_PER_LISTED_EXPORT per export listed (L270-273). TLS is not offered: STARTTLS gets NBD_REP_ERR_POLICY,
 * which NOTLS mode allows (L558-565).
 */
import { assert } from "../../engine/util/assert.ts";
import type { ExportHandle, ExportInfo, NbdBackend } from "./backend.ts";
import type { OutputQueue } from "./output-queue.ts";
import {
  CLIENT_FLAGS_BYTES,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeString,
  encodeErrorMessage,
  encodeUtf8,
  EXPORT_NAME_PADDING_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  GREETING_BYTES,
  INFO_BLOCK_SIZE,
  INFO_BLOCK_SIZE_BYTES,
  INFO_DESCRIPTION,
  INFO_EXPORT_BYTES,
  INFO_NAME,
  META_CONTEXT_BASE_ALLOCATION,
  META_CONTEXT_ID_ALLOCATION,
  META_NAMESPACE_BASE,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  OPTION_COUNT_MAX,
  OPTIONS_PER_LISTED_EXPORT,
  OPTION_HEADER_BYTES,
  OPTION_LENGTH_MAX,
  OPTION_REPLY_HEADER_BYTES,
  type OptionHeader,
  readOptionHeader,
  readU32,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_POLICY,
  REP_ERR_SHUTDOWN,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
  TFLAG_CAN_MULTI_CONN,
  TFLAG_HAS_FLAGS,
  TFLAG_READ_ONLY,
  TFLAG_SEND_DF,
  TFLAG_SEND_FLUSH,
  TFLAG_SEND_FUA,
  TFLAG_SEND_TRIM,
  TFLAG_SEND_WRITE_ZEROES,
  writeGreeting,
  writeInfoBlockSize,
  writeInfoExport,
  writeOptionReplyHeader,
  writeU16,
  writeU32,
  writeU64,
} from "./protocol.ts";

/** What the negotiation hands to the transmission phase. */
export interface Session {
  handle: ExportHandle;
  /** Transmission flags exactly as sent to the client. */
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Context id of base:allocation when it was selected for this export, else 0. */
  allocationContextId: number;
}

/** The connection around the handshake. */
export interface HandshakeHost {
  readonly backend: NbdBackend;
  readonly out: OutputQueue;
  readonly multiConn: boolean;
  isShuttingDown(): boolean;
  log(line: string): void;
  /** Hard disconnect: drop the connection now. */
  hangUp(reason: string): void;
  /** Soft end after NBD_OPT_ABORT: close once the ACK has been written. */
  endAfterWrite(): void;
  enterTransmission(session: Session): void;
}

const enum State {
  ClientFlags,
  Options,
  Done,
}

/** Handshake flags we send: fixed newstyle, and we can leave out the 124 zero bytes. */
const HANDSHAKE_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;
const CLIENT_FLAGS_KNOWN = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

export class Handshake {
  private state = State.ClientFlags;
  private noZeroes = false;
  private structuredReplies = false;
  /** The last NBD_OPT_SET_META_CONTEXT result: export it named and whether base:allocation was chosen. */
  private metaSelection: { exportName: string; allocation: boolean } | null = null;
  private optionCount = 0;
  private optionCountMax = OPTION_COUNT_MAX;
  private readonly header: OptionHeader = { magicOk: false, option: 0, length: 0 };

  constructor(private readonly host: HandshakeHost) {}

  get finished(): boolean {
    return this.state === State.Done;
  }

  /** Sends the greeting (L127-131). */
  start(): void {
    const out = this.host.out;
    out.reserve(GREETING_BYTES);
    writeGreeting(out.reserved, out.reservedStart, HANDSHAKE_FLAGS);
    out.commit();
  }

  /**
   * Consumes complete messages from buf[pos, end) and returns the position after the last one.
   * Stops early when it has finished (transmission entered, aborted or hung up): the rest belongs
   * to the next phase or to nobody.
   */
  parse(buf: Uint8Array, pos: number, end: number): number {
    while (this.state !== State.Done) {
      if (this.state === State.ClientFlags) {
        if (end - pos < CLIENT_FLAGS_BYTES) return pos;
        const flags = readU32(buf, pos);
        pos += CLIENT_FLAGS_BYTES;
        if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
          // L1087-1089: unknown client flags (NO_ZEROES is always advertised, so it is never unexpected).
          this.hangUp(`client flags 0x${flags.toString(16)} have unknown bits`);
          return end;
        }
        // A client without C_FIXED_NEWSTYLE still gets fixed-newstyle replies (L1070-1073 allow it).
        this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
        this.state = State.Options;
        continue;
      }
      if (end - pos < OPTION_HEADER_BYTES) return pos;
      const header = this.header;
      readOptionHeader(buf, pos, header);
      if (!header.magicOk) {
        // The option framing is lost; resynchronising would mean guessing.
        this.hangUp("option header without IHAVEOPT magic");
        return end;
      }
      if (header.length > OPTION_LENGTH_MAX) {
        this.hangUp(`option ${header.option} with ${header.length} data bytes exceeds ${OPTION_LENGTH_MAX}`);
        return end;
      }
      if (end - pos < OPTION_HEADER_BYTES + header.length) return pos;
      const data = buf.subarray(pos + OPTION_HEADER_BYTES, pos + OPTION_HEADER_BYTES + header.length);
      pos += OPTION_HEADER_BYTES + header.length;
      this.optionCount++;
      if (this.optionCount > this.optionCountMax) {
        this.hangUp(`more than ${this.optionCountMax} options`);
        return end;
      }
      this.handleOption(header.option, data);
    }
    return pos;
  }

  private handleOption(option: number, data: Uint8Array): void {
    if (this.host.isShuttingDown() && option !== OPT_ABORT) {
      // L274-276. NBD_OPT_EXPORT_NAME cannot carry an error, so it ends the session instead.
      if (option === OPT_EXPORT_NAME) this.hangUp("NBD_OPT_EXPORT_NAME while shutting down");
      else this.replyError(option, REP_ERR_SHUTDOWN, "server is shutting down");
      return;
    }
    switch (option) {
      case OPT_EXPORT_NAME:
        return this.exportName(data);
      case OPT_ABORT:
        // L1192-1207: ACK whatever the payload, then the client closes; close ourselves once it is written.
        this.replyAck(option);
        this.state = State.Done;
        this.host.endAfterWrite();
        return;
      case OPT_LIST:
        return this.list(data);
      case OPT_STARTTLS:
        if (data.length !== 0) return this.replyError(option, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
        return this.replyError(option, REP_ERR_POLICY, "TLS is not offered by this server");
      case OPT_INFO:
      case OPT_GO:
        return this.infoOrGo(option, data);
      case OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          return this.replyError(option, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        }
        if (this.structuredReplies) {
          // L212-215: a repeated state-changing option may be refused; the negotiated state stays.
          return this.replyError(option, REP_ERR_INVALID, "structured replies are already negotiated");
        }
        this.structuredReplies = true;
        return this.replyAck(option);
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return this.replyError(option, REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  /** NBD_OPT_EXPORT_NAME (L1161-1190): no error reply exists, so any failure ends the session. */
  private exportName(data: Uint8Array): void {
    const name = decodeString(data, 0, data.length);
    if (name === null) return this.hangUp("NBD_OPT_EXPORT_NAME with an invalid name");
    const handle = this.open(name);
    if (handle === null) return this.hangUp(`NBD_OPT_EXPORT_NAME for unknown export "${name}"`);
    const info = handle.info;
    const tflags = this.transmissionFlags(info);
    const out = this.host.out;
    const length = EXPORT_NAME_REPLY_BYTES + (this.noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES);
    out.reserve(length);
    const b = out.reserved;
    const p = out.reservedStart;
    writeU64(b, p, info.sizeBytes);
    writeU16(b, p + 8, tflags);
    b.fill(0, p + EXPORT_NAME_REPLY_BYTES, p + length);
    out.commit();
    this.enter(handle, tflags, info);
  }

  /** NBD_OPT_LIST (L1209-1219): one NBD_REP_SERVER per export, then ACK. */
  private list(data: Uint8Array): void {
    const option = OPT_LIST;
    if (data.length !== 0) return this.replyError(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    let exports: ExportInfo[];
    try {
      exports = this.host.backend.listExports();
    } catch (e) {
      this.host.log(`listExports failed: ${String(e)}`);
      return this.replyError(option, REP_ERR_POLICY, "the export list is not available");
    }
    // Listing again does not add more: the allowance follows the exports, not the lists.
    this.optionCountMax = Math.max(this.optionCountMax, OPTION_COUNT_MAX + OPTIONS_PER_LISTED_EXPORT * exports.length);
    for (const info of exports) {
      const name = encodeUtf8(info.name);
      const description = info.description ? encodeUtf8(info.description) : EMPTY;
      const payload = new Uint8Array(4 + name.length + description.length);
      writeU32(payload, 0, name.length);
      payload.set(name, 4);
      payload.set(description, 4 + name.length);
      this.reply(option, REP_SERVER, payload);
    }
    this.replyAck(option);
  }

  /** NBD_OPT_INFO / NBD_OPT_GO (L1245-1358). */
  private infoOrGo(option: number, data: Uint8Array): void {
    const request = decodeInfoRequest(data);
    if (request === null) return this.replyError(option, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO data");
    let info = this.findExport(request.name);
    if (info === null) return this.replyError(option, REP_ERR_UNKNOWN, `no export named "${request.name}"`);
    let handle: ExportHandle | null = null;
    if (option === OPT_GO) {
      handle = this.open(request.name);
      if (handle === null) return this.replyError(option, REP_ERR_UNKNOWN, `cannot open export "${request.name}"`);
      info = handle.info;
    }
    const tflags = this.transmissionFlags(info);
    // NBD_INFO_EXPORT is always sent (L1298-1301); the others only when asked for. Unknown codes are ignored (L1277).
    const exportPayload = new Uint8Array(INFO_EXPORT_BYTES);
    writeInfoExport(exportPayload, 0, info.sizeBytes, tflags);
    this.reply(option, REP_INFO, exportPayload);
    const requested = new Set(request.infoCodes);
    if (requested.has(INFO_NAME)) this.reply(option, REP_INFO, infoString(INFO_NAME, info.name));
    if (requested.has(INFO_DESCRIPTION) && info.description) {
      this.reply(option, REP_INFO, infoString(INFO_DESCRIPTION, info.description));
    }
    if (requested.has(INFO_BLOCK_SIZE)) {
      const blockSize = new Uint8Array(INFO_BLOCK_SIZE_BYTES);
      writeInfoBlockSize(blockSize, 0);
      this.reply(option, REP_INFO, blockSize);
    }
    this.replyAck(option);
    // GO + ACK enters transmission at once, with no padding (L1349-1356).
    if (handle !== null) this.enter(handle, tflags, info);
  }

  /** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT (L1391-1512). */
  private metaContext(option: number, data: Uint8Array): void {
    const isSet = option === OPT_SET_META_CONTEXT;
    // SET replaces the previous selection even when it fails (L1474-1477).
    if (isSet) this.metaSelection = null;
    if (!this.structuredReplies) {
      // L1396-1398, L1480-1482.
      return this.replyError(option, REP_ERR_INVALID, "negotiate structured replies first");
    }
    const request = decodeMetaContextRequest(data);
    if (request === "invalid") return this.replyError(option, REP_ERR_INVALID, "malformed metadata context data");
    if (request === "too-big") return this.replyError(option, REP_ERR_TOO_BIG, "too many metadata queries");
    const info = this.findExport(request.exportName);
    if (info === null) return this.replyError(option, REP_ERR_UNKNOWN, `no export named "${request.exportName}"`);
    let allocation: boolean;
    if (isSet) {
      // Only the exact name selects; "base:" is ignored in SET (L989) and unknown names are ignored (L1425).
      allocation = request.queries.includes(META_CONTEXT_BASE_ALLOCATION);
    } else {
      // No query lists everything; "base:" is the wildcard of our only namespace (L1437, L989-993).
      allocation =
        request.queries.length === 0 ||
        request.queries.some((q) => q === META_NAMESPACE_BASE || q === META_CONTEXT_BASE_ALLOCATION);
    }
    if (allocation) {
      const name = encodeUtf8(META_CONTEXT_BASE_ALLOCATION);
      const payload = new Uint8Array(4 + name.length);
      // LIST ids are reserved and SHOULD be 0 (L1469).
      writeU32(payload, 0, isSet ? META_CONTEXT_ID_ALLOCATION : 0);
      payload.set(name, 4);
      this.reply(option, REP_META_CONTEXT, payload);
    }
    this.replyAck(option);
    if (isSet) this.metaSelection = { exportName: info.name, allocation };
  }

  /** Transmission flags (L1091-1157): only features we implement; never RESIZE, CACHE, FAST_ZERO or bit 12. */
  private transmissionFlags(info: ExportInfo): number {
    let flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
    if (info.readOnly) flags |= TFLAG_READ_ONLY;
    else flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    // DF only makes sense, and is only allowed, with structured replies (L1120-1125).
    if (this.structuredReplies) flags |= TFLAG_SEND_DF;
    if (this.host.multiConn) flags |= TFLAG_CAN_MULTI_CONN;
    return flags;
  }

  private enter(handle: ExportHandle, tflags: number, info: ExportInfo): void {
    const selection = this.metaSelection;
    // BLOCK_STATUS is only valid if the last SET named the export being entered (L1484-1489).
    const allocationContextId =
      selection !== null && selection.allocation && selection.exportName === info.name ? META_CONTEXT_ID_ALLOCATION : 0;
    this.state = State.Done;
    this.host.enterTransmission({
      handle,
      transmissionFlags: tflags,
      structuredReplies: this.structuredReplies,
      allocationContextId,
    });
  }

  private findExport(name: string): ExportInfo | null {
    let exports: ExportInfo[];
    try {
      exports = this.host.backend.listExports();
    } catch (e) {
      this.host.log(`listExports failed: ${String(e)}`);
      return null;
    }
    if (name === "") return exports[0] ?? null;
    return exports.find((e) => e.name === name) ?? null;
  }

  private open(name: string): ExportHandle | null {
    try {
      const handle = this.host.backend.openExport(name);
      if (handle !== null) {
        assert(Number.isSafeInteger(handle.info.sizeBytes) && handle.info.sizeBytes >= 0, "export size is a safe integer");
      }
      return handle;
    } catch (e) {
      this.host.log(`openExport("${name}") failed: ${String(e)}`);
      return null;
    }
  }

  private hangUp(reason: string): void {
    this.state = State.Done;
    this.host.hangUp(reason);
  }

  private replyAck(option: number): void {
    this.reply(option, REP_ACK, EMPTY);
  }

  /** Error replies carry a message for humans (L1646-1648). */
  private replyError(option: number, type: number, message: string): void {
    this.reply(option, type, encodeErrorMessage(message));
  }

  private reply(option: number, type: number, payload: Uint8Array): void {
    const out = this.host.out;
    out.reserve(OPTION_REPLY_HEADER_BYTES + payload.length);
    writeOptionReplyHeader(out.reserved, out.reservedStart, option, type, payload.length);
    out.reserved.set(payload, out.reservedStart + OPTION_REPLY_HEADER_BYTES);
    out.commit();
  }
}

const EMPTY = new Uint8Array(0);

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION payload: u16 type, then the string (L1592-1613). */
function infoString(type: number, value: string): Uint8Array {
  const bytes = encodeUtf8(value);
  const payload = new Uint8Array(2 + bytes.length);
  writeU16(payload, 0, type);
  payload.set(bytes, 2);
  return payload;
}
