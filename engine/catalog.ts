// The controller's durable state: storage containers (LUNs) and disks with their tables. Every
// change is a log record applied through `apply`, both live (after the record is appended) and on
// recovery (replaying the log), so the two can never disagree.
import { DiskTable } from "./disk-table.ts";
import { RefCounts } from "./refcounts.ts";
import { AGENTS_MAX, DISK_MODES, LEASE_MS_MAX, LUN_FAILURE_LENGTH_MAX, DISKS_MAX, NAME_LENGTH_MAX, NAME_PATTERN, NAME_RULE, PATH_LENGTH_MAX, RUNS_PER_MESSAGE_MAX } from "./wire/messages.ts";
import { array, bool, object, oneOf, optional, str, tuple, uint, type Infer, type Schema } from "./wire/schema.ts";
import { assert } from "./util/assert.ts";
import {
  ENTRY_NO_WRITE,
  SEGMENT_SHIFT_MAX,
  SEGMENT_SHIFT_MIN,
  entryContainer,
  entryLocation,
  entryOffsetBytes,
  entryState,
  ERROR_WORD,
  hasLocation,
  withState,
} from "../wasm/entry.ts";
import type { Runs } from "./wire/messages.ts";

const lunRecord = object({ t: oneOf("lun"), id: uint(4095), path: str(PATH_LENGTH_MAX), size: uint(), knownZero: bool });
const highWaterRecord = object({ t: oneOf("hwm"), lun: uint(4095), bytes: uint() });
/** R14: a container found failing (with why), or back in service (no `failed`). */
const lunHealthRecord = object({ t: oneOf("lunhealth"), lun: uint(4095), failed: optional(str(LUN_FAILURE_LENGTH_MAX)) });
export type DiskMode = (typeof DISK_MODES)[number];
const diskId = uint(2 ** 32 - 1);
const diskName = str(NAME_LENGTH_MAX, NAME_PATTERN, NAME_RULE);

const diskRecord = object({
  t: oneOf("disk"),
  id: diskId,
  name: diskName,
  size: uint(),
  segmentShift: uint(SEGMENT_SHIFT_MAX),
  mode: optional(oneOf(...DISK_MODES)),
  /** The disk this one was snapshotted from, and the family of disks that may share segments. */
  parent: optional(diskId),
  family: optional(diskId),
  /** Written by compaction: the live disks it descends from, nearest first (default: the parent's
   *  line), the name its parent had when it was deleted, and whether it is protected. */
  ancestors: optional(array(diskId, DISKS_MAX)),
  deletedParent: optional(diskName),
  protected: optional(bool),
});
/** Written by compaction: disk ids below `next` were used (deleted disks' too), so a new disk never
 *  takes the id a snapshot's parent had. */
const diskIdsRecord = object({ t: oneOf("diskids"), next: diskId });
/**
 * A controller run begins (at 0, the first record it appends), or, written by compaction, `at`
 * records of that run came before the snapshot. Recovery counts on from there, so it knows how
 * many records of each recent run are durable (restore.ts).
 */
const runRecord = object({ t: oneOf("run"), id: uint(), at: uint() });
/** Controller runs whose record counts are kept (an agent hands back changes of the last one or two). */
export const RUNS_KEPT = 16;
/** A disk protected (on) or no longer: protected disks are read-only and cannot be deleted. */
const protectRecord = object({ t: oneOf("protect"), disk: diskId, on: bool });
const deleteDiskRecord = object({ t: oneOf("rmdisk"), id: diskId });
const mapRecord = object({
  t: oneOf("map"),
  disk: diskId,
  first: uint(2 ** 32 - 1),
  runs: array(tuple<[number, number]>(uint(), uint(2 ** 32)), RUNS_PER_MESSAGE_MAX),
});
/** Step 310: No-write on every entry with a location, for each disk listed. */
const noWriteRecord = object({ t: oneOf("nw"), disks: array(diskId, DISKS_MAX) });
/** Step 330: new disks whose tables are copies of their sources' (No-write included). */
const cloneRecord = object({
  t: oneOf("clone"),
  disks: array(object({ source: diskId, id: diskId, name: diskName, mode: oneOf(...DISK_MODES), protected: optional(bool) }), DISKS_MAX),
});
/** The agents (hosts) a disk is presented to (R7); a disk never given a list is presented to all. */
const presentRecord = object({ t: oneOf("present"), disk: diskId, agents: array(diskName, AGENTS_MAX) });
/** An agent the controller has served, with its lease: after a restart the controller waits for
 *  it to register again, or for its lease to run out, before changing what it may hold (R8). */
