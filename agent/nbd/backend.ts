/**
 * The contract between the NBD protocol layer and whatever stores the data (like an nbdkit plugin).
 *
 * The protocol layer (handshake.ts, transmission.ts) validates every request at the edge: by the
 * time a backend method runs, the range lies inside the export, the length is non-zero, the flags
 * are valid for the command and the export is writable for write-like commands. A backend
 * therefore only has to do the I/O and report operating errors by throwing (or rejecting with)
 * an `NbdError`. Anything else it throws is logged and answered with EIO.
 *
 * Every I/O method may complete synchronously (return a value or undefined) or asynchronously
 * (return a Promise), for example when a mapping fault has to be resolved first. The layer checks
 * the return value and only pays for a Promise when the backend actually returned one.
 */

/** What the layer needs to know about one export (one virtual disk). */
export interface ExportInfo {
  /** Export name as used by NBD_OPT_GO / NBD_OPT_EXPORT_NAME; UTF-8, no NUL, at most 4096 bytes. */
  name: string;
  /** Optional human-readable description (NBD_INFO_DESCRIPTION, NBD_REP_SERVER). */
  description?: string;
  /** Export size in bytes; an integer in [0, Number.MAX_SAFE_INTEGER]. */
  sizeBytes: number;
  /** Read-only exports reject WRITE, TRIM and WRITE_ZEROES with EPERM before the backend sees them. */
  readOnly: boolean;
}

/** One run of bytes with the same allocation state (the base:allocation metadata context). */
export interface BlockExtent {
  /** Length in bytes, at least 1. */
  length: number;
  /** Not allocated in the backing store (NBD_STATE_HOLE): a write there may fail with ENOSPC. */
  hole: boolean;
  /** Reads as all zeroes (NBD_STATE_ZERO). Only set when it is certain. */
  zero: boolean;
}

/** The error numbers NBD can carry on the wire (proto.md L2317-2326). */
export type NbdErrno = "EPERM" | "EIO" | "ENOMEM" | "EINVAL" | "ENOSPC" | "EOVERFLOW" | "ENOTSUP" | "ESHUTDOWN";

/** An operating error a backend reports to the client; the layer turns it into an NBD error reply. */
export class NbdError extends Error {
  override name = "NbdError";
  constructor(
    public readonly errno: NbdErrno,
    message?: string,
  ) {
    super(message ?? errno);
  }
}

/** The exports a server offers. */
export interface NbdBackend {
  /** Every export a client may open, in a stable order; the first one is the default export (""). */
  listExports(): ExportInfo[];
  /**
   * Opens an export for one client connection; "" selects the default export (the first listed).
   * Returns null when there is no such export. The handle's info must match what listExports()
   * says about the export, so that NBD_OPT_INFO and NBD_OPT_GO report the same thing.
   */
  openExport(name: string): ExportHandle | null;
}

/**
 * One client connection's view of an export. The layer may have several calls in flight at once
 * (requests are pipelined); it calls close() once, after the last call has completed.
 */
export interface ExportHandle {
  readonly info: ExportInfo;
  /**
   * Fills `into` with the bytes at [offset, offset + into.length). It may return pairs
   * [start, length, start, length, ...] (relative to offset, sorted, non-overlapping, each
   * length >= 1) naming unallocated ranges that read as zeroes; the layer then may send them as
   * NBD_REPLY_TYPE_OFFSET_HOLE chunks, and zero-fills them itself when it has to send bytes, so
   * the backend need not write those ranges of `into`.
   */
  read(offset: number, into: Uint8Array): void | Uint32Array | Promise<void | Uint32Array>;
  /** Writes `data` at offset; with fua, resolves only once the data is durable. */
  write(offset: number, data: Uint8Array, fua: boolean): void | Promise<void>;
  /** Makes the range read as zeroes; noHole asks for it to stay allocated (no ENOSPC later). */
  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): void | Promise<void>;
  /** Hint that the range is no longer needed; contents are undefined afterwards. May do nothing. */
  trim(offset: number, length: number, fua: boolean): void | Promise<void>;
  /** Makes every write that has completed so far durable. */
  flush(): void | Promise<void>;
  /**
   * Describes a prefix (at least 1 byte) of [offset, offset + length), in order, from offset on.
   * Extents may run past the end of the range; the layer trims and merges them.
   */
  blockStatus(offset: number, length: number): BlockExtent[] | Promise<BlockExtent[]>;
  /** Releases the handle; no call is in flight any more. */
  close(): void;
}
