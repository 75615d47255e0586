// The controller's append-only log through the real `ctl controller`: a torn tail is dropped, a
// corrupt record in the middle stops the start with its offset, and compaction bounds the file.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";

const dirs: { remove(): void }[] = [];
afterAll(async () => {
  await reapAll();
  for (const dir of dirs) dir.remove();
});

function setup(name: string) {
  const dir = tempDir(name);
  dirs.push(dir);
  const data = join(dir.path, "data");
  const control = `unix:${join(dir.path, "control.sock")}`;
  return {
    data,
    log: join(data, "controller.log"),
    control,
    async start(extra: string[] = []) {
      const child = spawnCtl(["--control", control, "controller", "--data", data, "--lun-size", "64M", ...extra], "controller");
      await child.waitForLine(/^ready:|error/);
      return child;
    },
    ctl: (args: string[]) => ctl(["--control", control, ...args]),
  };
}

/** Bytes of the log's records: the zeros after them are room the log keeps for growing. */
function recordBytes(path: string): number {
  const bytes = readFileSync(path);
  return bytes.findLastIndex((byte) => byte !== 0) + 1;
}

async function diskNames(system: ReturnType<typeof setup>): Promise<string[]> {
  const listed = await system.ctl(["disk", "list", "--json"]);
  expect(listed.code).toBe(0);
  return JSON.parse(listed.stdout).map((disk: { name: string }) => disk.name);
}

describe("controller log", () => {
  test("log: cut at random points, the controller recovers a prefix of what was done", async () => {
    const system = setup("log-truncate");
    const controller = await system.start();
    const names = Array.from({ length: 12 }, (_, i) => `d${i}`);
    for (const name of names) expect((await system.ctl(["disk", "create", name, "--size", "1G"])).code).toBe(0);
    await controller.kill();
    const whole = join(system.data, "whole.log");
    copyFileSync(system.log, whole);
    const size = statSync(whole).size;
    let seed = 7;
    for (let round = 0; round < 8; round += 1) {
      seed = (seed * 48271) % 2147483647;
      const cut = seed % size;
      copyFileSync(whole, system.log);
      truncateSync(system.log, cut);
      const restarted = await system.start();
      const recovered = await diskNames(system);
      expect(names.slice(0, recovered.length)).toEqual(recovered);
      await restarted.kill();
    }
  });

  test("log: a flipped byte in a record in the middle is refused with its offset, and the file is left as it was", async () => {
    const system = setup("log-corrupt");
    const controller = await system.start();
    for (const name of ["a", "b", "c", "d"]) expect((await system.ctl(["disk", "create", name, "--size", "1G"])).code).toBe(0);
    await controller.kill();
    const bytes = readFileSync(system.log);
    const at = Math.floor(recordBytes(system.log) / 2);
    bytes[at] = bytes[at]! ^ 0x40;
    writeFileSync(system.log, bytes);
    const refused = await system.start();
    const code = await refused.exited;
    expect(code).not.toBe(0);
    const line = refused.lines.find((l) => l.includes("corrupt record"))!;
    expect(line).toMatch(/^ctl: error: .*corrupt record at offset \d+/);
    const offset = Number(/offset (\d+)/.exec(line)![1]);
    expect(offset).toBeLessThanOrEqual(at);
    expect(at - offset).toBeLessThan(512);
    expect(Buffer.compare(readFileSync(system.log), bytes)).toBe(0);
  });

  test("log: compaction keeps the file bounded while the state survives a restart", async () => {
    const system = setup("log-compact");
    let controller = await system.start(["--log-compact-slack", "4K"]);
    for (let i = 0; i < 150; i += 1) {
      expect((await system.ctl(["disk", "create", `t${i}`, "--size", "1M"])).code).toBe(0);
      if (i % 3 !== 0) expect((await system.ctl(["disk", "delete", `t${i}`])).code).toBe(0);
    }
    // Uncompacted, 150 disk records (~80 bytes) and 100 deletions (~40 bytes) come to ~16 KiB;
    // the live state (50 disks) is ~4 KiB, so the file must stay near 4 KiB + 4 KiB of slack.
    expect(recordBytes(system.log)).toBeLessThan(12 * 1024);
    await controller.kill();
    controller = await system.start();
    const expected = Array.from({ length: 150 }, (_, i) => `t${i}`).filter((_, i) => i % 3 === 0);
    expect((await diskNames(system)).sort()).toEqual(expected.sort());
    await controller.kill();
  });
});
