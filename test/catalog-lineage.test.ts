// R17/R19: a disk's line (what it was taken from, the live disks above it), its protection and the
// ids already used come back the same from the log's records and from a compaction of them.
import { describe, expect, test } from "bun:test";
import { Catalog, parseRecord, type Disk, type LogRecord } from "../engine/catalog.ts";

const SHIFT = 16;

function catalogOf(records: LogRecord[]): Catalog {
  const catalog = new Catalog();
  for (const record of records) catalog.apply(parseRecord(record));
  return catalog;
}

/** What compaction writes, read back as recovery would. */
function compacted(catalog: Catalog): Catalog {
  return catalogOf([...catalog.snapshot()]);
}

function lineage(disk: Disk) {
  return { parent: disk.parent, deletedParent: disk.deletedParent, ancestors: disk.ancestors, protected: disk.protected };
}

const history: LogRecord[] = [
  { t: "lun", id: 0, path: "/lun0", size: 2 ** 30, knownZero: true },
  { t: "disk", id: 1, name: "origin", size: 2 ** 20, segmentShift: SHIFT, mode: "forward" },
  { t: "clone", disks: [{ source: 1, id: 2, name: "mid", mode: "forward" }] },
  { t: "clone", disks: [{ source: 2, id: 3, name: "leaf", mode: "forward", protected: true }] },
  { t: "clone", disks: [{ source: 1, id: 4, name: "sibling", mode: "reverse" }] },
  { t: "rmdisk", id: 2 },
  { t: "disk", id: 5, name: "last", size: 2 ** 20, segmentShift: SHIFT },
  { t: "rmdisk", id: 5 },
  { t: "protect", disk: 4, on: true },
  { t: "protect", disk: 4, on: false },
];

describe("catalog lineage", () => {
  test("catalog: a deleted parent leaves its name with its children and its ancestors in their line", () => {
    const catalog = catalogOf(history);
    expect(lineage(catalog.disk(3))).toEqual({ parent: 2, deletedParent: "mid", ancestors: [1], protected: true });
    expect(lineage(catalog.disk(4))).toEqual({ parent: 1, deletedParent: null, ancestors: [1], protected: false });
    expect(lineage(catalog.disk(1))).toEqual({ parent: null, deletedParent: null, ancestors: [], protected: false });
    expect(catalog.childrenOf(catalog.disk(1)).map((disk) => disk.name)).toEqual(["sibling"]);
  });

  test("catalog: compaction keeps every disk's line and protection, and the next id past deleted disks", () => {
    const catalog = catalogOf(history);
    const copy = compacted(catalog);
    for (const id of [1, 3, 4]) expect(lineage(copy.disk(id))).toEqual(lineage(catalog.disk(id)));
    // Disk 5 was deleted before the compaction: its id is not handed out again.
    expect(catalog.newDiskId()).toBe(6);
    expect(copy.newDiskId()).toBe(6);
    expect(compacted(copy).newDiskId()).toBe(6);
  });

  test("catalog: a disk record written before lines were kept takes its parent's line", () => {
    const catalog = catalogOf([
      { t: "disk", id: 1, name: "a", size: 2 ** 20, segmentShift: SHIFT },
      { t: "disk", id: 2, name: "b", size: 2 ** 20, segmentShift: SHIFT, parent: 1, family: 1 },
      { t: "disk", id: 3, name: "c", size: 2 ** 20, segmentShift: SHIFT, parent: 2, family: 1 },
    ]);
    expect(catalog.disk(3).ancestors).toEqual([2, 1]);
  });
});
