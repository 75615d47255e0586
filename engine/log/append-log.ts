/**
 * A durable append-only record log with group commit and compaction.
 *
 * Durability model: `append` only buffers; `commit` resolves once everything appended before it is
 * written and fdatasync'ed. One write+fdatasync is in flight at a time; appends made meanwhile queue
 * up and the next flush covers all of them with one write and one fdatasync.
 *
 * Sequence numbers are assigned when a record is flushed, in append order, continuing across
 * compactions (the first record of a file sets its base).
 *
 * Compaction: `compact(records)` encodes the snapshot synchronously, first commits every append made
 * before the call into the current file, then writes `<path>.compact`, fdatasyncs it, renames it
 * over `<path>` and fsyncs the directory. Appends made while it runs are held (not lost) and
 * written after the snapshot in the new file; their commits resolve after that. The snapshot is the
 * caller's live state, so it must already reflect every record appended before the call.
 *
 * Room (with `roomChunkBytes`): the file is kept written with zeros ahead of its records, so a
 * record once admitted by `prepare` always has its place on disk, and the file system filling up
 * refuses the next change (LogFullError) instead of a write of records already applied. Admission
 * also keeps the caller's reserve free in the room: bytes a compaction may need, which it frees
 * for the `.compact` file when the file system has no other space. Recovery takes an all-zero tail
 * for room, not for a torn write.
 *
 * Failure: a failed write or fdatasync (anything but the file system being full) stops the log for
 * good, cuts the file back to what was durable, and calls `onFailure` once.
 *
 * One process, one AppendLog per file: there is no cross-process lock.
 */
import * as fs from "node:fs";
import { assert } from "../util/assert.ts";
import {
  closeQuietly,
  errorMessage,
  extendWithZeros,
  freeBytesOn,
  isNoSpace,
  fsyncDirSync,
  type LogIo,
  nodeLogIo,
  readWholeSync,
  truncateQuietly,
  unlinkQuietly,
  writeFully,
} from "./log-io.ts";
import { encodePayload, framedBytes, frameRecords } from "./record.ts";
import { LogCorruptionError, type ScanResult, scanRecords } from "./recovery.ts";

export { LogCorruptionError } from "./recovery.ts";
export { type LogIo, nodeLogIo } from "./log-io.ts";
export { RECORD_PAYLOAD_BYTES_MAX } from "./record.ts";

export interface AppendLogOptions {
  /** File operations for the commit path; defaults to node:fs. */
  io?: LogIo;
  /** Keep the file written ahead of its records by at least this much when it can (0: no room
   *  kept; records are written past the end of the file). */
  roomChunkBytes?: number;
  /** Called once when the log stops for good (a write or fdatasync failed). */
  onFailure?: (error: Error) => void;
}

/** The file system holding the log has no space for a change: nothing of it was appended. */
export class LogFullError extends Error {
  override name = "LogFullError";
  readonly code = "ENOSPC";

  constructor(
    readonly path: string,
    /** Bytes the log must still grow by to take the change and keep its reserve. */
    readonly neededBytes: number,
    /** Free bytes on the file system, as far as it says. */
    readonly freeBytes: number | null,
  ) {
    const free = freeBytes === null ? "" : ` (${freeBytes} bytes free)`;
    super(`the file system holding the log ${path} is full${free}: the log needs ${neededBytes} more bytes; changes are refused until space is freed`);
  }
}

/** Records encoded and admitted by `prepare`, to be appended by `appendPrepared` in the same turn. */
export interface PreparedRecords {
  readonly payloads: Uint8Array[];
  readonly bytes: number;
}

export interface RecoveryReport {
  /** The file did not exist and was created. */
  created: boolean;
  recordCount: number;
  /** File size after recovery. */
  validBytes: number;
  /** Offset where a torn tail was cut off (the end of the last good record); validBytes if none. */
  truncatedAt: number;
  /** Bytes of torn tail dropped; 0 when the file ended cleanly. */
  truncatedBytes: number;
  /** Why the tail was judged torn (e.g. "record runs past end of file"), or null. */
  truncationReason: string | null;
  /** A `.compact` file left by a crash during compaction was deleted. */
  removedCompactFile: boolean;
}

