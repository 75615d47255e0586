// Disk ids are never reused, also across a compaction of the log and a restart: an agent keys what
// it knows of a disk (its table, a "mappings lost" mark that fails the next FLUSH) by id, so a new
// disk under an old id could inherit the old one's state.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { reapAll, tempDir, TEST_SECRET_FILE } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { BlockClient } from "./helpers/block-client.ts";
import { ControllerClient } from "../ctl/client.ts";
import { secretFromFile } from "../engine/secret.ts";

const dir = tempDir("disk-ids");
let system: UpSystem;

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "64M", extraArgs: ["--log-compact-slack", "4K"] });
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

async function withControl(work: (control: ControllerClient) => Promise<void>): Promise<void> {
  const control = await ControllerClient.open(system.control, secretFromFile(TEST_SECRET_FILE));
  try {
    await work(control);
  } finally {
    control.close();
  }
}

async function diskId(name: string): Promise<number> {
  const info = await system.ctl(["disk", "info", name, "--json"]);
  expect(info.code).toBe(0);
  return JSON.parse(info.stdout).id as number;
}

/** A 4 KiB write and a FLUSH through NBD; the NBD error of each (0: none). */
/** Disks created and deleted at most to make the log compact. */
const CHURN_MAX = 2_000;

async function writeAndFlush(name: string): Promise<{ write: number; flush: number }> {
  const client = await BlockClient.open(system.nbdSocket, name);
  try {
    return { write: await client.write(0, new Uint8Array(4096).fill(0x5a)), flush: await client.flush() };
  } finally {
    await client.close();
  }
}

test("a disk created after deletes, a log compaction and a restart gets a new id, and its first FLUSH succeeds", async () => {
  const ids: number[] = [];
  await system.createDisk("old", "1M");
  ids.push(await diskId("old"));
  expect(await writeAndFlush("old")).toEqual({ write: 0, flush: 0 });
  const low = Array.from({ length: 60 }, (_, i) => `low-${i}`);
  const high = ["high-0", "high-1", "high-2"];
  await withControl(async (control) => {
    for (const name of [...low, ...high]) ids.push((await control.request("disk.create", { name, size: 2 ** 20 })).id);
    // The newest ids go first. Then, while the older disks go (and more if need be), the log
    // passes its slack and is compacted: the live state is rewritten into a new file that takes the log's name.
    // From then on no record names the newest ids: only the persisted id counter ("diskids")
    // keeps them from being handed out again.
    for (const name of high) await control.request("disk.delete", { name });
    const log = join(system.data, "controller.log");
    const highDeleted = statSync(log).ino;
    for (const name of low) await control.request("disk.delete", { name });
    // Compaction waits for the log to outgrow its compacted size too (see README): more changes
    // until it has run, within a bound.
    for (let i = 0; statSync(log).ino === highDeleted; i += 1) {
      if (i >= CHURN_MAX) throw new Error(`no log compaction after ${CHURN_MAX} more disks created and deleted`);
      ids.push((await control.request("disk.create", { name: `churn-${i}`, size: 2 ** 20 })).id);
      await control.request("disk.delete", { name: `churn-${i}` });
    }
  });

  await system.restart();
  await system.createDisk("new", "1M");
  const id = await diskId("new");
  expect(id).toBeGreaterThan(Math.max(...ids));
  expect(await writeAndFlush("new")).toEqual({ write: 0, flush: 0 });
});
