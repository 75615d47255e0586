// A snapshot is an exact point in time (R9) while hosts keep writing at QD32 through two agents:
// every block of the snapshot holds a write acknowledged before the snapshot began or one in
// flight during it, never one issued after the snapshot command returned, and never a write older
// than one acknowledged before it began. For forward and reverse delta.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";
import { BlockClient } from "./helpers/block-client.ts";
import { TAGGED_BLOCK_BYTES, TaggedWriter } from "./helpers/tagged-writer.ts";

const dir = tempDir("point-in-time");
const control = `unix:${join(dir.path, "control.sock")}`;
const sockets = [join(dir.path, "nbd1.sock"), join(dir.path, "nbd2.sock")];
const REGION_BLOCKS = 2048;

beforeAll(async () => {
  const controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "1G"], "controller");
  await controller.waitForLine(/^ready:/);
  for (const [i, socket] of sockets.entries()) {
    const agent = spawnCtl(["--control", control, "agent", "--id", `a${i + 1}`, "--nbd", `unix:${socket}`], `agent${i + 1}`);
    await agent.waitForLine(/registered with the controller/);
  }
});

afterAll(async () => {
  await reapAll();
  dir.remove();
});

/** Checks one writer's region of a snapshot taken between `begin` and `end`. */
function checkRegion(data: Uint8Array, writer: TaggedWriter, begin: number, end: number): void {
  for (let block = 0; block < writer.blocks; block += 1) {
    const stored = new DataView(data.buffer, data.byteOffset + block * TAGGED_BLOCK_BYTES, 4).getUint32(0);
    // The newest write to this block acknowledged before the snapshot began.
    let floor = 0;
    for (let seq = block === 0 ? writer.blocks : block; seq <= writer.lastIssued; seq += writer.blocks) {
      if (writer.acked[seq]! > 0 && writer.acked[seq]! < begin) floor = seq;
    }
    if (stored === 0) {
      expect(floor).toBe(0);
      continue;
    }
    expect(writer.blockOf(stored)).toBe(block);
    expect(stored).toBeGreaterThanOrEqual(floor);
    expect(writer.issued[stored]!).toBeLessThan(end);
  }
}

for (const mode of ["forward", "reverse"] as const) {
  describe(`point in time (${mode})`, () => {
    test(`${mode}: snapshots under QD32 writes through 2 agents hold exactly a point in time`, async () => {
      const disk = `pit-${mode}`;
      expect((await ctl(["--control", control, "disk", "create", disk, "--size", "16M", "--segment-size", "64K", "--mode", mode])).code).toBe(0);
      const writers = [
        await TaggedWriter.open(sockets[0]!, disk, 0, REGION_BLOCKS),
        await TaggedWriter.open(sockets[1]!, disk, REGION_BLOCKS, REGION_BLOCKS),
      ];
      for (const writer of writers) writer.start();
      for (let round = 0; round < 3; round += 1) {
        // Let each writer get some writes acknowledged between snapshots (the test's time limit bounds it).
        await Promise.all(writers.map((writer) => writer.whenAcked(writer.ackedCount + 200)));
        const name = `${disk}-s${round}`;
        const begin = performance.now();
        const taken = await ctl(["--control", control, "snapshot", "create", disk, name]);
        const end = performance.now();
        expect(taken.stderr).toBe("");
        const reader = await BlockClient.open(sockets[round % 2]!, name);
        const data = await reader.read(0, 2 * REGION_BLOCKS * TAGGED_BLOCK_BYTES);
        await reader.close();
        for (const [i, writer] of writers.entries()) {
          checkRegion(data.subarray(i * REGION_BLOCKS * TAGGED_BLOCK_BYTES, (i + 1) * REGION_BLOCKS * TAGGED_BLOCK_BYTES), writer, begin, end);
        }
      }
      for (const writer of writers) await writer.stop();
      expect(writers.every((writer) => writer.ackedCount > 600)).toBe(true);
      const checked = await ctl(["--control", control, "check", "--json"]);
      expect(JSON.parse(checked.stdout).problems).toEqual([]);
    });
  });
}