export interface OpenedLog {
  log: AppendLog;
  /** Every record in the file, in order. */
  records: unknown[];
  recovery: RecoveryReport;
}

/** Counters of the disk operations a log has made. */
export interface LogStats {
  /** Batches written by commits (each one write + one fdatasync). */
  commitBatches: number;
  /** fdatasync calls, compaction included. */
  syncs: number;
}

interface CommitWaiter {
  /** The commit is done once this many appends are durable. */
  appendsNeeded: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export function compactPathOf(path: string): string {
  return `${path}.compact`;
}

export class AppendLog {
  readonly path: string;
  private readonly io: LogIo;
  private fd: number;
  /** Bytes and records in the file from completed writes. */
  private fileBytes: number;
  /** Bytes of the file written so far (records, then zeros): records up to here need no new space. */
  private allocatedEnd: number;
  private readonly roomChunkBytes: number;
  /** The reserve the latest admission kept free: the room to keep after a compaction too. */
  private reserveBytes = 0;
  /** Growing the file failed for want of space (see `makeRoom`). */
  private lacksRoom = false;
  private readonly onFailure: ((error: Error) => void) | undefined;
  private fileRecords: number;
  private nextSeq: number;
  /** Encoded payloads waiting for the next flush. */
  private pending: Uint8Array[] = [];
  /** Encoded payloads appended during a compaction; they go to the new file. */
  private held: Uint8Array[] = [];
  /** Framed bytes and records appended but not yet written (pending, held and in flight). */
  private queuedBytes = 0;
  private queuedRecords = 0;
  /** Appends ever made, and how many of them are durable; commits wait on these counts. */
  private appendCount = 0;
  private durableCount = 0;
  private waiters: CommitWaiter[] = [];
  /** Flushes stop once this many appends are durable: the most any commit, compaction or close
   *  waits for. Records nobody waits for yet stay buffered, so a stream of appends does not keep
   *  one write and fdatasync after another going on its own. */
  private flushUpTo = 0;
  private flushing: Promise<void> | null = null;
  private flushScheduled = false;
  private compaction: Promise<void> | null = null;
  private failure: Error | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly counters: LogStats = { commitBatches: 0, syncs: 0 };

  private constructor(path: string, fd: number, opts: AppendLogOptions, scan: ScanResult, fileSize: number) {
    this.path = path;
    this.fd = fd;
    this.io = opts.io ?? nodeLogIo;
    this.roomChunkBytes = opts.roomChunkBytes ?? 0;
    assert(this.roomChunkBytes >= 0, "room chunk must not be negative");
    this.onFailure = opts.onFailure;
    this.fileBytes = scan.validBytes;
    this.allocatedEnd = fileSize;
    this.fileRecords = scan.records.length;
    this.nextSeq = scan.nextSeq;
  }

  /**
   * Opens (creating if absent) the log at `path` and recovers it; see `scanRecords` for the rules.
   * @throws LogCorruptionError when a record in the middle of the file is damaged.
   */
  static open(path: string, opts: AppendLogOptions = {}): OpenedLog {
    assert(path.length > 0, "log path must not be empty");
    let opened: { fd: number; created: boolean };
    try {
      opened = openOrCreate(path);
    } catch (err) {
      throw new Error(`log ${path}: cannot open: ${errorMessage(err)}`, { cause: err });
    }
    const { fd, created } = opened;
    try {
      const scan = scanRecords(path, created ? new Uint8Array(0) : readWholeSync(fd));
      const removedCompactFile = removeLeftoverCompact(path);
      if (scan.tornTail) cutTornTail(fd, scan.validBytes);
      const log = new AppendLog(path, fd, opts, scan, fs.fstatSync(fd).size);
      const recovery: RecoveryReport = {
        created,
        recordCount: scan.records.length,
        validBytes: scan.validBytes,
        truncatedAt: scan.tornTail?.offset ?? scan.validBytes,
        truncatedBytes: scan.tornTail?.bytesDropped ?? 0,
        truncationReason: scan.tornTail?.reason ?? null,
        removedCompactFile,
      };
      return { log, records: scan.records, recovery };
    } catch (err) {
      closeQuietly(fd);
      if (err instanceof LogCorruptionError) throw err;
      throw new Error(`log ${path}: cannot open: ${errorMessage(err)}`, { cause: err });
    }
  }

