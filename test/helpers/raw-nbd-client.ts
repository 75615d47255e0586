/**
 * A deliberately dumb NBD client over a raw socket (Bun.connect), for handshake details and
 * hostile input. Its constants are transcribed from the spec (../shared/reference/nbd-proto.md)
 * rather than imported from agent/nbd/protocol.ts, so a mistake there cannot hide here.
 *
 * Every read is bounded by a timeout; `closed` resolves when the server drops the connection.
 */
import type { Socket } from "bun";

export const NBD = {
  NBDMAGIC: 0x4e42444d41474943n,
  IHAVEOPT: 0x49484156454f5054n,
  OPTION_REPLY_MAGIC: 0x3e889045565a9n,
  REQUEST_MAGIC: 0x25609513,
  SIMPLE_REPLY_MAGIC: 0x67446698,
  STRUCTURED_REPLY_MAGIC: 0x668e33ef,
  // handshake and client flags
  FLAG_FIXED_NEWSTYLE: 1,
  FLAG_NO_ZEROES: 2,
  FLAG_C_FIXED_NEWSTYLE: 1,
  FLAG_C_NO_ZEROES: 2,
  // options
  OPT_EXPORT_NAME: 1,
  OPT_ABORT: 2,
  OPT_LIST: 3,
  OPT_PEEK_EXPORT: 4,
  OPT_STARTTLS: 5,
  OPT_INFO: 6,
  OPT_GO: 7,
  OPT_STRUCTURED_REPLY: 8,
  OPT_LIST_META_CONTEXT: 9,
  OPT_SET_META_CONTEXT: 10,
  OPT_EXTENDED_HEADERS: 11,
  // option replies
  REP_ACK: 1,
  REP_SERVER: 2,
  REP_INFO: 3,
  REP_META_CONTEXT: 4,
  REP_ERR_UNSUP: 2 ** 31 + 1,
  REP_ERR_POLICY: 2 ** 31 + 2,
  REP_ERR_INVALID: 2 ** 31 + 3,
  REP_ERR_PLATFORM: 2 ** 31 + 4,
  REP_ERR_TLS_REQD: 2 ** 31 + 5,
  REP_ERR_UNKNOWN: 2 ** 31 + 6,
  REP_ERR_SHUTDOWN: 2 ** 31 + 7,
  REP_ERR_BLOCK_SIZE_REQD: 2 ** 31 + 8,
  REP_ERR_TOO_BIG: 2 ** 31 + 9,
  // info types
  INFO_EXPORT: 0,
  INFO_NAME: 1,
  INFO_DESCRIPTION: 2,
  INFO_BLOCK_SIZE: 3,
  // transmission flags
  TF_HAS_FLAGS: 1 << 0,
  TF_READ_ONLY: 1 << 1,
  TF_SEND_FLUSH: 1 << 2,
  TF_SEND_FUA: 1 << 3,
  TF_ROTATIONAL: 1 << 4,
  TF_SEND_TRIM: 1 << 5,
  TF_SEND_WRITE_ZEROES: 1 << 6,
  TF_SEND_DF: 1 << 7,
  TF_CAN_MULTI_CONN: 1 << 8,
  TF_SEND_RESIZE: 1 << 9,
  TF_SEND_CACHE: 1 << 10,
  TF_SEND_FAST_ZERO: 1 << 11,
  TF_BLOCK_STATUS_PAYLOAD: 1 << 12,
  // commands
  CMD_READ: 0,
  CMD_WRITE: 1,
  CMD_DISC: 2,
  CMD_FLUSH: 3,
  CMD_TRIM: 4,
  CMD_CACHE: 5,
  CMD_WRITE_ZEROES: 6,
  CMD_BLOCK_STATUS: 7,
  CMD_RESIZE: 8,
  // command flags
  CMD_FLAG_FUA: 1 << 0,
  CMD_FLAG_NO_HOLE: 1 << 1,
  CMD_FLAG_DF: 1 << 2,
  CMD_FLAG_REQ_ONE: 1 << 3,
  CMD_FLAG_FAST_ZERO: 1 << 4,
  CMD_FLAG_PAYLOAD_LEN: 1 << 5,
  // structured replies
  REPLY_FLAG_DONE: 1,
  REPLY_TYPE_NONE: 0,
  REPLY_TYPE_OFFSET_DATA: 1,
  REPLY_TYPE_OFFSET_HOLE: 2,
  REPLY_TYPE_BLOCK_STATUS: 5,
  REPLY_TYPE_ERROR: 2 ** 15 + 1,
  REPLY_TYPE_ERROR_OFFSET: 2 ** 15 + 2,
  STATE_HOLE: 1,
  STATE_ZERO: 2,
  // errors
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** The errors a server may put on the wire (L2317-2326). */
export const DEFINED_ERRORS = new Set<number>([1, 5, 12, 22, 28, 75, 95, 108]);

export interface Endpoint {
  unixPath?: string;
  host?: string;
  port?: number;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Uint8Array;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  data: Uint8Array;
}

export interface SimpleReply {
  kind: "simple";
  error: number;
  cookie: bigint;
}

export interface Request {
  type: number;
  flags?: number;
  cookie?: bigint;
  offset?: bigint | number;
  length?: number;
  /** For WRITE: the payload (length defaults to its size). */
  data?: Uint8Array;
}

const DEFAULT_TIMEOUT_MS = 10_000;

export class RawNbdClient {
  private buffered: Uint8Array[] = [];
  private bufferedBytes = 0;
  private waiter: (() => void) | null = null;
  private drainWaiter: (() => void) | null = null;
  private isClosed = false;
  /** Resolves when the server closes the connection (or we do). */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private socket!: Socket<undefined>;

  private constructor() {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  static async connect(endpoint: Endpoint): Promise<RawNbdClient> {
    const client = new RawNbdClient();
    const handlers = {
      binaryType: "uint8array" as const,
      data: (_s: Socket<undefined>, chunk: Uint8Array) => {
        client.buffered.push(chunk);
        client.bufferedBytes += chunk.length;
        client.wake();
      },
      drain: () => client.drainWaiter?.(),
      close: () => client.markClosed(),
      end: () => client.markClosed(),
      error: () => client.markClosed(),
    };
    client.socket =
      endpoint.unixPath !== undefined
        ? await Bun.connect({ unix: endpoint.unixPath, socket: handlers })
        : await Bun.connect({ hostname: endpoint.host!, port: endpoint.port!, socket: handlers });
    return client;
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  /** Bytes received and not consumed yet. */
  get pendingBytes(): number {
    return this.bufferedBytes;
  }

  /** Writes bytes, waiting for the socket to take all of them. */
  async send(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    const deadline = Date.now() + DEFAULT_TIMEOUT_MS;
    while (offset < bytes.length) {
      if (this.isClosed) throw new Error("send: connection closed");
      const n = this.socket.write(bytes.subarray(offset));
      if (n < 0) throw new Error("send: connection closed");
      offset += n;
      if (offset < bytes.length) {
        // The socket buffer is full: wait for drain (or close), bounded.
        const left = deadline - Date.now();
        if (left <= 0) throw new Error("send: timed out");
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          this.drainWaiter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.drainWaiter = null;
      }
    }
  }

  /** Reads exactly n bytes or throws (closed or timed out). */
  async read(n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    while (this.bufferedBytes < n) {
      if (this.isClosed) throw new Error(`read(${n}): connection closed after ${this.bufferedBytes} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`read(${n}): timed out with ${this.bufferedBytes} bytes`);
      await this.waitForData(left);
    }
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const head = this.buffered[0]!;
      const take = Math.min(head.length, n - filled);
      out.set(head.subarray(0, take), filled);
      filled += take;
      if (take === head.length) this.buffered.shift();
      else this.buffered[0] = head.subarray(take);
    }
    this.bufferedBytes -= n;
    return out;
  }

  /** Waits (bounded) for the server to close the connection; returns the bytes it sent before. */
  async expectClose(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Uint8Array> {
    const timer = new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), timeoutMs));
    const result = await Promise.race([this.closed.then(() => "closed" as const), timer]);
    if (result === "timeout") throw new Error("expected the server to close the connection");
    return this.read(this.bufferedBytes, 0);
  }

  close(): void {
    if (!this.isClosed) this.socket.end();
    this.markClosed();
  }

  /** Hard close (RST), as a vanishing client would. */
  abort(): void {
    if (!this.isClosed) this.socket.terminate();
    this.markClosed();
  }

  // --- handshake ---------------------------------------------------------------------------

  /** Reads the greeting and returns the handshake flags. */
  async readGreeting(): Promise<number> {
    const g = await this.read(18);
    const v = view(g);
    if (v.getBigUint64(0) !== NBD.NBDMAGIC) throw new Error("bad NBDMAGIC");
    if (v.getBigUint64(8) !== NBD.IHAVEOPT) throw new Error("bad IHAVEOPT");
    return v.getUint16(16);
  }

  /** Greeting + client flags (fixed newstyle and no zeroes by default). */
  async handshake(clientFlags = NBD.FLAG_C_FIXED_NEWSTYLE | NBD.FLAG_C_NO_ZEROES): Promise<number> {
    const flags = await this.readGreeting();
    await this.send(u32(clientFlags));
    return flags;
  }

  async sendOption(option: number, data: Uint8Array = new Uint8Array(0), length = data.length): Promise<void> {
    const header = new Uint8Array(16);
    const v = view(header);
    v.setBigUint64(0, NBD.IHAVEOPT);
    v.setUint32(8, option);
    v.setUint32(12, length);
    await this.send(concat(header, data));
  }

  async readOptionReply(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<OptionReply> {
    const header = await this.read(20, timeoutMs);
    const v = view(header);
    const magic = v.getBigUint64(0);
    if (magic !== NBD.OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic 0x${magic.toString(16)}`);
    const length = v.getUint32(16);
    return { option: v.getUint32(8), type: v.getUint32(12), data: await this.read(length, timeoutMs) };
  }

  /** Reads replies to one option until the final one (ACK or an error). */
  async readOptionReplies(): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      replies.push(r);
      if (r.type === NBD.REP_ACK || r.type >= 2 ** 31) return replies;
    }
  }

  /** Sends an option and collects its replies. */
  async option(option: number, data?: Uint8Array): Promise<OptionReply[]> {
    await this.sendOption(option, data);
    return this.readOptionReplies();
  }

  /**
   * Full negotiation to transmission with NBD_OPT_GO: optional structured replies and
   * base:allocation. Returns the export size and transmission flags.
   */
  async negotiate(
    exportName: string,
    options: { structured?: boolean; allocation?: boolean; infos?: number[] } = {},
  ): Promise<{ size: bigint; tflags: number; replies: OptionReply[] }> {
    await this.handshake();
    if (options.structured || options.allocation) {
      const r = await this.option(NBD.OPT_STRUCTURED_REPLY);
      if (r.at(-1)!.type !== NBD.REP_ACK) throw new Error("structured replies refused");
    }
    if (options.allocation) {
      const r = await this.option(NBD.OPT_SET_META_CONTEXT, metaContextData(exportName, ["base:allocation"]));
      if (r.at(-1)!.type !== NBD.REP_ACK) throw new Error("SET_META_CONTEXT refused");
    }
    const replies = await this.option(NBD.OPT_GO, infoRequestData(exportName, options.infos ?? []));
    const last = replies.at(-1)!;
    if (last.type !== NBD.REP_ACK) throw new Error(`GO failed with 0x${last.type.toString(16)}`);
    const info = replies.find((r) => r.type === NBD.REP_INFO && view(r.data).getUint16(0) === NBD.INFO_EXPORT);
    if (!info) throw new Error("GO without NBD_INFO_EXPORT");
    const v = view(info.data);
    return { size: v.getBigUint64(2), tflags: v.getUint16(10), replies };
  }

  // --- transmission ------------------------------------------------------------------------

  async sendRequest(r: Request): Promise<void> {
    await this.send(encodeRequest(r));
  }

  /** Reads one reply message: a simple reply (header only) or one structured chunk. */
  async readReply(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<SimpleReply | (Chunk & { kind: "chunk" })> {
    const head = await this.read(4, timeoutMs);
    const magic = view(head).getUint32(0);
    if (magic === NBD.SIMPLE_REPLY_MAGIC) {
      const rest = view(await this.read(12, timeoutMs));
      return { kind: "simple", error: rest.getUint32(0), cookie: rest.getBigUint64(4) };
    }
    if (magic === NBD.STRUCTURED_REPLY_MAGIC) {
      const rest = view(await this.read(16, timeoutMs));
      const length = rest.getUint32(12);
      return {
        kind: "chunk",
        flags: rest.getUint16(0),
        type: rest.getUint16(2),
        cookie: rest.getBigUint64(4),
        data: await this.read(length, timeoutMs),
      };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }

  /** Reads a simple reply, and `length` bytes of read data when it succeeded and length > 0. */
  async readSimpleReply(length = 0): Promise<SimpleReply & { data: Uint8Array }> {
    const r = await this.readReply();
    if (r.kind !== "simple") throw new Error(`expected a simple reply, got chunk type ${r.type}`);
    const data = r.error === 0 && length > 0 ? await this.read(length) : new Uint8Array(0);
    return { ...r, data };
  }

  /** Reads structured chunks until one has DONE set. */
  async readStructuredReply(): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (;;) {
      const r = await this.readReply();
      if (r.kind !== "chunk") throw new Error("expected a structured chunk, got a simple reply");
      chunks.push(r);
      if (r.flags & NBD.REPLY_FLAG_DONE) return chunks;
    }
  }

  /** Sends NBD_CMD_DISC and waits for the server to close. */
  async disconnect(): Promise<void> {
    await this.sendRequest({ type: NBD.CMD_DISC });
    await this.expectClose();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private markClosed(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.resolveClosed();
    this.wake();
    this.drainWaiter?.();
  }

  private waitForData(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        resolve();
      }, timeoutMs);
      this.waiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

// --- encoders --------------------------------------------------------------------------------

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function u16(v: number): Uint8Array {
  const b = new Uint8Array(2);
  view(b).setUint16(0, v);
  return b;
}

export function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  view(b).setUint32(0, v);
  return b;
}

export function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  view(b).setBigUint64(0, v);
  return b;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
export const fromUtf8 = (b: Uint8Array): string => new TextDecoder().decode(b);

/** NBD_OPT_INFO/GO data: u32 name length, name, u16 count, u16 codes. */
export function infoRequestData(name: string, infos: number[] = []): Uint8Array {
  const n = utf8(name);
  return concat(u32(n.length), n, u16(infos.length), ...infos.map(u16));
}

/** NBD_OPT_LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, (u32 length, query)*. */
export function metaContextData(name: string, queries: string[]): Uint8Array {
  const n = utf8(name);
  return concat(
    u32(n.length),
    n,
    u32(queries.length),
    ...queries.flatMap((q) => {
      const b = utf8(q);
      return [u32(b.length), b];
    }),
  );
}

export function encodeRequest(r: Request): Uint8Array {
  const data = r.data ?? new Uint8Array(0);
  const header = new Uint8Array(28);
  const v = view(header);
  v.setUint32(0, NBD.REQUEST_MAGIC);
  v.setUint16(4, r.flags ?? 0);
  v.setUint16(6, r.type);
  v.setBigUint64(8, r.cookie ?? 1n);
  v.setBigUint64(16, BigInt(r.offset ?? 0));
  v.setUint32(24, r.length ?? data.length);
  return concat(header, data);
}

/** Parses an NBD_REP_META_CONTEXT payload. */
export function parseMetaContext(data: Uint8Array): { id: number; name: string } {
  return { id: view(data).getUint32(0), name: fromUtf8(data.subarray(4)) };
}

/** Parses an NBD_REPLY_TYPE_BLOCK_STATUS payload. */
export function parseBlockStatus(data: Uint8Array): { contextId: number; extents: { length: number; flags: number }[] } {
  const v = view(data);
  const extents: { length: number; flags: number }[] = [];
  for (let p = 4; p < data.length; p += 8) extents.push({ length: v.getUint32(p), flags: v.getUint32(p + 4) });
  return { contextId: v.getUint32(0), extents };
}

/** Parses an error chunk payload (ERROR or ERROR_OFFSET). */
export function parseErrorChunk(data: Uint8Array): { error: number; message: string } {
  const v = view(data);
  const length = v.getUint16(4);
  return { error: v.getUint32(0), message: fromUtf8(data.subarray(6, 6 + length)) };
}

/** Reassembles a structured READ reply; throws on overlap or on chunks outside the range. */
export function assembleRead(
  chunks: Chunk[],
  offset: bigint,
  length: number,
): { data: Uint8Array; errors: number[]; covered: number } {
  const data = new Uint8Array(length).fill(0xee);
  const seen = new Uint8Array(length);
  const errors: number[] = [];
  let covered = 0;
  const claim = (start: number, len: number) => {
    if (start < 0 || len <= 0 || start + len > length) throw new Error(`chunk [${start}, +${len}) outside the read`);
    for (let i = start; i < start + len; i++) {
      if (seen[i]) throw new Error(`chunks overlap at ${i}`);
      seen[i] = 1;
    }
    covered += len;
  };
  for (const c of chunks) {
    const v = view(c.data);
    if (c.type === NBD.REPLY_TYPE_OFFSET_DATA) {
      if (c.data.length < 9) throw new Error("OFFSET_DATA chunk shorter than 9 bytes");
      const start = Number(v.getBigUint64(0) - offset);
      claim(start, c.data.length - 8);
      data.set(c.data.subarray(8), start);
    } else if (c.type === NBD.REPLY_TYPE_OFFSET_HOLE) {
      if (c.data.length !== 12) throw new Error("OFFSET_HOLE chunk length is not 12");
      const start = Number(v.getBigUint64(0) - offset);
      const len = v.getUint32(8);
      if (len === 0) throw new Error("OFFSET_HOLE with zero size");
      claim(start, len);
      data.fill(0, start, start + len);
    } else if (c.type === NBD.REPLY_TYPE_ERROR || c.type === NBD.REPLY_TYPE_ERROR_OFFSET) {
      errors.push(parseErrorChunk(c.data).error);
    } else if (c.type !== NBD.REPLY_TYPE_NONE) {
      throw new Error(`chunk type ${c.type} is not valid for READ`);
    }
  }
  return { data, errors, covered };
}
