// The controller's log file on a simulated disk. The real AppendLog writes it through a LogIo
// (engine/log/log-io.ts); here that LogIo keeps the bytes in memory with simulated latency and
// knows which of them an fdatasync made durable. When the controller's host crashes, the bytes
// written since the last fdatasync are torn: a random prefix of them survives, perhaps followed by
// junk. At each start the image is written to a real file for AppendLog.open, so recovery is the
// real code reading the real format.
import { writeFileSync } from "node:fs";
import { Catalog, parseRecord } from "../../engine/catalog.ts";
import type { LogIo } from "../../engine/log/log-io.ts";
import { encodePayload, frameRecords } from "../../engine/log/record.ts";
import { scanRecords } from "../../engine/log/recovery.ts";
import { assert } from "../../engine/util/assert.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";

const JUNK_BYTES_MAX = 64;

export type CrashKind = "process" | "host";

export class SimLogDisk {
  /** The file as its host sees it (page cache included). */
  private image: Uint8Array = new Uint8Array(0);
  private durableBytes = 0;
  private io: MemoryLogIo | null = null;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    readonly path: string,
  ) {}

  /** Puts the image in the real file for AppendLog.open; returns the LogIo for this incarnation.
   *  Recovery will cut a torn tail off and sync the file: the image is cut as it will be. */
  open(life: Life): LogIo {
    assert(this.io === null, "log opened twice without a crash");
    writeFileSync(this.path, this.image);
    const { validBytes } = scanRecords(this.path, this.image);
    this.image = this.image.slice(0, validBytes);
    this.durableBytes = validBytes;
    this.io = new MemoryLogIo(this, this.scheduler, this.random, life);
    return this.io;
  }

  /** The controller is gone: what it was writing fails, and on a host crash the tail tears. */
  crash(kind: CrashKind): void {
    this.io?.kill();
    this.io = null;
    if (kind === "process") return;
    const kept = this.durableBytes + this.random.int(0, this.image.length - this.durableBytes);
    const junk = this.random.chance(0.5) ? this.random.int(1, JUNK_BYTES_MAX) : 0;
    const torn = new Uint8Array(kept + junk);
    torn.set(this.image.subarray(0, kept));
    for (let i = kept; i < torn.length; i += 1) torn[i] = this.random.int(0, 255);
    this.image = torn;
    this.durableBytes = kept;
  }

  /** Replaces the log by the compacted image of what it recovers to, as AppendLog.compact writes
   *  it (the live state's records, sequence numbers continuing). Only between incarnations. */
  compact(): void {
    assert(this.io === null, "compaction of a log in use");
    const scan = scanRecords(this.path, this.image);
    const catalog = new Catalog();
    for (const record of scan.records) catalog.apply(parseRecord(record));
    const payloads = [...catalog.snapshot()].map((record) => encodePayload(record, this.path));
    this.image = frameRecords(payloads, scan.nextSeq);
    this.durableBytes = this.image.length;
  }

  /** The durable records (what a crash now would recover), for comparing with the live state. */
  durableRecords(): object[] {
    return scanRecords(this.path, this.image.subarray(0, this.durableBytes)).records;
  }

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

  get writtenBytes(): number {
    return this.image.length;
  }

  synced(bytes: number): void {
    this.durableBytes = Math.max(this.durableBytes, bytes);
  }
}

/** One incarnation's view of the log file: every call takes simulated time; killed, it fails
 *  whatever is pending, so the dead AppendLog gives up and closes its file. */
class MemoryLogIo implements LogIo {
  private readonly pending = new Set<(error: Error) => void>();
  private dead = false;

  constructor(
    private readonly disk: SimLogDisk,
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly life: Life,
  ) {}

  write(_fd: number, data: Uint8Array, position: number): Promise<number> {
    // The bytes reach the page cache at once; the call returns a little later.
    if (!this.dead) this.disk.write(data, position);
    return this.later(this.random.between(0.02, 0.3), () => data.length);
  }

  datasync(_fd: number): Promise<void> {
    const upTo = this.disk.writtenBytes;
    return this.later(this.random.between(0.1, 1.5), () => this.disk.synced(upTo));
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