const agentRecord = object({ t: oneOf("agent"), id: diskName, leaseMs: uint(LEASE_MS_MAX) });
/** An agent fenced after its lease ran out: it holds nothing any more. */
const agentGoneRecord = object({ t: oneOf("agentgone"), id: diskName });
/** A disk's table replaced by a copy of another disk's (rollback to a snapshot). */
const rollbackRecord = object({ t: oneOf("rollback"), disk: diskId, from: diskId });

export type LunRecord = Infer<typeof lunRecord>;
export type DiskRecord = Infer<typeof diskRecord>;
export type MapRecord = Infer<typeof mapRecord>;
export type LogRecord =
  | LunRecord
  | Infer<typeof highWaterRecord>
  | Infer<typeof lunHealthRecord>
  | DiskRecord
  | Infer<typeof deleteDiskRecord>
  | MapRecord
  | Infer<typeof noWriteRecord>
  | Infer<typeof cloneRecord>
  | Infer<typeof rollbackRecord>
  | Infer<typeof presentRecord>
  | Infer<typeof agentRecord>
  | Infer<typeof agentGoneRecord>
  | Infer<typeof diskIdsRecord>
  | Infer<typeof protectRecord>
  | Infer<typeof runRecord>;

const recordSchemas: Record<string, Schema<LogRecord>> = {
  lun: lunRecord,
  hwm: highWaterRecord,
  lunhealth: lunHealthRecord,
  disk: diskRecord,
  rmdisk: deleteDiskRecord,
  map: mapRecord,
  nw: noWriteRecord,
  clone: cloneRecord,
  rollback: rollbackRecord,
  present: presentRecord,
  agent: agentRecord,
  agentgone: agentGoneRecord,
  diskids: diskIdsRecord,
  protect: protectRecord,
  run: runRecord,
};

export interface Lun {
  id: number;
  path: string;
  size: number;
  /** Bytes below which the container may hold old data; above it, it reads as zeros. */
  highWater: number;
  /** Why the container is out of service (R14), or null. Its segments keep their mappings in the
   *  tables; agents see them as E until the container is repaired. */
  failed: string | null;
}

export interface Disk {
  id: number;
  name: string;
  size: number;
  segmentShift: number;
  mode: DiskMode;
  /** The disk this one was snapshotted from (it may be deleted since: see deletedParent). */
  parent: number | null;
  /** The name the parent had when it was deleted, or null while it exists (or there is none). */
  deletedParent: string | null;
  /** The live disks this one descends from, nearest first: a rollback takes only a descendant. */
  ancestors: number[];
  /** Read-only for hosts; cannot be deleted or rolled back over until unprotected. */
  protected: boolean;
  /** Disks of one family (a disk and its snapshots and clones) are the only ones that share segments. */
  family: number;
  /** Agent ids the disk is presented to, or null: every agent. */
  exports: string[] | null;
  table: DiskTable;
}

/** A storage segment whose last reference went away. */
export interface Freed {
  lun: number;
  offset: number;
  shift: number;
}

