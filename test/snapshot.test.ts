// Snapshots (R9-R11, R15, R17) through a real `ctl up`: a snapshot is an exact point-in-time
// image, writes on either side never show through to the other, in forward and reverse delta.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { reapAll, tempDir, TEST_SECRET_FILE } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { BlockClient } from "./helpers/block-client.ts";
import { nbdMap } from "./helpers/nbd-clients.ts";
import { ControllerClient } from "../ctl/client.ts";
import { secretFromFile } from "../engine/secret.ts";

const KIB = 1024;
const SEGMENT = 64 * KIB;
const dir = tempDir("snapshot");
let system: UpSystem;
let control: ControllerClient;

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "256M" });
  control = await ControllerClient.open(system.control, secretFromFile(TEST_SECRET_FILE));
});

afterAll(async () => {
  control?.close();
  await system?.stop();
  await reapAll();
  dir.remove();
});

function pattern(byte: number, length: number): Uint8Array {
  return new Uint8Array(length).fill(byte);
}

function allBytes(data: Uint8Array, byte: number): boolean {
  return data.every((value) => value === byte);
}

async function open(name: string): Promise<BlockClient> {
  return BlockClient.open(system.nbdSocket, name);
}

async function disk(name: string) {
  return (await control.request("disk.info", { name }));
}

for (const mode of ["forward", "reverse"] as const) {
  describe(`snapshots (${mode} delta)`, () => {
    test(`${mode}: overwriting the origin leaves the snapshot unchanged, and the other way round`, async () => {
      const origin = `origin-${mode}`;
      await system.createDisk(origin, "1M", ["--segment-size", "64K", "--mode", mode]);
      const o = await open(origin);
      // Segment 0 whole, segment 1 partly, segment 2 untouched (Z).
      expect(await o.write(0, pattern(0xa1, SEGMENT))).toBe(0);
      expect(await o.write(SEGMENT + 4 * KIB, pattern(0xa2, 8 * KIB))).toBe(0);

      const created = await system.ctl(["snapshot", "create", origin, `snap-${mode}`, "--json"]);
      expect(created.code).toBe(0);
      expect(JSON.parse(created.stdout)).toMatchObject({ name: `snap-${mode}`, parent: origin, mode, sharedBytes: 2 * SEGMENT });
      await system.child.waitForLine(new RegExp(`^nbd\\+unix:///snap-${mode}\\?`));
      expect(await disk(origin)).toMatchObject({ allocatedBytes: 2 * SEGMENT, exclusiveBytes: 0, sharedBytes: 2 * SEGMENT });

      // Overwrite the origin: part of segment 0, all of segment 1, and the Z segment 2.
      expect(await o.write(8 * KIB, pattern(0xb1, 4 * KIB))).toBe(0);
      expect(await o.write(SEGMENT, pattern(0xb2, SEGMENT))).toBe(0);
      expect(await o.write(2 * SEGMENT, pattern(0xb3, 4 * KIB))).toBe(0);

      const s = await open(`snap-${mode}`);
      const snapshotData = await s.read(0, 3 * SEGMENT);
      expect(allBytes(snapshotData.subarray(0, SEGMENT), 0xa1)).toBe(true);
      expect(allBytes(snapshotData.subarray(SEGMENT, SEGMENT + 4 * KIB), 0)).toBe(true);
      expect(allBytes(snapshotData.subarray(SEGMENT + 4 * KIB, SEGMENT + 12 * KIB), 0xa2)).toBe(true);
      expect(allBytes(snapshotData.subarray(SEGMENT + 12 * KIB, 3 * SEGMENT), 0)).toBe(true);

      const originData = await o.read(0, 3 * SEGMENT);
      expect(allBytes(originData.subarray(0, 8 * KIB), 0xa1)).toBe(true);
      expect(allBytes(originData.subarray(8 * KIB, 12 * KIB), 0xb1)).toBe(true);
      expect(allBytes(originData.subarray(12 * KIB, SEGMENT), 0xa1)).toBe(true);
      expect(allBytes(originData.subarray(SEGMENT, 2 * SEGMENT), 0xb2)).toBe(true);
      expect(allBytes(originData.subarray(2 * SEGMENT, 2 * SEGMENT + 4 * KIB), 0xb3)).toBe(true);

      // Overwrite the snapshot (a writable clone): the origin does not see it.
      expect(await s.write(0, pattern(0xc1, 4 * KIB))).toBe(0);
      expect(allBytes((await s.read(0, 4 * KIB)), 0xc1)).toBe(true);
      expect(allBytes((await o.read(0, 4 * KIB)), 0xa1)).toBe(true);
      expect(allBytes((await s.read(4 * KIB, 4 * KIB)), 0xa1)).toBe(true);

      // Nothing is shared any more: every segment was copied once.
      expect(await disk(origin)).toMatchObject({ sharedBytes: 0, exclusiveBytes: 3 * SEGMENT });
      expect(await disk(`snap-${mode}`)).toMatchObject({ sharedBytes: 0, exclusiveBytes: 2 * SEGMENT });
      await o.close();
      await s.close();
    });
  });
}

