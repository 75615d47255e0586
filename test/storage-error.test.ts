// R14: a storage container that fails puts its segments in the error state. Hosts get EIO on
// those segments and nowhere else, `ctl lun list` says so, nothing new is placed on it, and once
// the container works again `ctl lun repair` brings the segments back with their data.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync, renameSync } from "node:fs";
import { join } from "node:path";
import { reapAll, tempDir } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { BlockClient } from "./helpers/block-client.ts";

const MIB = 2 ** 20;
const SEGMENTS = 8;
const EIO = 5;
const HEALTH_WAIT_MS = 15_000;
const dir = tempDir("storage-error");
const spare = join(dir.path, "spare.img");
let system: UpSystem;

interface Lun {
  id: number;
  path: string;
  failed?: string;
  errorEntries: number;
}

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "32M" });
  expect((await system.ctl(["lun", "add", spare, "--size", "32M"])).code).toBe(0);
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

/** 1 MiB whose every 4 KiB block starts with the segment's tag. */
function segmentData(segment: number, round: number): Uint8Array {
  const data = new Uint8Array(MIB);
  const tag = new TextEncoder().encode(`segment-${segment}-round-${round}|`);
  for (let at = 0; at < MIB; at += 4096) data.set(tag, at);
  return data;
}

async function luns(): Promise<Lun[]> {
  const listed = await system.ctl(["lun", "list", "--json"]);
  expect(listed.code).toBe(0);
  return JSON.parse(listed.stdout) as Lun[];
}

async function readErrno(client: BlockClient, offset: number): Promise<number | Uint8Array> {
  try {
    return await client.read(offset, 4096);
  } catch (error) {
    return Number(/errno (\d+)/.exec((error as Error).message)?.[1]);
  }
}

test("a failing container gives EIO on its segments only; after repair they read their data again", async () => {
  await system.createDisk("d", `${2 * SEGMENTS}M`);
  let client = await BlockClient.open(system.nbdSocket, "d");
  // The allocator takes the emptier container, so the segments alternate between the two.
  for (let segment = 0; segment < SEGMENTS; segment += 1) expect(await client.write(segment * MIB, segmentData(segment, 0))).toBe(0);
  expect(await client.flush()).toBe(0);
  const spareBytes = readFileSync(spare);
  const onSpare = new Set<number>();
  for (let segment = 0; segment < SEGMENTS; segment += 1) {
    if (spareBytes.includes(Buffer.from(`segment-${segment}-round-0|`))) onSpare.add(segment);
  }
  expect(onSpare.size).toBeGreaterThan(0);
  expect(onSpare.size).toBeLessThan(SEGMENTS);
  const spareId = (await luns()).find((lun) => lun.path === spare)!.id;

  // The container's file goes away (as a lost device would).
  renameSync(spare, `${spare}.away`);
  await system.child.waitForLine(new RegExp(`^container ${spareId} \\(.*\\) is out of service`), HEALTH_WAIT_MS);
  const failed = await luns();
  expect(failed.find((lun) => lun.id === spareId)!.errorEntries).toBe(onSpare.size);
  expect(failed.filter((lun) => lun.failed !== undefined)).toHaveLength(1);
  const human = await system.ctl(["lun", "list"]);
  expect(human.stdout).toMatch(new RegExp(`FAILED \\(${onSpare.size} entries in E\\)`));

  for (let segment = 0; segment < SEGMENTS; segment += 1) {
    const read = await readErrno(client, segment * MIB);
    if (onSpare.has(segment)) {
      expect(read).toBe(EIO);
      expect(await client.write(segment * MIB, segmentData(segment, 1).subarray(0, 4096))).toBe(EIO);
    } else {
      expect(new TextDecoder().decode((read as Uint8Array).subarray(0, 20))).toStartWith(`segment-${segment}-round-0|`);
      expect(await client.write(segment * MIB + 4096, segmentData(segment, 1).subarray(0, 4096))).toBe(0);
    }
  }
  // New segments go to the healthy container.
  expect(await client.write(SEGMENTS * MIB, segmentData(SEGMENTS, 0))).toBe(0);
  expect(await client.flush()).toBe(0);

  // The failure is durable: a restarted controller keeps the container out of service.
  await client.close();
  await system.restart();
  client = await BlockClient.open(system.nbdSocket, "d");
  expect((await luns()).find((lun) => lun.id === spareId)!.failed).toBeDefined();
  expect(await readErrno(client, [...onSpare][0]! * MIB)).toBe(EIO);

  // Repair refuses while the container still fails, then works once the file is back.
  const early = await system.ctl(["lun", "repair", String(spareId)]);
  expect(early.code).toBe(1);
  expect(early.stderr).toContain("still fails its check");
  renameSync(`${spare}.away`, spare);
  const repaired = await system.ctl(["lun", "repair", String(spareId)]);
  expect(repaired.stderr).toBe("");
  expect(repaired.code).toBe(0);
  expect((await luns()).every((lun) => lun.failed === undefined && lun.errorEntries === 0)).toBe(true);
  for (let segment = 0; segment <= SEGMENTS; segment += 1) {
    const data = await client.read(segment * MIB, 8192);
    expect(new TextDecoder().decode(data.subarray(0, 20))).toStartWith(`segment-${segment}-round-0|`);
    // The second block was written (round 1) only where the segment stayed in service.
    const second = new TextDecoder().decode(data.subarray(4096, 4116));
    expect(second).toStartWith(onSpare.has(segment) || segment === SEGMENTS ? `segment-${segment}-round-0|` : `segment-${segment}-round-1|`);
  }
  for (const segment of onSpare) expect(await client.write(segment * MIB, segmentData(segment, 2).subarray(0, 4096))).toBe(0);
  expect(await client.flush()).toBe(0);
  await client.close();
  const check = await system.ctl(["check"]);
  expect(check.code).toBe(0);
});