  /** File size including appended records not yet written. */
  get sizeBytes(): number {
    return this.fileBytes + this.queuedBytes;
  }

  /** Records in the file plus records appended but not yet written. */
  get recordCount(): number {
    return this.fileRecords + this.queuedRecords;
  }

  /** Records appended but not durable yet. */
  get uncommittedRecords(): number {
    return this.appendCount - this.durableCount;
  }

  /** Records appended since the log was opened: a position in the log that only grows. */
  get appendedRecords(): number {
    return this.appendCount;
  }

  /** Every record up to this position is durable. */
  get durableRecords(): number {
    return this.durableCount;
  }

  /** Bytes of the file, room included. */
  get allocatedBytes(): number {
    return this.allocatedEnd;
  }

  get stats(): Readonly<LogStats> {
    return { ...this.counters };
  }

  /** Why the log stopped for good, or null while it works. */
  get failed(): Error | null {
    return this.failure;
  }

  /**
   * Buffers one record; nothing is durable until a later `commit` resolves.
   * @throws RangeError when the encoded payload is over RECORD_PAYLOAD_BYTES_MAX.
   * @throws LogFullError when the log has room for it no more.
   */
  append(payload: object): void {
    this.appendPrepared(this.prepare([payload]));
  }

  /**
   * Encodes `payloads` and makes sure the file has room for them with `reserveBytes` left over,
   * growing it if need be; appends nothing. Hand the result to `appendPrepared` before yielding.
   * @throws LogFullError, RangeError, or the log's failure; nothing changes then.
   */
  prepare(payloads: readonly object[], reserveBytes = 0): PreparedRecords {
    this.assertOpen();
    if (this.failure) throw this.failure;
    const encoded = payloads.map((payload) => encodePayload(payload, this.label));
    const bytes = encoded.reduce((sum, payload) => sum + framedBytes(payload.length), 0);
    if (this.roomChunkBytes > 0) {
      this.reserveBytes = reserveBytes;
      this.makeRoom(this.fileBytes + this.queuedBytes + bytes + reserveBytes);
    }
    return { payloads: encoded, bytes };
  }

  /** Appends what `prepare` admitted. */
  appendPrepared(prepared: PreparedRecords): void {
    this.assertOpen();
    if (this.failure) throw this.failure;
    (this.compaction ? this.held : this.pending).push(...prepared.payloads);
    this.queuedBytes += prepared.bytes;
    this.queuedRecords += prepared.payloads.length;
    this.appendCount += prepared.payloads.length;
  }

  /**
   * Grows the file with zeros until `end` bytes are written, a chunk beyond when the space is
   * there, just `end` when not. Once it has refused, the log takes nothing until a whole chunk
   * can be had again: changes small enough for the last bytes do not trickle through.
   * @throws LogFullError when it cannot have what it needs.
   */
  private makeRoom(end: number): void {
    if (end <= this.allocatedEnd && !this.lacksRoom) return;
    const targets = this.lacksRoom ? [end + this.roomChunkBytes] : [end + this.roomChunkBytes, end];
    for (const target of targets) {
      try {
        this.allocatedEnd = Math.max(this.allocatedEnd, extendWithZeros(this.fd, this.allocatedEnd, target));
        this.lacksRoom = false;
        return;
      } catch (err) {
        if (!isNoSpace(err)) throw new Error(`${this.label}: cannot grow the file: ${errorMessage(err)}`, { cause: err });
        this.allocatedEnd = Math.max(this.allocatedEnd, fs.fstatSync(this.fd).size);
        if (!this.lacksRoom && end <= this.allocatedEnd) return;
      }
    }
    this.lacksRoom = true;
    throw new LogFullError(this.path, targets.at(-1)! - this.allocatedEnd, freeBytesOn(this.path));
  }

  /** Resolves once every record appended before this call is durable. */
  commit(): Promise<void> {
    this.assertOpen();
    return this.waitDurable(this.appendCount);
  }

