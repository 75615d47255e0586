// R7: a disk is presented to chosen agents; a host on another agent can neither see nor open it.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { ctl, reapAll, run, spawnCtl, tempDir } from "./helpers/processes.ts";
import { BlockClient } from "./helpers/block-client.ts";

const dir = tempDir("export-isolation");
const control = `unix:${join(dir.path, "control.sock")}`;
const sockets = { a: join(dir.path, "nbd-a.sock"), b: join(dir.path, "nbd-b.sock") };

beforeAll(async () => {
  const controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller");
  await controller.waitForLine(/^ready:/);
  for (const [id, socket] of Object.entries(sockets)) {
    const agent = spawnCtl(["--control", control, "agent", "--id", id, "--nbd", `unix:${socket}`], `agent-${id}`);
    await agent.waitForLine(/registered with the controller/);
  }
});

afterAll(async () => {
  await reapAll();
  dir.remove();
});

async function listed(socket: string): Promise<string[]> {
  const result = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${socket}`]);
  return (JSON.parse(result.stdout).exports ?? []).map((e: { "export-name": string }) => e["export-name"]).sort();
}

const control_ = (args: string[]) => ctl(["--control", control, ...args]);

test("export: a disk exported only on agent A is invisible and unopenable on agent B; export lists move it", async () => {
  expect((await control_(["disk", "create", "shared", "--size", "1M"])).code).toBe(0);
  expect((await control_(["disk", "create", "private", "--size", "1M"])).code).toBe(0);
  expect(await listed(sockets.b)).toEqual(["private", "shared"]);

  const exported = await control_(["export", "private", "--agent", "a"]);
  expect(exported.code).toBe(0);
  expect(await listed(sockets.a)).toEqual(["private", "shared"]);
  expect(await listed(sockets.b)).toEqual(["shared"]);
  // Opening it by name on B fails in the handshake (NBD_REP_ERR_UNKNOWN), so no I/O is possible.
  const opened = await BlockClient.open(sockets.b, "private").then(
    (client) => client.close().then(() => "opened"),
    (error: Error) => error.message,
  );
  expect(opened).toMatch(/GO failed/);

  const writer = await BlockClient.open(sockets.a, "private");
  expect(await writer.write(0, new Uint8Array(4096).fill(0x61))).toBe(0);
  await writer.close();

  const agents = JSON.parse((await control_(["agent", "list", "--json"])).stdout) as { id: string; disks: string[] }[];
  expect(agents.find((agent) => agent.id === "a")!.disks.sort()).toEqual(["private", "shared"]);
  expect(agents.find((agent) => agent.id === "b")!.disks).toEqual(["shared"]);

  // Move it: B gains it (and reads what A wrote), A loses it.
  expect((await control_(["export", "private", "--agent", "b"])).code).toBe(0);
  expect((await control_(["unexport", "private", "--agent", "a"])).code).toBe(0);
  expect(await listed(sockets.a)).toEqual(["shared"]);
  expect(await listed(sockets.b)).toEqual(["private", "shared"]);
  const reader = await BlockClient.open(sockets.b, "private");
  expect((await reader.read(0, 4096)).every((byte) => byte === 0x61)).toBe(true);
  await reader.close();

  const status = JSON.parse((await control_(["status", "--json"])).stdout);
  expect(status.agents.map((agent: { id: string }) => agent.id).sort()).toEqual(["a", "b"]);
  expect(status.disks.find((disk: { name: string }) => disk.name === "private").exports).toEqual(["b"]);
  expect(status.pool.usedBytes).toBe(2 ** 20);
});

test("export: an unknown disk or a bad agent id is refused with one line", async () => {
  const missing = await control_(["export", "nothing", "--agent", "a"]);
  expect(missing.code).not.toBe(0);
  expect(missing.stderr).toMatch(/^ctl: error: no disk named "nothing"/);
  const bad = await control_(["export", "shared", "--agent", "../x"]);
  expect(bad.code).not.toBe(0);
  expect(bad.stderr).toMatch(/^ctl: error: .*agent/);
  const noId = await control_(["agent"]);
  expect(noId.code).not.toBe(0);
  expect(noId.stderr).toMatch(/^ctl: error: running an agent needs --id/);
});
