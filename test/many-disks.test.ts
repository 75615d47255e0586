// Thousands of disks on one agent (tables are sparse; VM hosts hold thousands): 5,000 disks and a
// chain of 1,000 snapshots through a real `ctl up`, every create answered as what happened, and
// every disk exported again after a restart.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { reapAll, run, tempDir, TEST_SECRET_FILE } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { ControllerClient } from "../ctl/client.ts";
import { secretFromFile } from "../engine/secret.ts";

const DISKS = 5000;
const CHAIN = 1000;
/** Requests in flight at once: the controller takes them one by one; this hides the round trips. */
const PIPELINE = 200;
const dir = tempDir("many-disks");
let system: UpSystem;

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "64M" });
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

function residentMiB(pid: number): number {
  const kib = Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);
  return Math.round(kib / 1024);
}

async function withControl<T>(work: (control: ControllerClient) => Promise<T>): Promise<T> {
  const control = await ControllerClient.open(system.control, secretFromFile(TEST_SECRET_FILE));
  try {
    return await work(control);
  } finally {
    control.close();
  }
}

async function exportedNames(): Promise<string[]> {
  const listed = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${system.nbdSocket}`]);
  expect(listed.code).toBe(0);
  return (JSON.parse(listed.stdout).exports as { "export-name": string }[]).map((entry) => entry["export-name"]);
}

test(`${DISKS} disks and a chain of ${CHAIN} snapshots on one agent: every create succeeds, every disk is exported after a restart`, async () => {
  const idleMiB = residentMiB(system.child.proc.pid);
  const started = performance.now();
  const names = Array.from({ length: DISKS }, (_, i) => `disk-${i}`);
  // The first past the old limit of 1,024 tables and the last go through the ctl binary.
  const throughCtl = new Set([names[1024]!, names[DISKS - 1]!]);
  await withControl(async (control) => {
    for (let at = 0; at < DISKS; at += PIPELINE) {
      const batch = names.slice(at, at + PIPELINE).filter((name) => !throughCtl.has(name));
      const created = await Promise.all(batch.map((name) => control.request("disk.create", { name, size: 2 ** 20 })));
      created.forEach((disk, i) => expect(disk).toMatchObject({ name: batch[i], size: 2 ** 20 }));
      for (const name of names.slice(at, at + PIPELINE).filter((name) => throughCtl.has(name))) {
        const result = await system.ctl(["disk", "create", name, "--size", "1M", "--json"]);
        expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: "" });
        expect(JSON.parse(result.stdout)).toMatchObject({ name, size: 2 ** 20 });
      }
    }
    const createdAt = performance.now();
    console.log(`${DISKS} disks created in ${Math.round(createdAt - started)} ms`);

    // Each snapshot is taken from the one before: snapshot of a snapshot of ... of disk-0.
    let source = names[0]!;
    for (let i = 1; i <= CHAIN; i += 1) {
      const name = `chain-${i}`;
      if (i === CHAIN) {
        const result = await system.ctl(["snapshot", "create", source, name, "--json"]);
        expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: "" });
        expect(JSON.parse(result.stdout)).toMatchObject({ name, parent: source });
      } else {
        expect(await control.request("snapshot.create", { source, name })).toMatchObject({ name, parent: source });
      }
      names.push(name);
      source = name;
    }
    console.log(`chain of ${CHAIN} snapshots in ${Math.round(performance.now() - createdAt)} ms`);
    expect((await control.request("disk.list", {})).map((disk) => disk.name).sort()).toEqual([...names].sort());
  });
  console.log(`ctl up (controller and agent): ${idleMiB} MiB resident with no disk, ${residentMiB(system.child.proc.pid)} MiB with ${names.length}`);
  expect((await exportedNames()).sort()).toEqual([...names].sort());

  const restarting = performance.now();
  await system.restart();
  console.log(`restart with ${names.length} disks: ready in ${Math.round(performance.now() - restarting)} ms`);
  expect((await exportedNames()).sort()).toEqual([...names].sort());
  console.log(`after the restart: ${residentMiB(system.child.proc.pid)} MiB resident`);
}, 120_000);