  /**
   * Replaces the whole log with `records`, the caller's snapshot of live state (see the file
   * comment for how appends before and during compaction are handled).
   */
  compact(records: Iterable<object>): Promise<void> {
    this.assertOpen();
    assert(this.compaction === null, `${this.label}: compaction already in progress`);
    if (this.failure) return Promise.reject(this.failure);
    // Encode now: the snapshot is taken at the call, and an oversized record fails before any work.
    let payloads: Uint8Array[];
    try {
      payloads = Array.from(records, (record) => encodePayload(record, this.label));
    } catch (err) {
      return Promise.reject(err);
    }
    const done = this.runCompaction(payloads).finally(() => {
      this.compaction = null;
      this.releaseHeld();
    });
    this.compaction = done;
    return done;
  }

  /**
   * Stops accepting appends, waits for a running compaction, commits what was appended, then
   * closes the file. Idempotent. Rejects if appends could not be made durable; safe to call
   * without awaiting (the rejection is then not reported as unhandled).
   */
  close(): Promise<void> {
    if (!this.closing) {
      this.closed = true;
      this.closing = this.finishClose();
      this.closing.catch(() => undefined);
    }
    return this.closing;
  }

  private get label(): string {
    return `log ${this.path}`;
  }

  private assertOpen(): void {
    assert(!this.closed, `${this.label} is closed`);
  }

