// R4: agents' tables are volatile copies. When an agent registers again, it serves exactly the
// disks the controller has now, each reloaded through faults.
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { reapAll, run, spawnCtl, tempDir } from "./helpers/processes.ts";
import { nbdPython } from "./helpers/nbd-clients.ts";

const dir = tempDir("agent-reconnect");
afterAll(async () => {
  await reapAll();
  dir.remove();
});

test("an agent that registers with a controller lacking a disk stops exporting it", async () => {
  const control = `unix:${join(dir.path, "control.sock")}`;
  const nbdSocket = join(dir.path, "nbd.sock");
  const startController = async (data: string) => {
    const child = spawnCtl(["--control", control, "controller", "--data", join(dir.path, data), "--lun-size", "64M"], "controller");
    await child.waitForLine(/^ready:/);
    return child;
  };
  const exports = async () => {
    const listed = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${nbdSocket}`]);
    return (JSON.parse(listed.stdout).exports ?? []).map((e: { "export-name": string }) => e["export-name"]).sort();
  };

  let controller = await startController("one");
  const agent = spawnCtl(["--control", control, "agent", "--id", "a", "--nbd", `unix:${nbdSocket}`], "agent");
  await agent.waitForLine(/registered with the controller/);
  for (const name of ["kept", "gone"]) {
    expect((await spawnCtl(["--control", control, "disk", "create", name, "--size", "4M"]).exited)).toBe(0);
  }
  expect(await exports()).toEqual(["gone", "kept"]);
  await nbdPython(`nbd+unix:///kept?socket=${nbdSocket}`, `h.pwrite(b"\\x42" * 4096, 0)\nh.flush()`);
  await controller.kill("SIGKILL");

  // A second controller (another data dir) that only has a disk named "kept", with no data.
  const seen = agent.lines.length;
  controller = await startController("two");
  await agent.waitForLine(/registered with the controller/, undefined, seen);
  expect((await spawnCtl(["--control", control, "disk", "create", "kept", "--size", "4M"]).exited)).toBe(0);
  expect(await exports()).toEqual(["kept"]);
  // Its table was reloaded from the new controller: the old mapping is gone, the disk reads zeros.
  const read = await nbdPython(`nbd+unix:///kept?socket=${nbdSocket}`, `print(h.pread(4096, 0) == bytes(4096))`);
  expect(read.trim()).toBe("True");
  await agent.kill();
  await controller.kill();
});
