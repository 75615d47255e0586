// An upper bound on what a compaction of the catalog writes, worked out from counts without
// encoding anything: the log keeps that much room in reserve so a compaction can run on a full
// file system (tables-log.ts). `test/compaction-bound.test.ts` holds it against real compactions.
import type { Catalog, LogRecord } from "./catalog.ts";
import { ZERO_WORD } from "../wasm/entry.ts";

/** A framed map record of a single entry: the most one non-Z entry costs in a compacted log. */
const ENTRY_BYTES = 80;
/** A framed disk record without its ancestors, and a present record without its names. */
const DISK_BYTES = 1024;
/** A framed lun and hwm record without the path, and a lunhealth record without its reason. */
const LUN_BYTES = 256;
const AGENT_BYTES = 256;
/** The diskids record, with room to spare. */
const FIXED_BYTES = 1024;
/** A disk id in msgpack, at most. */
const ID_BYTES = 5;
/** UTF-8 bytes per UTF-16 code unit, at most. */
const CHAR_BYTES = 3;

export function compactionBytesBound(catalog: Catalog): number {
  let bytes = FIXED_BYTES + catalog.agents.size * AGENT_BYTES;
  for (const lun of catalog.luns.values()) bytes += lunBytes(lun.path, lun.failed);
  for (const disk of catalog.disks.values()) {
    bytes += diskBytes(disk.ancestors.length, disk.exports) + disk.table.nonZeroCount * ENTRY_BYTES;
  }
  return bytes;
}

/** How much `records`, once applied, can add to `compactionBytesBound` (before they are). */
export function growthBytesBound(catalog: Catalog, records: readonly LogRecord[]): number {
  let bytes = 0;
  for (const record of records) {
    switch (record.t) {
      case "map":
        for (const [word, count] of record.runs) if (word !== ZERO_WORD) bytes += count * ENTRY_BYTES;
        break;
      case "clone":
        for (const { source } of record.disks) {
          const from = catalog.disks.get(source);
          if (from) bytes += diskBytes(from.ancestors.length + 1, from.exports) + from.table.nonZeroCount * ENTRY_BYTES;
        }
        break;
      case "rollback":
        bytes += (catalog.disks.get(record.from)?.table.nonZeroCount ?? 0) * ENTRY_BYTES;
        break;
      case "disk":
        bytes += diskBytes(record.ancestors?.length ?? catalog.disks.size, null);
        break;
      case "present":
        bytes += diskBytes(0, record.agents);
        break;
      case "lun":
        bytes += lunBytes(record.path, null);
        break;
      case "lunhealth":
        bytes += (record.failed?.length ?? 0) * CHAR_BYTES;
        break;
      case "agent":
        bytes += AGENT_BYTES;
        break;
      default:
        break; // the others change what is there without adding to it
    }
  }
  return bytes;
}

function diskBytes(ancestors: number, exports: readonly string[] | null): number {
  let bytes = DISK_BYTES + ancestors * ID_BYTES;
  for (const agent of exports ?? []) bytes += agent.length * CHAR_BYTES + ID_BYTES;
  return bytes;
}

function lunBytes(path: string, failed: string | null): number {
  return LUN_BYTES + (path.length + (failed?.length ?? 0)) * CHAR_BYTES;
}