  private waitDurable(appendsNeeded: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.durableCount >= appendsNeeded) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiters.push({ appendsNeeded, resolve, reject });
      this.flushUpTo = Math.max(this.flushUpTo, appendsNeeded);
      this.scheduleFlush();
    });
  }

  /**
   * Starts a flush on a microtask, so appends and commits made in the same tick share a batch. A
   * flush already in flight picks up pending records itself when it finishes, if they are waited for.
   */
  private scheduleFlush(): void {
    if (this.flushing || this.flushScheduled || !this.flushWanted()) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      void this.runFlush();
    });
  }

  private runFlush(): Promise<void> {
    this.flushing ??= this.flushLoop().finally(() => {
      this.flushing = null;
      this.scheduleFlush(); // records queued after the loop's last check
    });
    return this.flushing;
  }

  private flushWanted(): boolean {
    return this.pending.length > 0 && !this.failure && this.durableCount < this.flushUpTo;
  }

  private async flushLoop(): Promise<void> {
    while (this.flushWanted()) {
      const batch = this.pending;
      this.pending = [];
      try {
        await this.writeBatch(batch);
      } catch (err) {
        // What the failed batch may have left in the file was never acknowledged: a restart must
        // not find it (the page cache may still hold it although the disk does not).
        truncateQuietly(this.fd, this.fileBytes);
        this.fail(err, "commit");
      }
    }
  }

  /** One write and one fdatasync for every record in `batch`. */
  private async writeBatch(batch: Uint8Array[]): Promise<void> {
    const bytes = frameRecords(batch, this.nextSeq);
    await writeFully(this.io, this.fd, bytes, this.fileBytes);
    await this.sync(this.fd);
    this.counters.commitBatches++;
    this.nextSeq += batch.length;
    this.fileBytes += bytes.length;
    this.allocatedEnd = Math.max(this.allocatedEnd, this.fileBytes);
    this.fileRecords += batch.length;
    this.queuedBytes -= bytes.length;
    this.queuedRecords -= batch.length;
    this.durableCount += batch.length;
    this.resolveWaiters();
  }

  private async sync(fd: number): Promise<void> {
    await this.io.datasync(fd);
    this.counters.syncs++;
  }

  private resolveWaiters(): void {
    // Waiters are registered in increasing appendsNeeded order.
    while (this.waiters.length > 0 && this.waiters[0]!.appendsNeeded <= this.durableCount) {
      this.waiters.shift()!.resolve();
    }
  }

  /** Flushes until nothing is pending or in flight. */
  private async drain(): Promise<void> {
    this.flushUpTo = this.appendCount;
    while (!this.failure && (this.pending.length > 0 || this.flushing)) await this.runFlush();
    if (this.failure) throw this.failure;
  }

  /**
   * A failed write or fdatasync leaves the file's contents unknown (and the kernel may have
   * dropped the dirty pages), so the log stops: every waiting and later commit fails. Reopening
   * recovers from what is actually on disk.
   */
  private fail(cause: unknown, what: string): void {
    const first = this.failure === null;
    this.failure ??= new Error(
      `${this.label}: ${what} failed, log unusable until reopened: ${errorMessage(cause)}`,
      { cause },
    );
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.reject(this.failure);
    if (first) this.onFailure?.(this.failure);
  }

  private async runCompaction(payloads: Uint8Array[]): Promise<void> {
    await this.drain(); // appends made before the call land in the old file first
    const firstSeq = this.nextSeq;
    const image = frameRecords(payloads, firstSeq);
    let fd: number;
    try {
      fd = await this.writeCompactFile(image);
    } catch (err) {
      // The room kept as reserve is what the file system lacks: give it up for the new file.
      if (!isNoSpace(err) || this.allocatedEnd === this.fileBytes) throw err;
      truncateQuietly(this.fd, this.fileBytes);
      this.allocatedEnd = this.fileBytes;
      fd = await this.writeCompactFile(image);
    }
    try {
      await this.io.rename(compactPathOf(this.path), this.path);
      await this.io.syncDir(this.path);
    } catch (err) {
      // Once the rename has been tried, which file is on disk is uncertain: stop.
      closeQuietly(fd);
      this.fail(err, "compaction");
      throw this.failure;
    }
    closeQuietly(this.fd);
    this.fd = fd;
    this.fileBytes = image.length;
    this.allocatedEnd = image.length;
    this.fileRecords = payloads.length;
    this.nextSeq = firstSeq + payloads.length;
    if (this.roomChunkBytes > 0) this.regainRoom();
  }

  /** Room for what was held during the compaction and the reserve, if the space is there; if not,
   *  the next `prepare` tries again (and refuses while it cannot). */
  private regainRoom(): void {
    try {
      this.makeRoom(this.fileBytes + this.queuedBytes + this.reserveBytes);
    } catch {
      // The compaction itself is done; the next `prepare` tries again and says why it cannot.
    }
  }

  /** Writes and syncs the `.compact` file; on failure removes it and leaves the log as it was. */
  private async writeCompactFile(image: Uint8Array): Promise<number> {
    const compactPath = compactPathOf(this.path);
    let fd: number | undefined;
    try {
      fd = await this.io.open(compactPath, "w+");
      await writeFully(this.io, fd, image, 0);
      await this.sync(fd);
      return fd;
    } catch (err) {
      if (fd !== undefined) closeQuietly(fd);
      unlinkQuietly(compactPath);
      throw new Error(`${this.label}: compaction failed, log unchanged: ${errorMessage(err)}`, {
        cause: err,
      });
    }
  }

  /** Moves appends made during compaction into the queue for the (new) file. */
  private releaseHeld(): void {
    if (this.held.length === 0) return;
    this.pending.push(...this.held);
    this.held = [];
    if (this.waiters.length > 0) this.scheduleFlush();
  }

  private async finishClose(): Promise<void> {
    try {
      if (this.compaction) await this.compaction.catch(() => undefined);
      if (!this.failure) await this.drain();
    } finally {
      closeQuietly(this.fd);
    }
    if (this.durableCount < this.appendCount) {
      throw new Error(`${this.label}: closed with appends that are not durable`, { cause: this.failure });
    }
  }
}

function openOrCreate(path: string): { fd: number; created: boolean } {
  try {
    return { fd: fs.openSync(path, "r+"), created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const fd = fs.openSync(path, "wx+");
  try {
    fs.fsyncSync(fd);
    fsyncDirSync(path); // make the new directory entry durable
  } catch (err) {
    closeQuietly(fd);
    throw err;
  }
  return { fd, created: true };
}

/** Deletes a `.compact` file left by a crash mid-compaction; the log itself is still whole. */
function removeLeftoverCompact(path: string): boolean {
  const compactPath = compactPathOf(path);
  if (!fs.existsSync(compactPath)) return false;
  fs.unlinkSync(compactPath);
  fsyncDirSync(path);
  return true;
}

function cutTornTail(fd: number, validBytes: number): void {
  fs.ftruncateSync(fd, validBytes);
  fs.fsyncSync(fd);
}
