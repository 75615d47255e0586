// Crash safety of processes 300, 400 and 500: the controller (here `ctl up`) is killed at each
// step through a test-only failpoint; after a restart the tables are consistent (`ctl check`: no
// segment leaked or owned twice, reference counts right), every acknowledged write reads back on
// its disk, and a snapshot that exists is the point-in-time image it should be.
import { afterAll, describe, expect, test } from "bun:test";
import { reapAll, tempDir } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { BlockClient, filled } from "./helpers/block-client.ts";

const KIB = 1024;
const SEGMENT = 64 * KIB;
const dirs: { remove(): void }[] = [];
afterAll(async () => {
  await reapAll();
  for (const dir of dirs) dir.remove();
});

async function expectConsistent(system: UpSystem): Promise<void> {
  const checked = await system.ctl(["check", "--json"]);
  expect(JSON.parse(checked.stdout).problems).toEqual([]);
  expect(checked.code).toBe(0);
}

async function expectBytes(client: BlockClient, offset: number, length: number, byte: number): Promise<void> {
  const data = await client.read(offset, length);
  const wrong = data.findIndex((value) => value !== byte);
  expect(wrong === -1 ? "all" : `differs at ${offset + wrong}: ${data[wrong]}`).toBe("all");
}

/** A system with disk "d" (4 segments of 0x0a, acknowledged with FLUSH) and the failpoint armed. */
async function prepared(failpoint: string, mode: "forward" | "reverse"): Promise<{ system: UpSystem; client: BlockClient }> {
  const dir = tempDir(`crash-${failpoint}`);
  dirs.push(dir);
  const system = await startUp({ dir: dir.path, lunSize: "64M", env: { TABLEDISK_FAILPOINT: failpoint } });
  await system.createDisk("d", "1M", ["--segment-size", "64K", "--mode", mode]);
  const client = await BlockClient.open(system.nbdSocket, "d");
  expect(await client.write(0, filled(0x0a, 4 * SEGMENT))).toBe(0);
  expect(await client.flush()).toBe(0);
  return { system, client };
}

async function restarted(system: UpSystem): Promise<void> {
  await system.child.exited;
  await system.restart();
  await expectConsistent(system);
}

describe("crash during snapshot creation (process 300)", () => {
  for (const failpoint of ["snapshot-after-nw", "snapshot-after-push", "snapshot-after-clone"]) {
    test(`killed at ${failpoint}: no half snapshot, the origin keeps its data and stays writable`, async () => {
      const { system, client } = await prepared(failpoint, "forward");
      const created = await system.ctl(["snapshot", "create", "d", "s"]);
      expect(created.code).not.toBe(0);
      client.close().catch(() => undefined);
      await restarted(system);
      const listed = JSON.parse((await system.ctl(["disk", "list", "--json"])).stdout) as { name: string }[];
      const names = listed.map((disk) => disk.name).sort();
      // The clone record is the commit point: before it there is no snapshot, after it a whole one.
      expect(names).toEqual(failpoint === "snapshot-after-clone" ? ["d", "s"] : ["d"]);
      const origin = await BlockClient.open(system.nbdSocket, "d");
      await expectBytes(origin, 0, 4 * SEGMENT, 0x0a);
      expect(await origin.write(SEGMENT, filled(0x0b, 4 * KIB))).toBe(0);
      await expectBytes(origin, SEGMENT, 4 * KIB, 0x0b);
      if (names.includes("s")) {
        const snapshot = await BlockClient.open(system.nbdSocket, "s");
        await expectBytes(snapshot, 0, 4 * SEGMENT, 0x0a);
        await snapshot.close();
      }
      await origin.close();
      await expectConsistent(system);
      await system.stop();
    });
  }
});

describe("crash during copy-on-write (processes 400 and 500)", () => {
  const cases: [string, "forward" | "reverse"][] = [
    ["forward-after-copy", "forward"],
    ["forward-after-persist", "forward"],
    ["reverse-after-copy", "reverse"],
    ["reverse-after-remap", "reverse"],
    ["reverse-after-persist", "reverse"],
  ];
  for (const [failpoint, mode] of cases) {
    test(`${mode}: killed at ${failpoint}: the snapshot keeps its image, acknowledged data survives, nothing leaks`, async () => {
      const { system, client } = await prepared(failpoint, mode);
      expect((await system.ctl(["snapshot", "create", "d", "s"])).code).toBe(0);
      // Acknowledged and flushed before the crash: a write to a segment not shared (segment 6 is
      // new; its mapping is committed by the FLUSH, not by the fault).
      expect(await client.write(6 * SEGMENT, filled(0x0c, 4 * KIB))).toBe(0);
      expect(await client.flush()).toBe(0);
      // This write to a shared segment faults, copy-on-write starts, and the controller dies.
      expect(await client.write(SEGMENT + 8 * KIB, filled(0x0d, 4 * KIB)).catch(() => -1)).not.toBe(0);
      client.close().catch(() => undefined);
      await restarted(system);

      const origin = await BlockClient.open(system.nbdSocket, "d");
      const snapshot = await BlockClient.open(system.nbdSocket, "s");
      await expectBytes(snapshot, 0, 4 * SEGMENT, 0x0a);
      await expectBytes(snapshot, 4 * SEGMENT, 4 * SEGMENT, 0);
      await expectBytes(origin, 6 * SEGMENT, 4 * KIB, 0x0c);
      // The unacknowledged write may or may not be there; the rest of the segment is intact.
      await expectBytes(origin, SEGMENT, 8 * KIB, 0x0a);
      await expectBytes(origin, SEGMENT + 12 * KIB, SEGMENT - 12 * KIB, 0x0a);
      const maybe = await origin.read(SEGMENT + 8 * KIB, 4 * KIB);
      expect(maybe.every((byte) => byte === 0x0a) || maybe.every((byte) => byte === 0x0d)).toBe(true);
      // Both sides still copy-on-write correctly after the recovery.
      expect(await origin.write(SEGMENT, filled(0x0e, 4 * KIB))).toBe(0);
      expect(await snapshot.write(2 * SEGMENT, filled(0x0f, 4 * KIB))).toBe(0);
      await expectBytes(snapshot, SEGMENT, 4 * KIB, 0x0a);
      await expectBytes(origin, 2 * SEGMENT, 4 * KIB, 0x0a);
      await origin.close();
      await snapshot.close();
      await expectConsistent(system);
      await system.stop();
    });
  }
});
