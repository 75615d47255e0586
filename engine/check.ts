// A consistency check of the controller's state (like fsck): reference counts match the tables,
// the allocator's used space is exactly the segments some table points at, and a segment is only
// ever shared by disks of one family at one index. Run by `ctl check` and after crash tests.
import type { Catalog } from "./catalog.ts";
import type { Pool } from "./pool.ts";
import { entryContainer, entryLocation, entryOffsetBytes } from "../wasm/entry.ts";

export interface CheckReport {
  disks: number;
  segments: number;
  usedBytes: number;
  problems: string[];
}

export const PROBLEMS_REPORTED_MAX = 100;

export function checkConsistency(catalog: Catalog, pool: Pool): CheckReport {
  const problems: string[] = [];
  const report = (problem: string) => {
    if (problems.length < PROBLEMS_REPORTED_MAX) problems.push(problem);
  };
  // Every location: who points at it.
  const owners = new Map<number, { count: number; family: number; index: number; shift: number; lun: number; offset: number }>();
  for (const disk of catalog.disks.values()) {
    for (const [index, word] of disk.table.locations()) {
      const location = entryLocation(word);
      const owner = owners.get(location);
      if (!owner) {
        owners.set(location, { count: 1, family: disk.family, index, shift: disk.segmentShift, lun: entryContainer(word), offset: entryOffsetBytes(word) });
        continue;
      }
      owner.count += 1;
      if (owner.family !== disk.family || owner.index !== index) {
        report(`segment ${entryContainer(word)}:${entryOffsetBytes(word)} is owned twice: by disk ${disk.name} entry ${index} and by another family or index`);
      }
    }
  }
  const usedByLun = new Map<number, number>();
  for (const owner of owners.values()) {
    const counted = catalog.refs.get(owner.lun, owner.offset);
    if (counted !== owner.count) report(`segment ${owner.lun}:${owner.offset}: reference count ${counted}, but ${owner.count} entries point at it`);
    if (!catalog.luns.has(owner.lun)) report(`segment ${owner.lun}:${owner.offset} lies on an unknown container`);
    usedByLun.set(owner.lun, (usedByLun.get(owner.lun) ?? 0) + 2 ** owner.shift);
  }
  let usedBytes = 0;
  for (const lun of catalog.luns.values()) {
    const expected = usedByLun.get(lun.id) ?? 0;
    usedBytes += expected;
    if (pool.usedBytes(lun.id) !== expected) {
      report(`container ${lun.id}: the allocator has ${pool.usedBytes(lun.id)} bytes in use, the tables point at ${expected} (leaked or doubly owned space)`);
    }
  }
  return { disks: catalog.disks.size, segments: owners.size, usedBytes, problems };
}
