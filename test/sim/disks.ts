// The workload's own record of the disks it made: geometry, family, whether hosts write to it,
// and the per-block locks that keep two writes to one block from being in flight at once (so the
// model knows their order). A disk is paused while a rollback or delete works on it.
import { assert } from "../../engine/util/assert.ts";
import type { ModelDisk } from "./model.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES } from "./storage.ts";

/** How often a pause looks again whether a disk's requests have finished. */
const PAUSE_POLL_MS = 5;

export class DiskInfo {
  paused = false;
  /** Host requests in flight on this disk, and how many of them write. */
  busy = 0;
  writing = 0;
  /** The host that writes to it (a VM's disk is attached to one host at a time); null while it
   *  moves. Any host may read. */
  writer: string | null = null;
  /** The agents hosts may reach it through (null: every agent). The controller may present it on
   *  more (an export whose answer was lost), never on fewer. */
  exportedTo: Set<string> | null = null;
  private readonly locked: Uint8Array;

  constructor(
    readonly model: ModelDisk,
    readonly segmentShift: number,
    /** The origin disk of its family: only disks of one family share segments. */
    readonly family: string,
    /** Hosts write to it (an origin or a clone); frozen snapshots are only read. */
    readonly writable: boolean,
  ) {
    this.locked = new Uint8Array(model.blocks.length);
  }

  get name(): string {
    return this.model.name;
  }

  get blockCount(): number {
    return this.model.blocks.length;
  }

  get sizeBytes(): number {
    return this.blockCount * BLOCK_BYTES;
  }

  get segmentBlocks(): number {
    return 2 ** this.segmentShift / BLOCK_BYTES;
  }

  presentedTo(host: string): boolean {
    return this.exportedTo === null || this.exportedTo.has(host);
  }

  /** Locks blocks [first, first+count) for a write; false if any is taken. */
  tryLock(first: number, count: number): boolean {
    for (let i = first; i < first + count; i += 1) if (this.locked[i]) return false;
    this.locked.fill(1, first, first + count);
    return true;
  }

  unlock(first: number, count: number): void {
    this.locked.fill(0, first, first + count);
  }
}

export class DiskRegistry {
  private readonly disks = new Map<string, DiskInfo>();
  private counter = 0;

  add(info: DiskInfo): void {
    assert(!this.disks.has(info.name), `disk ${info.name} registered twice`);
    this.disks.set(info.name, info);
  }

  remove(name: string): void {
    this.disks.delete(name);
  }

  all(): DiskInfo[] {
    return [...this.disks.values()];
  }

  /** Disks hosts may use now: to read, or to write from `writer` (any host: "*"); through the
   *  agent of host `through` if given. */
  usable(writer?: string, through?: string): DiskInfo[] {
    return this.all().filter(
      (disk) =>
        !disk.paused &&
        (writer === undefined || (disk.writable && (writer === "*" || disk.writer === writer))) &&
        (through === undefined || disk.presentedTo(through)),
    );
  }

  newName(prefix: string): string {
    this.counter += 1;
    return `${prefix}${this.counter}`;
  }

  /** Stops new host requests to `disks` and waits for those in flight. */
  async pause(disks: DiskInfo[], scheduler: Scheduler, life: Life): Promise<void> {
    for (const disk of disks) disk.paused = true;
    while (disks.some((disk) => disk.busy > 0)) await scheduler.sleep(PAUSE_POLL_MS, life);
  }

  /** Moves a disk's writes to another host, once those of the old one have finished. */
  async move(disk: DiskInfo, writer: string, scheduler: Scheduler, life: Life): Promise<void> {
    disk.writer = null;
    while (disk.writing > 0) await scheduler.sleep(PAUSE_POLL_MS, life);
    disk.writer = writer;
  }

  resume(disks: DiskInfo[]): void {
    for (const disk of disks) disk.paused = false;
  }
}
