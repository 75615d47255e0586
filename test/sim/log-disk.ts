// The controller's log file on a simulated disk. The real AppendLog writes it through a LogIo
// (engine/log/log-io.ts); here that LogIo keeps the bytes in memory with simulated latency and
// knows which of them an fdatasync made durable. When the controller's host crashes, the bytes
// written since the last fdatasync are torn: a random prefix of them survives, perhaps followed by
// junk. A live compaction writes a second file and renames it over the log: the rename is durable
// once the directory is synced, and a crash before that leaves either file. At each start the
// image is written to a real file for AppendLog.open, so recovery is the real code reading the
// real format. (The real files under the simulation's directory stand in for descriptors only.)
import { openSync, renameSync, writeFileSync } from "node:fs";
import { Catalog, parseRecord } from "../../engine/catalog.ts";
import type { LogIo } from "../../engine/log/log-io.ts";
import { encodePayload, frameRecords } from "../../engine/log/record.ts";
import { scanRecords } from "../../engine/log/recovery.ts";
import { assert } from "../../engine/util/assert.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import type { Trace } from "./trace.ts";

const JUNK_BYTES_MAX = 64;

export type CrashKind = "process" | "host";

export class SimLogDisk {
  /** What the log's path names now (page cache included). */
  private file = new LogFile();
  /** What it names after a power loss: a rename is durable once the directory is synced. */
  private durableFile = this.file;
  /** Files opened through the LogIo (the compaction's), by descriptor, and their descriptors by path. */
  private readonly opened = new Map<number, LogFile>();
  private readonly descriptors = new Map<string, number>();
  private io: MemoryLogIo | null = null;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly trace: Trace,
    readonly path: string,
  ) {}

  /** Puts the image in the real file for AppendLog.open; returns the LogIo for this incarnation.
   *  Recovery will cut a torn tail off and sync the file: the image is cut as it will be. */
  open(life: Life): LogIo {
    assert(this.io === null, "log opened twice without a crash");
    writeFileSync(this.path, this.file.image);
    const { validBytes } = scanRecords(this.path, this.file.image);
    this.file.cut(validBytes);
    this.io = new MemoryLogIo(this, this.scheduler, this.random, life);
    return this.io;
  }

  /** The controller is gone: what it was writing fails, and on a host crash the tail tears and a
   *  rename not yet durable may be undone. */
  crash(kind: CrashKind): void {
    this.io?.kill();
    this.io = null;
    this.opened.clear();
    this.descriptors.clear();
    if (kind === "process") return;
    if (this.durableFile !== this.file && this.random.chance(0.5)) this.file = this.durableFile;
    this.durableFile = this.file;
    this.file.tear(this.random);
  }

  /** Replaces the log by the compacted image of what it recovers to, as AppendLog.compact writes
   *  it (the live state's records, sequence numbers continuing). Only between incarnations. */
  compact(): void {
    assert(this.io === null, "compaction of a log in use");
    const scan = scanRecords(this.path, this.file.image);
    const catalog = new Catalog();
    for (const record of scan.records) catalog.apply(parseRecord(record));
    const payloads = [...catalog.snapshot()].map((record) => encodePayload(record, this.path));
    this.file = new LogFile();
    this.file.write(frameRecords(payloads, scan.nextSeq), 0);
    this.file.synced(this.file.image.length);
    this.durableFile = this.file;
  }

  /** The durable records (what a crash now would recover), for comparing with the live state. */
  durableRecords(): object[] {
    return scanRecords(this.path, this.durableFile.durableImage()).records;
  }

  /** The file a descriptor refers to: one the LogIo opened, else the log AppendLog.open opened. */
  fileOf(fd: number): LogFile {
    return this.opened.get(fd) ?? this.file;
  }

  openedFile(path: string, fd: number): void {
    this.opened.set(fd, new LogFile());
    this.descriptors.set(path, fd);
  }

  /** The file at `from` is the log now. */
  renamed(from: string): void {
    const fd = this.descriptors.get(from);
    assert(fd !== undefined, `a rename of ${from}, which the log did not open`);
    this.file = this.fileOf(fd);
    this.trace.count("live log compaction");
  }

  dirSynced(): void {
    this.durableFile = this.file;
  }
}

