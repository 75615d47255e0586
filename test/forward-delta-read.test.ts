// Process 400 through real processes: a disk moved off a shared segment by forward delta must not
// let the segment's remaining holder write it in place while a read of the moved disk, already past
// its lookup, still goes there (it would return the other disk's data). A read stalled in storage
// on agent A holds the move of its disk back, and with it the snapshot's write to the segment.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { reapAll, tempDir } from "./helpers/processes.ts";
import { Cluster } from "./helpers/cluster.ts";
import { BlockClient, filled } from "./helpers/block-client.ts";

const KIB = 1024;
const stallDir = tempDir("forward-delta-read");
const stallReads = join(stallDir.path, "stall-reads");
let cluster: Cluster;

beforeAll(async () => {
  cluster = await Cluster.start({ agents: ["a", "b"], lunSize: "64M", agentEnv: { a: { TABLEDISK_STALL_READS_WHILE: stallReads } } });
});

afterAll(async () => {
  rmSync(stallReads, { force: true });
  await reapAll();
  cluster?.remove();
  stallDir.remove();
});

/** Tracks whether a promise has settled yet. */
function watched<T>(promise: Promise<T>): { promise: Promise<T>; done: () => boolean } {
  let settled = false;
  promise.finally(() => (settled = true)).catch(() => undefined);
  return { promise, done: () => settled };
}

/** Resolves once the controller has persisted the move of `disk` to its own copy (it then only
 *  pushes the change and answers), within a bound. */
async function untilMovePersisted(disk: string): Promise<void> {
  for (let tries = 0; tries < 200; tries += 1) {
    const info = await cluster.ctl(["disk", "info", disk, "--json"]);
    if (JSON.parse(info.stdout).exclusiveBytes > 0) return;
  }
  throw new Error(`the copy-on-write of ${disk} was never persisted`);
}

test("forward delta: the move off a shared segment waits for the moved disk's read in flight; the snapshot's write in place waits with it", async () => {
  for (const disk of ["d", "e"]) {
    expect((await cluster.ctl(["disk", "create", disk, "--size", "1M", "--segment-size", "64K"])).code).toBe(0);
  }
  const dOnB = await BlockClient.open(cluster.socket("b"), "d");
  expect(await dOnB.write(0, filled(0x11, 64 * KIB))).toBe(0);
  expect((await cluster.ctl(["snapshot", "create", "d", "s"])).code).toBe(0);
  const sOnB = await BlockClient.open(cluster.socket("b"), "s");
  const eOnB = await BlockClient.open(cluster.socket("b"), "e");
  const dOnA = await BlockClient.open(cluster.socket("a"), "d");
  expect((await dOnA.read(0, 4 * KIB)).every((byte) => byte === 0x11)).toBe(true); // A has d's entry

  // A read of d on agent A gets past its lookup (the shared segment) and stalls in storage.
  writeFileSync(stallReads, "");
  const seen = cluster.child("a").lines.length;
  const read = watched(dOnA.read(0, 4 * KIB));
  await cluster.child("a").waitForLine(/storage read stalled/, undefined, seen);

  // d's first write after the snapshot moves d to a copy (forward delta): it is held until A's
  // read of d has ended. A write to another disk, sent after it, is served meanwhile.
  const dWrite = watched(dOnB.write(0, filled(0x33, 4 * KIB)));
  await untilMovePersisted("d");
  expect(await eOnB.write(0, filled(0x44, 4 * KIB))).toBe(0);
  expect(dWrite.done()).toBe(false);
  // The snapshot, now the segment's only holder, would write it in place: it waits too.
  const sWrite = watched(sOnB.write(0, filled(0x22, 4 * KIB)));
  expect(await eOnB.write(4 * KIB, filled(0x55, 4 * KIB))).toBe(0);
  expect(read.done() || dWrite.done() || sWrite.done()).toBe(false);

  rmSync(stallReads);
  expect((await read.promise).every((byte) => byte === 0x11)).toBe(true);
  expect(await dWrite.promise).toBe(0);
  expect(await sWrite.promise).toBe(0);
  expect((await dOnA.read(0, 8 * KIB)).subarray(0, 4 * KIB).every((byte) => byte === 0x33)).toBe(true);
  expect((await sOnB.read(0, 8 * KIB)).subarray(0, 4 * KIB).every((byte) => byte === 0x22)).toBe(true);
  expect((await sOnB.read(4 * KIB, 4 * KIB)).every((byte) => byte === 0x11)).toBe(true);
  for (const client of [dOnA, dOnB, sOnB, eOnB]) await client.close();
  const checked = await cluster.ctl(["check", "--json"]);
  expect(JSON.parse(checked.stdout).problems).toEqual([]);
});
