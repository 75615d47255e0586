// R18: ctl gives one clear line on stderr and a non-zero exit for any bad input.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ctl, reapAll, tempDir } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";

const dir = tempDir("ctl-cli");
let system: UpSystem;

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "1G" });
  await system.createDisk("exists", "1M");
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

function expectOneLineError(result: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  expect(result.code).not.toBe(0);
  const lines = result.stderr.trim().split("\n");
  expect(lines[0]).toMatch(/^ctl: error: /);
  expect(lines[0]).toMatch(pattern);
  expect(result.stdout).toBe("");
}

describe("ctl errors", () => {
  const cases: [string, string[], RegExp][] = [
    ["a size that is not a size", ["disk", "create", "x", "--size", "lots"], /Invalid size "lots"/],
    ["a size that is not a whole number of sectors", ["disk", "create", "x", "--size", "1000"], /multiple of 512/],
    ["a segment size that is not a power of two", ["disk", "create", "x", "--size", "1G", "--segment-size", "96K"], /power of two/],
    ["a segment size below 64 KiB", ["disk", "create", "x", "--size", "1G", "--segment-size", "4K"], /power of two from 64 KiB/],
    ["a name that cannot be an export name", ["disk", "create", "a/b", "--size", "1G"], /^ctl: error: disk name "a\/b": use letters, digits, '\.', '_' and '-', starting with a letter or digit$/],
    ["a snapshot name that cannot be an export name", ["snapshot", "create", "exists", "snap shot"], /^ctl: error: disk name "snap shot": use letters/],
    ["an agent name that cannot be an export name", ["export", "exists", "--agent", "a:b"], /^ctl: error: agent name "a:b": use letters/],
    ["a duplicate disk name", ["disk", "create", "exists", "--size", "1G"], /exists/],
    ["an unknown disk", ["disk", "info", "missing"], /no disk named "missing"/],
    ["deleting an unknown disk", ["disk", "delete", "missing"], /no disk named "missing"/],
    ["a LUN size that is not 64 KiB aligned", ["lun", "add", "/tmp/never-made.img", "--size", "1000"], /multiple of 64 KiB/],
  ];
  for (const [what, args, pattern] of cases) {
    test(`ctl: ${what} is refused with one line on stderr`, async () => {
      expectOneLineError(await system.ctl(args), pattern);
    });
  }

  test("ctl: an argument error is one line and a hint naming the command's help, not the whole help", async () => {
    for (const [args, error, help] of [
      [["disk", "create", "x"], /^ctl: error: required option '--size <size>' not specified$/, "ctl disk create"],
      [["disk", "rollback", "x"], /^ctl: error: missing required argument 'snapshot'$/, "ctl disk rollback"],
      [["disk", "create", "x", "--size", "lots"], /^ctl: error: Invalid size "lots": expected bytes/, "ctl disk create"],
      [["snapshot", "group", "no-equals-sign"], /^ctl: error: "no-equals-sign" is not SOURCE=NAME$/, "ctl snapshot group"],
      [["agent"], /^ctl: error: running an agent needs --id <id>$/, "ctl agent"],
      [["frobnicate"], /^ctl: error: unknown command 'frobnicate'$/, "ctl"],
    ] as const) {
      const result = await system.ctl([...args]);
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      const lines = result.stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(error);
      expect(lines[1]).toBe(`(see '${help} --help')`);
    }
  });

  test("ctl: --version prints the version", async () => {
    const result = await ctl(["--version"]);
    expect(result.code).toBe(0);
    const { name, version } = await Bun.file(join(import.meta.dir, "..", "package.json")).json();
    expect(result.stdout).toBe(`${name} ${version}\n`);
  });

  test("ctl: an unreachable controller is reported, not thrown", async () => {
    expectOneLineError(await ctl(["--control", `unix:${join(dir.path, "nobody.sock")}`, "disk", "list"]), /cannot reach the controller/);
  });

  test("ctl: a malformed --control address is refused", async () => {
    expectOneLineError(await ctl(["--control", "localhost", "disk", "list"]), /HOST:PORT or unix:PATH/);
  });

  test("ctl: CTL_CONTROL stands for --control", async () => {
    const proc = Bun.spawn([process.execPath, "ctl/main.ts", "disk", "list", "--json"], {
      env: { ...process.env, CTL_CONTROL: system.control },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    expect(code).toBe(0);
    expect(JSON.parse(stdout).map((d: { name: string }) => d.name)).toEqual(["exists"]);
  });

  test("ctl: lun add creates a sparse container and lun list shows it", async () => {
    const path = join(dir.path, "extra.img");
    const added = await system.ctl(["lun", "add", path, "--size", "256M", "--json"]);
    expect(added.code).toBe(0);
    const luns = JSON.parse((await system.ctl(["lun", "list", "--json"])).stdout) as { path: string; size: number; freeBytes: number }[];
    expect(luns.find((lun) => lun.path === path)).toMatchObject({ size: 256 * 2 ** 20, freeBytes: 256 * 2 ** 20 });
    expect(Bun.file(path).size).toBe(256 * 2 ** 20);
  });

  test("ctl: human listings are aligned tables", async () => {
    const listed = await system.ctl(["disk", "list"]);
    expect(listed.code).toBe(0);
    expect(listed.stdout.split("\n")[0]).toMatch(/^NAME\s+SIZE\s+SEGMENT\s+MODE\s+PARENT\s+PROTECTED\s+ALLOCATED\s+EXCLUSIVE\s+SHARED$/);
    expect(listed.stdout).toMatch(/^exists\s+1 MiB\s+1 MiB\s+forward\s+-\s+-\s+0 B\s+0 B\s+0 B$/m);
  });
});