/** One file's bytes as its host sees them, and how many of them an fdatasync made durable. */
class LogFile {
  image: Uint8Array = new Uint8Array(0);
  private durableBytes = 0;

  write(data: Uint8Array, position: number): void {
    assert(position <= this.image.length, `log write at ${position} leaves a hole after ${this.image.length}`);
    const end = position + data.length;
    if (end > this.image.length) {
      const grown = new Uint8Array(Math.max(end, this.image.length * 2));
      grown.set(this.image);
      this.image = grown.subarray(0, end);
    }
    this.image.set(data, position);
  }

  synced(bytes: number): void {
    this.durableBytes = Math.max(this.durableBytes, bytes);
  }

  durableImage(): Uint8Array {
    return this.image.subarray(0, this.durableBytes);
  }

  /** Recovery cut the file to `bytes` and synced it. */
  cut(bytes: number): void {
    this.image = this.image.slice(0, bytes);
    this.durableBytes = bytes;
  }

  /** A power loss: a random part of what was not synced survives, perhaps followed by junk. */
  tear(random: Random): void {
    const kept = this.durableBytes + random.int(0, this.image.length - this.durableBytes);
    const junk = random.chance(0.5) ? random.int(1, JUNK_BYTES_MAX) : 0;
    const torn = new Uint8Array(kept + junk);
    torn.set(this.image.subarray(0, kept));
    for (let i = kept; i < torn.length; i += 1) torn[i] = random.int(0, 255);
    this.image = torn;
    this.durableBytes = kept;
  }
}

/** One incarnation's view of the log's files: every call takes simulated time; killed, it fails
 *  whatever is pending, so the dead AppendLog gives up and closes its file. The compaction's file
 *  is opened for real too, so that AppendLog's own use of the descriptor (room, close) works. */
class MemoryLogIo implements LogIo {
  private readonly pending = new Set<(error: Error) => void>();
  private dead = false;

  constructor(
    private readonly disk: SimLogDisk,
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly life: Life,
  ) {}

  write(fd: number, data: Uint8Array, position: number): Promise<number> {
    // The bytes reach the page cache at once; the call returns a little later.
    const file = this.disk.fileOf(fd);
    if (!this.dead) file.write(data, position);
    return this.later(this.random.between(0.02, 0.3), () => data.length);
  }

  datasync(fd: number): Promise<void> {
    const file = this.disk.fileOf(fd);
    const upTo = file.image.length;
    return this.later(this.random.between(0.1, 1.5), () => file.synced(upTo));
  }

  // The real calls are synchronous: a real asynchronous one would finish at a time the simulation
  // does not decide, and a seed would no longer replay exactly.
  open(path: string, flags: string): Promise<number> {
    return this.later(this.random.between(0.02, 0.3), () => {
      const fd = openSync(path, flags);
      this.disk.openedFile(path, fd);
      return fd;
    });
  }

  rename(from: string, to: string): Promise<void> {
    return this.later(this.random.between(0.02, 0.3), () => {
      renameSync(from, to);
      this.disk.renamed(from);
    });
  }

  syncDir(_path: string): Promise<void> {
    return this.later(this.random.between(0.1, 1.5), () => this.disk.dirSynced());
  }

  kill(): void {
    this.dead = true;
    const error = new Error("the controller crashed");
    for (const reject of this.pending) reject(error);
    this.pending.clear();
  }

  private later<T>(delayMs: number, complete: () => T): Promise<T> {
    if (this.dead) return Promise.reject(new Error("the controller crashed"));
    return new Promise((resolve, reject) => {
      this.pending.add(reject);
      this.scheduler.after(delayMs, this.life, () => {
        this.pending.delete(reject);
        resolve(complete());
      });
    });
  }
}