describe("snapshot life cycle", () => {
  test("TRIM of a segment shared with a snapshot unmaps it for the origin only; the snapshot keeps its data", async () => {
    await system.createDisk("trimmed", "512K", ["--segment-size", "64K"]);
    const o = await open("trimmed");
    expect(await o.write(0, pattern(0x11, 4 * SEGMENT))).toBe(0);
    expect((await control.request("snapshot.create", { source: "trimmed", name: "trimmed-snap" })).sharedBytes).toBe(4 * SEGMENT);
    const lunBefore = (await control.request("lun.list", {}))[0]!.usedBytes;
    // Whole segments 1 and 2, plus a partial piece of 3 (left alone).
    expect(await o.trim(SEGMENT, 2 * SEGMENT + 4 * KIB)).toBe(0);
    expect(allBytes(await o.read(SEGMENT, 2 * SEGMENT), 0)).toBe(true);
    expect(allBytes(await o.read(3 * SEGMENT, SEGMENT), 0x11)).toBe(true);
    const map = await nbdMap(system.uri("trimmed"));
    expect(map.filter((extent) => extent.type === 3)).toContainEqual({ offset: SEGMENT, length: 2 * SEGMENT, type: 3, description: "hole,zero" });
    const s = await open("trimmed-snap");
    expect(allBytes(await s.read(0, 4 * SEGMENT), 0x11)).toBe(true);
    // Shared segments are not freed: the snapshot still uses them.
    expect((await control.request("lun.list", {}))[0]!.usedBytes).toBe(lunBefore);
    // TRIM of the snapshot's copies frees them (nobody else has them now).
    expect(await s.trim(SEGMENT, 2 * SEGMENT)).toBe(0);
    expect((await control.request("lun.list", {}))[0]!.usedBytes).toBe(lunBefore - 2 * SEGMENT);
    await o.close();
    await s.close();
  });

  test("WRITE_ZEROES of whole segments unmaps them (holes again, space back); partial ends are written with zeros", async () => {
    await system.createDisk("zeroed", "512K", ["--segment-size", "64K"]);
    const o = await open("zeroed");
    expect(await o.write(0, pattern(0x31, 8 * SEGMENT))).toBe(0);
    const before = (await control.request("lun.list", {}))[0]!.usedBytes;
    expect(await o.zero(SEGMENT - 4 * KIB, 2 * SEGMENT + 8 * KIB)).toBe(0);
    expect(allBytes(await o.read(SEGMENT - 4 * KIB, 2 * SEGMENT + 8 * KIB), 0)).toBe(true);
    expect(allBytes(await o.read(0, SEGMENT - 4 * KIB), 0x31)).toBe(true);
    expect(allBytes(await o.read(3 * SEGMENT + 4 * KIB, SEGMENT - 4 * KIB), 0x31)).toBe(true);
    expect((await control.request("lun.list", {}))[0]!.usedBytes).toBe(before - 2 * SEGMENT);
    expect(await disk("zeroed")).toMatchObject({ allocatedBytes: 6 * SEGMENT });
    await o.close();
  });

  test("snapshot --invalidate: agents drop the source's entries instead of setting No-write, with the same result", async () => {
    await system.createDisk("inval", "256K", ["--segment-size", "64K"]);
    const o = await open("inval");
    expect(await o.write(0, pattern(0x41, 2 * SEGMENT))).toBe(0);
    const created = await system.ctl(["snapshot", "create", "inval", "inval-snap", "--invalidate"]);
    expect(created.code).toBe(0);
    expect(allBytes(await o.read(0, 2 * SEGMENT), 0x41)).toBe(true);
    expect(await o.write(0, pattern(0x42, 4 * KIB))).toBe(0);
    const s = await open("inval-snap");
    expect(allBytes(await s.read(0, 2 * SEGMENT), 0x41)).toBe(true);
    expect(allBytes(await o.read(0, 4 * KIB), 0x42)).toBe(true);
    await o.close();
    await s.close();
  });

  test("rollback and diff refuse disks that are not of one family", async () => {
    await system.createDisk("stranger", "1M", ["--segment-size", "64K"]);
    await system.createDisk("other-one", "1M", ["--segment-size", "64K"]);
    const rolled = await system.ctl(["disk", "rollback", "stranger", "other-one"]);
    expect(rolled.code).not.toBe(0);
    expect(rolled.stderr).toMatch(/^ctl: error: Cannot roll stranger back to other-one/);
    expect((await system.ctl(["disk", "diff", "stranger", "missing"])).stderr).toMatch(/no disk named "missing"/);
  });

  test("rollback makes a disk its snapshot again, and diff lists exactly the changed segments", async () => {
    await system.createDisk("rolled", "1M", ["--segment-size", "64K"]);
    const o = await open("rolled");
    expect(await o.write(0, pattern(0x21, 8 * SEGMENT))).toBe(0);
    await control.request("snapshot.create", { source: "rolled", name: "rolled-snap" });
    expect(await o.write(2 * SEGMENT + 100, pattern(0x22, 10))).toBe(0);
    expect(await o.write(5 * SEGMENT, pattern(0x23, 2 * SEGMENT))).toBe(0);
    expect(await o.write(12 * SEGMENT, pattern(0x24, 1))).toBe(0);

    const diffed = await system.ctl(["disk", "diff", "rolled", "rolled-snap", "--json"]);
    expect(diffed.code).toBe(0);
    expect(JSON.parse(diffed.stdout)).toEqual([
      { offset: 2 * SEGMENT, length: SEGMENT },
      { offset: 5 * SEGMENT, length: 2 * SEGMENT },
      { offset: 12 * SEGMENT, length: SEGMENT },
    ]);

    // The host keeps its connection open through the rollback, so it is forced.
    const rolled = await system.ctl(["disk", "rollback", "rolled", "rolled-snap", "--force"]);
    expect(rolled.code).toBe(0);
    const data = await o.read(0, 16 * SEGMENT);
    expect(allBytes(data.subarray(0, 8 * SEGMENT), 0x21)).toBe(true);
    expect(allBytes(data.subarray(8 * SEGMENT), 0)).toBe(true);
    expect(JSON.parse((await system.ctl(["disk", "diff", "rolled", "rolled-snap", "--json"])).stdout)).toEqual([]);
    // After the rollback both share everything; a write to either is copy-on-write again.
    expect(await o.write(0, pattern(0x25, 4 * KIB))).toBe(0);
    const s = await open("rolled-snap");
    expect(allBytes(await s.read(0, 4 * KIB), 0x21)).toBe(true);
    await o.close();
    await s.close();
  });

  for (const mode of ["forward", "reverse"] as const) {
    test(`${mode}: a chain of 100 snapshots with writes between each matches a model, and deleting them all in random order frees exactly what they used`, async () => {
      const SEGMENTS = 16;
      const origin = `chain-${mode}`;
      await system.createDisk(origin, `${SEGMENTS * 64}K`, ["--segment-size", "64K", "--mode", mode]);
      const usedAtStart = (await control.request("lun.list", {}))[0]!.usedBytes;
      const o = await open(origin);
      let seed = mode === "forward" ? 42 : 4242;
      const random = (n: number) => (seed = (seed * 48271) % 2147483647) % n;
      // The model: the byte each 4 KiB block of the origin holds, and a copy per snapshot.
      const BLOCKS = (SEGMENTS * SEGMENT) / (4 * KIB);
      const model = new Uint8Array(BLOCKS);
      const snapshots: { name: string; blocks: Uint8Array }[] = [];
      for (let i = 0; i < 100; i += 1) {
        for (let w = 0; w < 3; w += 1) {
          const block = random(BLOCKS);
          const count = 1 + random(Math.min(8, BLOCKS - block));
          const byte = 1 + random(255);
          expect(await o.write(block * 4 * KIB, pattern(byte, count * 4 * KIB))).toBe(0);
          model.fill(byte, block, block + count);
        }
        const name = `${origin}-${i}`;
        await control.request("snapshot.create", { source: origin, name });
        snapshots.push({ name, blocks: model.slice() });
      }
      // Every snapshot reads exactly as the origin was when it was taken.
      for (const snapshot of snapshots) {
        const client = await open(snapshot.name);
        const data = await client.read(0, SEGMENTS * SEGMENT);
        for (let block = 0; block < BLOCKS; block += 1) {
          if (!allBytes(data.subarray(block * 4 * KIB, (block + 1) * 4 * KIB), snapshot.blocks[block]!)) {
            throw new Error(`${snapshot.name}: block ${block} differs from the model`);
          }
        }
        await client.close();
      }
      const order = snapshots.map((s) => s.name).sort(() => random(3) - 1);
      for (const name of order) await control.request("disk.delete", { name });
      // What is left is the origin alone: one segment for each segment the model ever wrote.
      const blocksPerSegment = SEGMENT / (4 * KIB);
      let written = 0;
      for (let segment = 0; segment < SEGMENTS; segment += 1) {
        if (model.subarray(segment * blocksPerSegment, (segment + 1) * blocksPerSegment).some((byte) => byte !== 0)) written += 1;
      }
      expect(await disk(origin)).toMatchObject({ allocatedBytes: written * SEGMENT, exclusiveBytes: written * SEGMENT, sharedBytes: 0 });
      expect((await control.request("lun.list", {}))[0]!.usedBytes).toBe(usedAtStart + written * SEGMENT);
      const data = await o.read(0, SEGMENTS * SEGMENT);
      for (let block = 0; block < BLOCKS; block += 1) expect(allBytes(data.subarray(block * 4 * KIB, (block + 1) * 4 * KIB), model[block]!)).toBe(true);
      await o.close();
      await control.request("disk.delete", { name: origin });
      expect((await control.request("lun.list", {}))[0]!.usedBytes).toBe(usedAtStart);
    });
  }
});
