// A controller restart with an agent still serving (R8): I/O on mapped segments goes on while the
// controller is gone, a write that needs the controller waits and then succeeds, and a snapshot
// taken right after the restart is an exact point in time: the controller holds back until the
// agent, which may still be writing with the entries it had, has registered again (dropping
// them) or its lease has run out.
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { Child, ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";
import { BlockClient } from "./helpers/block-client.ts";

const MIB = 2 ** 20;
const BLOCK = 4096;
const MAPPED_BYTES = 8 * MIB;
const BLOCKS = MAPPED_BYTES / BLOCK;
const LEASE_MS = 3_000;
const dirs: { remove(): void }[] = [];

afterAll(async () => {
  await reapAll();
  for (const dir of dirs) dir.remove();
});

/** A directory of its own for each test: control socket, data and NBD sockets. */
function testDir(): { control: string; nbdSocket: string; startController(env?: Record<string, string>): Child } {
  const dir = tempDir("controller-restart");
  dirs.push(dir);
  const control = `unix:${join(dir.path, "control.sock")}`;
  return {
    control,
    nbdSocket: join(dir.path, "nbd.sock"),
    startController: (env = {}) =>
      spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller", env),
  };
}

/** Block contents: the write's sequence number, repeated. */
function tagged(sequence: number): Uint8Array {
  const data = new Uint8Array(BLOCK);
  new DataView(data.buffer).setUint32(0, sequence);
  data.copyWithin(4, 0, BLOCK - 4);
  for (let at = 4; at < BLOCK; at += 4) data.set(data.subarray(0, 4), at);
  return data;
}

function sequenceOf(data: Uint8Array): number {
  return new DataView(data.buffer, data.byteOffset).getUint32(0);
}

test("restart: I/O goes on without the controller, and a snapshot right after the restart is exact", async () => {
  const { control, nbdSocket, startController } = testDir();
  let controller = startController();
  await controller.waitForLine(/^ready:/);
  const agent = spawnCtl(["--control", control, "agent", "--id", "a1", "--nbd", `unix:${nbdSocket}`, "--lease", String(LEASE_MS)], "agent");
  await agent.waitForLine(/registered with the controller/);
  expect((await ctl(["--control", control, "disk", "create", "d", "--size", "64M"])).code).toBe(0);
  const client = await BlockClient.open(nbdSocket, "d");

  // Every block of the first 8 MiB mapped; block b holds sequence b.
  let sequence = 0;
  const acked = new Map<number, number>();
  const write = async (block: number) => {
    const mine = ++sequence;
    expect(await client.write(block * BLOCK, tagged(mine))).toBe(0);
    acked.set(block, mine);
  };
  for (let block = 0; block < BLOCKS; block += 1) await write(block);
  expect(await client.flush()).toBe(0);

  // The controller dies; mapped I/O goes on from the agent's table.
  await controller.kill("SIGKILL");
  for (let i = 0; i < 200; i += 1) await write((i * 37) % BLOCKS);
  // A write to a segment never mapped needs the controller: it waits for it (on its own
  // connection, as BlockClient does one request at a time).
  const other = await BlockClient.open(nbdSocket, "d");
  const unmapped = other.write(MAPPED_BYTES + 5 * BLOCK, tagged(999_999));

  // Back with the agent still holding its old table, which the restarted controller knows
  // nothing about until the agent registers again.
  controller = startController();
  await controller.waitForLine(/^ready:/);
  let stopAt = Infinity;
  const writer = (async () => {
    for (let i = 0; sequence < stopAt; i += 1) await write((i * 101) % BLOCKS);
  })();
  const ackedBefore = new Map(acked);
  const snapshot = await ctl(["--control", control, "snapshot", "create", "d", "s"]);
  expect(snapshot.stderr).toBe("");
  const after = sequence;
  // The writer goes on over the whole disk after the snapshot.
  stopAt = after + BLOCKS;
  await writer;
  expect(await unmapped).toBe(0);
  await other.close();
  expect(await client.flush()).toBe(0);

  // The snapshot holds, per block, a write issued before the snapshot returned and nothing later;
  // never older than what was acknowledged before it was asked for.
  const copy = await BlockClient.open(nbdSocket, "s");
  const wrong: string[] = [];
  for (let block = 0; block < BLOCKS; block += 1) {
    const seen = sequenceOf(await copy.read(block * BLOCK, BLOCK));
    if (seen > after || seen < ackedBefore.get(block)!) wrong.push(`block ${block}: ${seen}`);
  }
  expect(wrong).toEqual([]);
  // The disk itself holds every acknowledged write.
  for (let block = 0; block < BLOCKS; block += 1) expect(sequenceOf(await client.read(block * BLOCK, BLOCK))).toBe(acked.get(block)!);
  expect(sequenceOf(await client.read(MAPPED_BYTES + 5 * BLOCK, BLOCK))).toBe(999_999);
  await copy.close();
  await client.close();
  expect((await ctl(["--control", control, "check"])).code).toBe(0);
});

test("restart: I/O held by a group snapshot whose controller died is released when the agent registers again", async () => {
  const { control, nbdSocket, startController } = testDir();
  // Crashes after the agents quiesced and the first record is written (test-only failpoint).
  let controller = startController({ TABLEDISK_FAILPOINT: "snapshot-after-nw" });
  await controller.waitForLine(/^ready:/);
  const agent = spawnCtl(["--control", control, "agent", "--id", "a2", "--nbd", `unix:${nbdSocket}`], "agent");
  await agent.waitForLine(/registered with the controller/);
  for (const name of ["g1", "g2"]) expect((await ctl(["--control", control, "disk", "create", name, "--size", "4M"])).code).toBe(0);
  const client = await BlockClient.open(nbdSocket, "g1");
  expect(await client.write(0, tagged(1))).toBe(0);
  expect(await client.flush()).toBe(0);

  const group = await ctl(["--control", control, "snapshot", "group", "g1=g1-s", "g2=g2-s"]);
  expect(group.code).toBe(1);
  expect(await controller.exited).not.toBe(0);
  // The agent is still quiesced: this write is held at its gate.
  const held = client.write(BLOCK, tagged(2));
  controller = startController();
  await controller.waitForLine(/^ready:/);
  expect(await held).toBe(0);
  expect(sequenceOf(await client.read(BLOCK, BLOCK))).toBe(2);
  expect(sequenceOf(await client.read(0, BLOCK))).toBe(1);
  await client.close();
  expect((await ctl(["--control", control, "check"])).code).toBe(0);
});