/** Validates a record read back from the log; throws a TypeError naming the problem. */
export function parseRecord(value: unknown): LogRecord {
  const kind = typeof value === "object" && value !== null ? (value as { t?: unknown }).t : undefined;
  const schema = typeof kind === "string" && Object.hasOwn(recordSchemas, kind) ? recordSchemas[kind] : undefined;
  if (!schema) throw new TypeError(`unknown log record type ${JSON.stringify(kind)}`);
  return schema(value, "record");
}

/** A change whose records did not all apply: none was appended, but the catalog may hold part of
 *  it, so it no longer matches the log. */
export class ChangeNotAppliedError extends Error {
  override name = "ChangeNotAppliedError";
}

/** The log calls `appendAndApply` needs: admit a change (or refuse it, changing nothing), append it. */
export interface ChangeLog<Prepared> {
  prepare(records: readonly object[], reserveBytes?: number): Prepared;
  appendPrepared(prepared: Prepared): void;
}

/**
 * Has the log admit `records` (room for them and `reserveBytes` more), applies them, and only then
 * appends them (durable at the log's next commit): the log never holds a record that recovery
 * cannot apply. Returns the segments they left unreferenced.
 * @throws what the log's admission throws (nothing changed), or ChangeNotAppliedError.
 */
export function appendAndApply<Prepared>(log: ChangeLog<Prepared>, catalog: Catalog, records: LogRecord[], reserveBytes = 0): Freed[] {
  const prepared = log.prepare(records, reserveBytes);
  const freed: Freed[] = [];
  try {
    for (const record of records) freed.push(...catalog.apply(record));
  } catch (error) {
    const kinds = records.map((record) => record.t).join("+");
    throw new ChangeNotAppliedError(`a ${kinds} change did not apply (${(error as Error).message}); it was not logged`, { cause: error });
  }
  log.appendPrepared(prepared);
  return freed;
}

export class Catalog {
  readonly luns = new Map<number, Lun>();
  readonly disks = new Map<number, Disk>();
  readonly refs = new RefCounts();
  /** Agents that may hold tables, with their lease in ms. */
  readonly agents = new Map<string, number>();
  private nextDiskId = 1;
  /** Recent controller runs -> how many records of each (after its "run" record) were applied. */
  readonly runs = new Map<number, number>();
  private currentRun: number | null = null;

  diskByName(name: string): Disk | undefined {
    for (const disk of this.disks.values()) if (disk.name === name) return disk;
    return undefined;
  }

  newDiskId(): number {
    return this.nextDiskId;
  }

  newLunId(): number {
    let id = 0;
    while (this.luns.has(id)) id += 1;
    return id;
  }

