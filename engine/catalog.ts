// The controller's durable state: storage containers (LUNs) and disks with their tables. Every
// change is a log record applied through `apply`, both live (after the record is appended) and on
// recovery (replaying the log), so the two can never disagree.
import { DiskTable } from "./disk-table.ts";
import { NAME_LENGTH_MAX, NAME_PATTERN, PATH_LENGTH_MAX, RUNS_PER_MESSAGE_MAX } from "./wire/messages.ts";
import { array, bool, object, oneOf, str, tuple, uint, type Infer, type Schema } from "./wire/schema.ts";
import { assert } from "./util/assert.ts";
import { SEGMENT_SHIFT_MAX, SEGMENT_SHIFT_MIN } from "../wasm/entry.ts";

const lunRecord = object({ t: oneOf("lun"), id: uint(4095), path: str(PATH_LENGTH_MAX), size: uint(), knownZero: bool });
const highWaterRecord = object({ t: oneOf("hwm"), lun: uint(4095), bytes: uint() });
const diskRecord = object({
  t: oneOf("disk"),
  id: uint(2 ** 32 - 1),
  name: str(NAME_LENGTH_MAX, NAME_PATTERN),
  size: uint(),
  segmentShift: uint(SEGMENT_SHIFT_MAX),
});
const deleteDiskRecord = object({ t: oneOf("rmdisk"), id: uint(2 ** 32 - 1) });
const mapRecord = object({
  t: oneOf("map"),
  disk: uint(2 ** 32 - 1),
  first: uint(2 ** 32 - 1),
  runs: array(tuple<[number, number]>(uint(), uint(2 ** 32)), RUNS_PER_MESSAGE_MAX),
});

export type LunRecord = Infer<typeof lunRecord>;
export type DiskRecord = Infer<typeof diskRecord>;
export type MapRecord = Infer<typeof mapRecord>;
export type LogRecord = LunRecord | Infer<typeof highWaterRecord> | DiskRecord | Infer<typeof deleteDiskRecord> | MapRecord;

const recordSchemas: Record<string, Schema<LogRecord>> = {
  lun: lunRecord,
  hwm: highWaterRecord,
  disk: diskRecord,
  rmdisk: deleteDiskRecord,
  map: mapRecord,
};

export interface Lun {
  id: number;
  path: string;
  size: number;
  /** Bytes below which the container may hold old data; above it, it reads as zeros. */
  highWater: number;
}

export interface Disk {
  id: number;
  name: string;
  size: number;
  segmentShift: number;
  table: DiskTable;
}

/** Validates a record read back from the log; throws a TypeError naming the problem. */
export function parseRecord(value: unknown): LogRecord {
  const kind = typeof value === "object" && value !== null ? (value as { t?: unknown }).t : undefined;
  const schema = typeof kind === "string" && Object.hasOwn(recordSchemas, kind) ? recordSchemas[kind] : undefined;
  if (!schema) throw new TypeError(`unknown log record type ${JSON.stringify(kind)}`);
  return schema(value, "record");
}

export class Catalog {
  readonly luns = new Map<number, Lun>();
  readonly disks = new Map<number, Disk>();
  private nextDiskId = 1;

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

  apply(record: LogRecord): void {
    switch (record.t) {
      case "lun":
        assert(!this.luns.has(record.id), `container ${record.id} added twice`);
        this.luns.set(record.id, { id: record.id, path: record.path, size: record.size, highWater: record.knownZero ? 0 : record.size });
        return;
      case "hwm": {
        const lun = this.luns.get(record.lun);
        assert(lun, `high-water mark for unknown container ${record.lun}`);
        lun.highWater = Math.max(lun.highWater, Math.min(record.bytes, lun.size));
        return;
      }
      case "disk":
        assert(!this.disks.has(record.id), `disk ${record.id} created twice`);
        assert(record.segmentShift >= SEGMENT_SHIFT_MIN, `disk ${record.name}: segment shift ${record.segmentShift} too small`);
        this.disks.set(record.id, {
          id: record.id,
          name: record.name,
          size: record.size,
          segmentShift: record.segmentShift,
          table: new DiskTable(Math.ceil(record.size / 2 ** record.segmentShift)),
        });
        this.nextDiskId = Math.max(this.nextDiskId, record.id + 1);
        return;
      case "rmdisk":
        assert(this.disks.delete(record.id), `deleting unknown disk ${record.id}`);
        return;
      case "map": {
        const disk = this.disks.get(record.disk);
        assert(disk, `mapping for unknown disk ${record.disk}`);
        disk.table.setRuns(record.first, record.runs);
        return;
      }
    }
  }

  /** The records that recreate the current state: what compaction writes. */
  *snapshot(): Generator<LogRecord> {
    for (const lun of this.luns.values()) {
      yield { t: "lun", id: lun.id, path: lun.path, size: lun.size, knownZero: true };
      yield { t: "hwm", lun: lun.id, bytes: lun.highWater };
    }
    for (const disk of this.disks.values()) {
      yield { t: "disk", id: disk.id, name: disk.name, size: disk.size, segmentShift: disk.segmentShift };
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
  }
}
