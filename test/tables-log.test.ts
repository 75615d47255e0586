// The controller's tables and log together (engine/tables-log.ts): a change that does not apply is
// never logged and stops the controller; compaction keeps the log under its stated bound while
// changes go on; the compaction reserve covers what a compaction writes.
import { afterEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Catalog, type LogRecord } from "../engine/catalog.ts";
import { compactionBytesBound, growthBytesBound } from "../engine/compaction-bound.ts";
import { encodePayload, frameRecords } from "../engine/log/record.ts";
import { nodeLogIo } from "../engine/log/log-io.ts";
import { monotonicClock } from "../engine/agent-link.ts";
import { TablesLog } from "../engine/tables-log.ts";
import { COMPACT_SLACK_BYTES_DEFAULT } from "../engine/compaction-schedule.ts";
import { mappedWord } from "../wasm/entry.ts";
import { randomInt, seededRandom, TempDirs } from "./log-helpers.ts";

const temp = new TempDirs();
afterEach(() => temp.removeAll());

const SLACK = 64 * 1024;

function openTables(path: string, options: { compactSlackBytes?: number } = { compactSlackBytes: SLACK }) {
  const catalog = new Catalog();
  const said: string[] = [];
  const fatal: Error[] = [];
  const { tables } = TablesLog.open(path, catalog, { ...options, io: nodeLogIo, clock: monotonicClock, say: (line) => said.push(line), onFatal: (error) => fatal.push(error) });
  return { tables, catalog, said, fatal };
}

const lun: LogRecord = { t: "lun", id: 0, path: "/containers/lun0", size: 2 ** 40, knownZero: true };
const disk = (id: number, entries: number): LogRecord => ({ t: "disk", id, name: `d${id}`, size: entries * 2 ** 16, segmentShift: 16 });
const map = (diskId: number, first: number, offset: number): LogRecord => ({ t: "map", disk: diskId, first, runs: [[mappedWord(0, offset), 1]] });

/** The bytes compaction writes for the catalog as it is. */
function imageBytes(catalog: Catalog): number {
  return frameRecords([...catalog.snapshot()].map((record) => encodePayload(record, "test")), 0).length;
}

describe("tables log", () => {
  test("a change whose record does not apply (a map of an unknown disk) is not logged, and the controller stops", async () => {
    const path = join(temp.make(), "controller.log");
    const { tables, fatal } = openTables(path);
    await tables.persist([lun, disk(1, 16)]);
    const before = readFileSync(path);
    await expect(tables.persist([map(7, 0, 0)])).rejects.toThrow(/the controller has stopped: a map change did not apply \(unknown disk 7\); it was not logged/);
    await new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
    expect(fatal.map((error) => error.message)).toEqual([expect.stringMatching(/did not apply/)]);
    expect(() => tables.record([map(1, 0, 0)])).toThrow(/the controller has stopped/);
    await expect(tables.commit()).rejects.toThrow(/the controller has stopped/);
    expect(readFileSync(path)).toEqual(before);
    await tables.close();
    const reopened = openTables(path);
    expect([...reopened.catalog.disks.keys()]).toEqual([1]);
    expect(reopened.catalog.disk(1).table.locatedCount).toBe(0);
    await reopened.tables.close();
  });

  test("with the default slack the log stays under max(2 x live image, live image + 4 MiB) while mappings change on and on", async () => {
    const path = join(temp.make(), "controller.log");
    const { tables, catalog, said } = openTables(path, {});
    await tables.persist([lun, disk(1, 1024)]);
    const random = seededRandom(3);
    let worst = 0;
    let compactions = 0;
    let previousSize = tables.sizeBytes;
    let offset = 1024;
    // 800 changes of 256 remapped entries: ~11 MiB of records in all.
    for (let round = 0; round < 800; round += 1) {
      await tables.persist(Array.from({ length: 256 }, () => map(1, randomInt(random, 0, 1024), (offset += 1) * 2 ** 16)));
      if (tables.sizeBytes < previousSize) compactions += 1;
      previousSize = tables.sizeBytes;
      // No entry goes back to Z here, so the live state's image now is at least the size the log
      // had after its last compaction.
      const image = imageBytes(catalog);
      worst = Math.max(worst, tables.sizeBytes / Math.max(2 * image, image + COMPACT_SLACK_BYTES_DEFAULT));
    }
    expect(said.filter((line) => line.includes("failed"))).toEqual([]);
    expect(compactions).toBeGreaterThanOrEqual(2);
    // What is appended while a compaction runs comes on top (here: one change of 256 records).
    expect(worst).toBeLessThan(1.01);
    expect(COMPACT_SLACK_BYTES_DEFAULT).toBe(4 * 2 ** 20);
    await tables.close();
  }, 60_000);

  test("the reserve covers what compaction writes, for catalogs of every shape", () => {
    const random = seededRandom(11);
    for (let trial = 0; trial < 30; trial += 1) {
      const catalog = new Catalog();
      const records: LogRecord[] = [lun, { t: "agent", id: "host-1", leaseMs: 10_000 }];
      const disks = randomInt(random, 1, 6);
      for (let id = 1; id <= disks; id += 1) {
        records.push(disk(id, 8192));
        const mapped = randomInt(random, 0, 2000);
        for (let i = 0; i < mapped; i += 1) records.push(map(id, randomInt(random, 0, 8192), (id * 8192 + i) * 2 ** 16));
        if (random() < 0.5) records.push({ t: "present", disk: id, agents: ["host-1", "host-2"] });
      }
      records.push({ t: "clone", disks: [{ source: 1, id: disks + 1, name: "snap", mode: "forward" }] });
      let bound = compactionBytesBound(catalog);
      for (const record of records) {
        bound += growthBytesBound(catalog, [record]);
        catalog.apply(record);
        expect(compactionBytesBound(catalog)).toBeLessThanOrEqual(bound);
      }
      expect(imageBytes(catalog)).toBeLessThanOrEqual(compactionBytesBound(catalog));
    }
  });
});