  /**
   * Applies one record. Returns the segments it left unreferenced; the caller frees them once the
   * record is durable (on recovery the pool is rebuilt from the tables instead).
   */
  apply(record: LogRecord): Freed[] {
    const freed: Freed[] = [];
    if (record.t !== "run" && this.currentRun !== null) this.runs.set(this.currentRun, this.runs.get(this.currentRun)! + 1);
    switch (record.t) {
      case "run":
        this.runs.delete(record.id);
        this.runs.set(record.id, record.at);
        this.currentRun = record.id;
        for (const old of this.runs.keys()) if (this.runs.size > RUNS_KEPT) this.runs.delete(old);
        break;
      case "lun":
        assert(!this.luns.has(record.id), `container ${record.id} added twice`);
        this.luns.set(record.id, { id: record.id, path: record.path, size: record.size, highWater: record.knownZero ? 0 : record.size, failed: null });
        break;
      case "hwm": {
        const lun = this.luns.get(record.lun);
        assert(lun, `high-water mark for unknown container ${record.lun}`);
        lun.highWater = Math.max(lun.highWater, Math.min(record.bytes, lun.size));
        break;
      }
      case "agent":
        this.agents.set(record.id, record.leaseMs);
        break;
      case "agentgone":
        this.agents.delete(record.id);
        break;
      case "lunhealth": {
        const lun = this.luns.get(record.lun);
        assert(lun, `health of unknown container ${record.lun}`);
        lun.failed = record.failed ?? null;
        break;
      }
      case "disk":
        assert(!this.disks.has(record.id), `disk ${record.id} created twice`);
        assert(record.segmentShift >= SEGMENT_SHIFT_MIN, `disk ${record.name}: segment shift ${record.segmentShift} too small`);
        this.addDisk({
          id: record.id,
          name: record.name,
          size: record.size,
          segmentShift: record.segmentShift,
          mode: record.mode ?? "forward",
          parent: record.parent ?? null,
          deletedParent: record.deletedParent ?? null,
          ancestors: record.ancestors ?? this.lineOf(record.parent),
          protected: record.protected ?? false,
          family: record.family ?? record.id,
          exports: null,
          table: new DiskTable(Math.ceil(record.size / 2 ** record.segmentShift)),
        });
        break;
      case "rmdisk": {
        const disk = this.disk(record.id);
        for (const [, word] of disk.table.locations()) this.release(word, disk.segmentShift, freed);
        this.disks.delete(record.id);
        // Its snapshots and clones keep their line: the parent's name, and the ancestors above it.
        for (const other of this.disks.values()) {
          if (other.parent === disk.id) other.deletedParent = disk.name;
          other.ancestors = other.ancestors.filter((id) => id !== disk.id);
        }
        break;
      }
      case "diskids":
        this.nextDiskId = Math.max(this.nextDiskId, record.next);
        break;
      case "protect":
        this.disk(record.disk).protected = record.on;
        break;
      case "map": {
        const disk = this.disk(record.disk);
        let index = record.first;
        for (const [word, count] of record.runs) {
          for (let i = 0; i < count; i += 1) this.setEntry(disk, index + i, word, freed);
          index += count;
        }
        break;
      }
      case "nw":
        for (const id of record.disks) {
          const disk = this.disk(id);
          for (const [index, word] of [...disk.table.locations()]) {
            if ((entryState(word) & ENTRY_NO_WRITE) === 0) disk.table.set(index, withState(word, entryState(word) | ENTRY_NO_WRITE));
          }
        }
        break;
      case "clone":
        for (const { source, id, name, mode, protected: isProtected } of record.disks) {
          const from = this.disk(source);
          assert(!this.disks.has(id), `disk ${id} created twice`);
          const exports = from.exports && [...from.exports];
          const disk: Disk = {
            ...from,
            id,
            name,
            mode,
            parent: from.id,
            deletedParent: null,
            ancestors: this.lineOf(from.id),
            protected: isProtected ?? false,
            exports,
            table: new DiskTable(from.table.entryCount),
          };
          disk.table.copyFrom(from.table);
          for (const [, word] of disk.table.locations()) this.refs.add(entryContainer(word), entryOffsetBytes(word), 1);
          this.addDisk(disk);
        }
        break;
      case "present":
        this.disk(record.disk).exports = [...new Set(record.agents)].sort();
        break;
      case "rollback": {
        const disk = this.disk(record.disk);
        const from = this.disk(record.from);
        assert(disk.family === from.family && disk.table.entryCount === from.table.entryCount, "rollback between unrelated disks");
        for (const [, word] of disk.table.locations()) this.release(word, disk.segmentShift, freed);
        disk.table.copyFrom(from.table);
        for (const [, word] of disk.table.locations()) this.refs.add(entryContainer(word), entryOffsetBytes(word), 1);
        break;
      }
    }
    return freed;
  }

  /** The line of a disk made from `parent`: the parent and every live disk above it. */
  private lineOf(parent: number | undefined): number[] {
    const from = parent === undefined ? undefined : this.disks.get(parent);
    return from ? [from.id, ...from.ancestors] : [];
  }

  /** The live disks made from `disk` (snapshots and clones of it). */
  childrenOf(disk: Disk): Disk[] {
    return [...this.disks.values()].filter((other) => other.parent === disk.id);
  }

