// R19: a mistake typed into ctl never destroys or hides a disk. Each command that could is refused
// with one clear line (or needs --force), and what it would have destroyed is shown unchanged.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ctl, reapAll, tempDir } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { BlockClient, filled } from "./helpers/block-client.ts";
import { nbdPython } from "./helpers/nbd-clients.ts";
import { NBD } from "./helpers/raw-nbd-client.ts";

const KIB = 1024;
const SEGMENT = 64 * KIB;
const dir = tempDir("destructive-commands");
let system: UpSystem;

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "256M" });
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

async function ok(args: string[]): Promise<string> {
  const result = await system.ctl(args);
  if (result.code !== 0) throw new Error(`ctl ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

/** The command fails with one line on stderr matching `pattern`, and prints nothing else. */
async function refused(args: string[], pattern: RegExp): Promise<void> {
  const result = await system.ctl(args);
  expect(result.code).not.toBe(0);
  expect(result.stdout).toBe("");
  expect(result.stderr.trim().split("\n")).toHaveLength(1);
  expect(result.stderr).toMatch(/^ctl: error: /);
  expect(result.stderr).toMatch(pattern);
}

async function info(name: string): Promise<{ id: number; parent?: string; parentDeleted?: boolean; protected: boolean }> {
  return JSON.parse(await ok(["disk", "info", name, "--json"]));
}

async function names(): Promise<string[]> {
  return (JSON.parse(await ok(["disk", "list", "--json"])) as { name: string }[]).map((disk) => disk.name).sort();
}

/** Every byte of the disk, read with libnbd (a new connection). */
async function image(name: string, bytes: number): Promise<string> {
  return nbdPython(system.uri(name), `sys.stdout.write(h.pread(${bytes}, 0).hex())`);
}

/** A disk of 4 segments with a distinct byte in each 4 KiB block of its first two segments. */
async function writtenDisk(name: string): Promise<void> {
  await system.createDisk(name, `${4 * SEGMENT / KIB}K`, ["--segment-size", "64K"]);
  const client = await BlockClient.open(system.nbdSocket, name);
  for (let block = 0; block < (2 * SEGMENT) / (4 * KIB); block += 1) expect(await client.write(block * 4 * KIB, filled(block + 1, 4 * KIB))).toBe(0);
  expect(await client.flush()).toBe(0);
  await client.close();
}

describe("rollback", () => {
  test("rollback: the arguments swapped (a snapshot onto its origin) are refused and the snapshot stays byte-identical", async () => {
    await writtenDisk("rb-origin");
    await ok(["snapshot", "create", "rb-origin", "rb-snap"]);
    const client = await BlockClient.open(system.nbdSocket, "rb-origin");
    expect(await client.write(0, filled(0xee, 8 * KIB))).toBe(0);
    expect(await client.flush()).toBe(0);
    await client.close();
    const before = await image("rb-snap", 4 * SEGMENT);

    await refused(["disk", "rollback", "rb-snap", "rb-origin"], /Cannot roll rb-snap back to rb-origin: rb-origin is not a snapshot of rb-snap \(it is the other way round/);
    expect(await image("rb-snap", 4 * SEGMENT)).toBe(before);
    // The right way round works, and makes the origin the snapshot again.
    await ok(["disk", "rollback", "rb-origin", "rb-snap"]);
    expect(await image("rb-origin", 4 * SEGMENT)).toBe(before);
  });

  test("rollback: a disk takes only a snapshot of its own line, not a sibling's or a stranger's", async () => {
    await writtenDisk("line-a");
    await writtenDisk("line-b");
    await ok(["snapshot", "create", "line-a", "line-a1"]);
    await ok(["snapshot", "create", "line-a1", "line-a1-clone"]);
    await ok(["snapshot", "create", "line-a", "line-a2"]);
    await refused(["disk", "rollback", "line-a1", "line-a2"], /line-a2 is not a snapshot of line-a1$/m);
    await refused(["disk", "rollback", "line-b", "line-a1"], /line-a1 is not a snapshot of line-b$/m);
    // A snapshot of a snapshot descends from the origin too.
    await ok(["disk", "rollback", "line-a", "line-a1-clone"]);
  });
});

describe("protected snapshots", () => {
  test("protect: a protected snapshot refuses delete, rollback over it and NBD writes (EPERM) while reads work", async () => {
    await writtenDisk("pr-origin");
    const created = JSON.parse(await ok(["snapshot", "create", "pr-origin", "pr-snap", "--protect", "--json"]));
    expect(created).toMatchObject({ name: "pr-snap", protected: true });
    await ok(["snapshot", "create", "pr-snap", "pr-snap-child"]);
    const before = await image("pr-snap", 4 * SEGMENT);

    await refused(["disk", "delete", "pr-snap"], /Cannot delete disk "pr-snap": it is protected \(ctl snapshot unprotect pr-snap first\)/);
    await refused(["disk", "delete", "pr-snap", "--force"], /it is protected/);
    await refused(["disk", "rollback", "pr-snap", "pr-snap-child"], /pr-snap is protected/);

    // A real client sees a read-only export: writes, zeroes and trims fail with EPERM, reads work.
    const outcome = await nbdPython(
      system.uri("pr-snap"),
      `
h.set_strict_mode(0)  # send the writes anyway: the server must refuse them itself
errors = []
for attempt in (lambda: h.pwrite(b"x" * 4096, 0), lambda: h.zero(65536, 0), lambda: h.trim(65536, 0)):
    try:
        attempt()
        errors.append("ok")
    except nbd.Error as e:
        errors.append(e.errno)
import errno, json
print(json.dumps({"readOnly": h.is_read_only(), "errors": [errno.errorcode.get(e, e) for e in errors], "first": h.pread(4096, 0)[0]}))`,
    );
    expect(JSON.parse(outcome)).toEqual({ readOnly: true, errors: ["EPERM", "EPERM", "EPERM"], first: 1 });
    expect(await image("pr-snap", 4 * SEGMENT)).toBe(before);
    // Rolling the origin back *to* a protected snapshot only reads it.
    await ok(["disk", "rollback", "pr-origin", "pr-snap"]);
    expect(await image("pr-snap", 4 * SEGMENT)).toBe(before);
  });

  test("protect: a connection opened before protect can no longer write (EPERM); unprotect makes the disk writable again", async () => {
    await writtenDisk("pr-late");
    const early = await BlockClient.open(system.nbdSocket, "pr-late");
    expect(await early.write(0, filled(0x77, 4 * KIB))).toBe(0);
    await ok(["snapshot", "protect", "pr-late"]);
    expect(await info("pr-late")).toMatchObject({ protected: true });
    expect(await early.write(0, filled(0x78, 4 * KIB))).toBe(NBD.EPERM);
    expect(await early.zero(SEGMENT, SEGMENT)).toBe(NBD.EPERM);
    expect(await early.trim(SEGMENT, SEGMENT)).toBe(NBD.EPERM);
    expect((await early.read(0, 4 * KIB))[0]).toBe(0x77);

    await ok(["snapshot", "unprotect", "pr-late"]);
    expect(await early.write(0, filled(0x79, 4 * KIB))).toBe(0);
    await early.close();
    expect(JSON.parse(await nbdPython(system.uri("pr-late"), `print(__import__("json").dumps([h.is_read_only(), h.pread(1, 0)[0]]))`))).toEqual([false, 0x79]);
    await ok(["disk", "delete", "pr-late"]);
  });
});

describe("disks in use and disks others depend on", () => {
  test("delete: a disk with snapshots taken from it is refused without --force, and the snapshot keeps its parent's name", async () => {
    await writtenDisk("dep-origin");
    await ok(["snapshot", "create", "dep-origin", "dep-snap"]);
    await refused(["disk", "delete", "dep-origin"], /Cannot delete disk "dep-origin": dep-snap was taken from it \(--force/);
    expect(await names()).toContain("dep-origin");
    await ok(["disk", "delete", "dep-origin", "--force"]);
    expect(await info("dep-snap")).toMatchObject({ parent: "dep-origin", parentDeleted: true });
    expect(await ok(["disk", "list"])).toMatch(/^dep-snap\s.*\sdep-origin \(deleted\)\s/m);
  });

  test("delete and rollback: a disk a host has open is refused without --force, naming the agent and its connections", async () => {
    await writtenDisk("busy");
    await ok(["snapshot", "create", "busy", "busy-snap"]);
    const host = await BlockClient.open(system.nbdSocket, "busy");
    expect(await host.write(0, filled(0x55, 4 * KIB))).toBe(0);

    await refused(["disk", "rollback", "busy", "busy-snap"], /Cannot roll busy back to busy-snap: it is in use \(agent local has 1 connection\)/);
    expect((await host.read(0, 1))[0]).toBe(0x55);
    // Nobody has the snapshot open: it goes without --force.
    await ok(["disk", "delete", "busy-snap"]);
    await refused(["disk", "delete", "busy"], /Cannot delete disk "busy": it is in use \(agent local has 1 connection\); --force/);
    expect(await names()).toContain("busy");
    expect((await host.read(0, 1))[0]).toBe(0x55);

    await ok(["disk", "delete", "busy", "--force"]);
    expect(await names()).not.toContain("busy");
    await host.close();
  });

  test("rollback --force goes ahead while a host has the disk open", async () => {
    await writtenDisk("forced");
    await ok(["snapshot", "create", "forced", "forced-snap"]);
    const host = await BlockClient.open(system.nbdSocket, "forced");
    expect(await host.write(0, filled(0x66, 4 * KIB))).toBe(0);
    await ok(["disk", "rollback", "forced", "forced-snap", "--force"]);
    expect((await host.read(0, 1))[0]).toBe(1);
    await host.close();
  });
});

describe("exports, containers and the pool", () => {
  test("export and unexport to an agent that never registered are refused; --force allows it", async () => {
    await system.createDisk("typo", "1M");
    await refused(["export", "typo", "--agent", "lcoal"], /Cannot export typo to agent lcoal: no such agent has registered \(known: local\); --force/);
    await refused(["unexport", "typo", "--agent", "lcoal"], /Cannot unexport typo from agent lcoal: no such agent/);
    expect(JSON.parse(await ok(["disk", "info", "typo", "--json"])).exports).toBeUndefined();
    await ok(["export", "typo", "--agent", "later", "--force"]);
    expect(JSON.parse(await ok(["disk", "info", "typo", "--json"])).exports).toEqual(["later"]);
    // A named agent is known from then on.
    await ok(["unexport", "typo", "--agent", "later"]);
  });

  test("lun add: a path in a directory that does not exist is refused and nothing is created; a relative path is ctl's", async () => {
    const missing = join(dir.path, "no-such-dir", "lun.img");
    await refused(["lun", "add", missing, "--size", "64M"], new RegExp(`Cannot add ${missing}: directory ${join(dir.path, "no-such-dir")} does not exist`));
    expect(existsSync(join(dir.path, "no-such-dir"))).toBe(false);

    // Relative to ctl's working directory, which is not the controller's.
    const added = await ctl(["--control", system.control, "lun", "add", "relative.img", "--size", "64M", "--json"], { cwd: dir.path });
    expect(added.code).toBe(0);
    expect(JSON.parse(added.stdout).path).toBe(join(dir.path, "relative.img"));
    expect(existsSync(join(dir.path, "relative.img"))).toBe(true);
  });

  test("disk create: a disk larger than the pool's free space is created with a warning, and status shows the overcommit", async () => {
    const created = await system.ctl(["disk", "create", "huge", "--size", "1T"]);
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(/^created disk huge: 1 TiB/);
    expect(created.stderr).toMatch(/^ctl: warning: disk huge \(1 TiB\) is larger than the pool's free space \(\d+(\.\d+)? MiB\); the pool is overcommitted \d+\.\d\dx/);
    const small = await system.ctl(["disk", "create", "small", "--size", "1M"]);
    expect(small.stderr).toBe("");

    const status = JSON.parse(await ok(["status", "--json"]));
    const provisioned = (JSON.parse(await ok(["disk", "list", "--json"])) as { size: number }[]).reduce((sum, disk) => sum + disk.size, 0);
    expect(status.pool.provisionedBytes).toBe(provisioned);
    expect(status.pool.overcommit).toBeCloseTo(provisioned / status.pool.sizeBytes, 6);
    expect(await ok(["status"])).toMatch(new RegExp(`overcommit ${(provisioned / status.pool.sizeBytes).toFixed(2)}x`));
  });
});

describe("after a restart", () => {
  test("protection, lineage and deleted parents survive a restart; ids are not reused", async () => {
    await writtenDisk("keep-origin");
    await ok(["snapshot", "create", "keep-origin", "keep-mid"]);
    await ok(["snapshot", "create", "keep-mid", "keep-leaf", "--protect"]);
    await ok(["disk", "delete", "keep-mid", "--force"]);
    const leafBefore = await info("keep-leaf");
    const maxIdBefore = Math.max(...(JSON.parse(await ok(["disk", "list", "--json"])) as { id: number }[]).map((disk) => disk.id));

    await system.restart();
    expect(await info("keep-leaf")).toEqual(leafBefore);
    await refused(["disk", "delete", "keep-leaf"], /protected/);
    // keep-mid is gone, but keep-leaf still descends from keep-origin.
    await refused(["disk", "rollback", "keep-leaf", "keep-origin"], /keep-origin is not a snapshot of keep-leaf/);
    const created = JSON.parse(await ok(["disk", "create", "newcomer", "--size", "1M", "--json"]));
    expect(created.id).toBeGreaterThan(maxIdBefore);
    await ok(["disk", "rollback", "keep-origin", "keep-leaf"]);
    await ok(["snapshot", "unprotect", "keep-leaf"]);
    await system.restart();
    expect(await info("keep-leaf")).toMatchObject({ protected: false, parent: "keep-mid", parentDeleted: true });
  });
});