  private addDisk(disk: Disk): void {
    this.disks.set(disk.id, disk);
    this.nextDiskId = Math.max(this.nextDiskId, disk.id + 1);
  }

  disk(id: number): Disk {
    const disk = this.disks.get(id);
    assert(disk, `unknown disk ${id}`);
    return disk;
  }

  /** Replaces one entry, keeping the reference counts of the old and new locations right. */
  private setEntry(disk: Disk, index: number, word: number, freed: Freed[]): void {
    const old = disk.table.get(index);
    if (old === word) return;
    if (hasLocation(word)) this.refs.add(entryContainer(word), entryOffsetBytes(word), 1);
    if (hasLocation(old)) this.release(old, disk.segmentShift, freed);
    disk.table.set(index, word);
  }

  private release(word: number, shift: number, freed: Freed[]): void {
    const lun = entryContainer(word);
    const offset = entryOffsetBytes(word);
    if (this.refs.add(lun, offset, -1) === 0) freed.push({ lun, offset, shift });
  }

  /** How many entries (over all disks) point at the location of `word`. */
  references(word: number): number {
    return hasLocation(word) ? this.refs.get(entryContainer(word), entryOffsetBytes(word)) : 0;
  }

  /** Entries [first, first+count) as agents must see them: a segment on a failed container is E
   *  (R14), though the table keeps its location for when the container is repaired. */
  agentRuns(disk: Disk, first: number, count: number): Runs {
    const runs = disk.table.runs(first, count);
    if (![...this.luns.values()].some((lun) => lun.failed !== null)) return runs;
    return runs.map(([word, length]) => [hasLocation(word) && this.luns.get(entryContainer(word))?.failed ? ERROR_WORD : word, length]);
  }

  /** The other disks of the family whose entry `index` holds the same location as `word`. */
  sharers(disk: Disk, index: number, word: number): Disk[] {
    const location = entryLocation(word);
    return [...this.disks.values()].filter(
      (other) => other !== disk && other.family === disk.family && index < other.table.entryCount && entryLocation(other.table.get(index)) === location,
    );
  }

  /** How many records of the current controller run were applied: the position of the last one. */
  get runPosition(): number {
    return this.currentRun === null ? 0 : this.runs.get(this.currentRun)!;
  }

  /** The records that recreate the current state: what compaction writes. */
  *snapshot(): Generator<LogRecord> {
    yield { t: "diskids", next: this.nextDiskId };
    for (const lun of this.luns.values()) {
      yield { t: "lun", id: lun.id, path: lun.path, size: lun.size, knownZero: true };
      yield { t: "hwm", lun: lun.id, bytes: lun.highWater };
      if (lun.failed !== null) yield { t: "lunhealth", lun: lun.id, failed: lun.failed };
    }
    for (const [id, leaseMs] of this.agents) {
      yield { t: "agent", id, leaseMs };
    }
    for (const disk of this.disks.values()) {
      yield {
        t: "disk",
        id: disk.id,
        name: disk.name,
        size: disk.size,
        segmentShift: disk.segmentShift,
        mode: disk.mode,
        parent: disk.parent ?? undefined,
        family: disk.family,
        ancestors: disk.ancestors,
        deletedParent: disk.deletedParent ?? undefined,
        protected: disk.protected || undefined,
      };
      if (disk.exports) yield { t: "present", disk: disk.id, agents: disk.exports };
      let batch: MapRecord | null = null;
      for (const [index, word] of disk.table.nonZero()) {
        if (batch && batch.first + batch.runs.length === index && batch.runs.length < RUNS_PER_MESSAGE_MAX) {
          batch.runs.push([word, 1]);
          continue;
        }
        if (batch) yield batch;
        batch = { t: "map", disk: disk.id, first: index, runs: [[word, 1]] };
      }
      if (batch) yield batch;
    }
    // Last, so that the current run is the last one named and records appended later count on.
    for (const [id, at] of this.runs) yield { t: "run", id, at };
  }
}
