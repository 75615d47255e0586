// The controller's log on a nearly full file system (a small tmpfs as the data directory, the
// storage container elsewhere), through real processes: `ctl controller`, `ctl agent`, fio and
// libnbd. Once the log has no room, the controller is read-only for changes: snapshots are refused
// with what is full and how much is needed, a write that needs a new segment gets ENOSPC (not
// EIO), `ctl check` finds nothing leaked; once space is freed it takes changes again by itself.
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { hasLibnbdPython, hasTool, libnbd } from "./helpers/nbd-tools.ts";
import { ctl, ctlOk, reapAll, spawn, spawnCtl, tempDir, type Child } from "./helpers/processes.ts";

const SEGMENT = 64 * 1024;
/** The data directory's file system: room for the log and little else. */
const TMPFS_BYTES = 4 * 2 ** 20;
/** Snapshots tried while the file system is full before the test gives up waiting for a refusal. */
const SNAPSHOTS_MAX = 400;

const dir = tempDir("log-full");
const data = join(dir.path, "data");
const control = `unix:${join(dir.path, "control.sock")}`;
const nbdSocket = join(dir.path, "nbd.sock");
const uri = (disk: string) => `nbd+unix:///${disk}?socket=${nbdSocket}`;
const filler = join(data, "filler");

/** Why the test cannot run here, or null. */
const skipReason = ((): string | null => {
  if (process.getuid?.() !== 0) return "mounting a tmpfs needs root";
  if (!hasTool("fio") || !hasLibnbdPython) return "needs fio and python3-libnbd";
  mkdirSync(data);
  const mounted = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", `size=${TMPFS_BYTES}`, "tmpfs", data]);
  return mounted.exitCode === 0 ? null : `mount -t tmpfs failed: ${mounted.stderr.toString().trim()}`;
})();
if (skipReason) console.warn(`log-full tests skipped: ${skipReason}`);

afterAll(async () => {
  await reapAll();
  if (!skipReason) Bun.spawnSync(["umount", data]);
  dir.remove();
});

const run = (args: string[]) => ctl(["--control", control, ...args]);

const ok = (args: string[]) => ctlOk(["--control", control, ...args]);

async function startController(): Promise<Child> {
  // The default container is too small for a segment, so every disk lives on the one added below.
  const child = spawnCtl(["--control", control, "controller", "--data", data, "--lun-size", "64K"], "controller");
  await child.waitForLine(/^ready:/);
  return child;
}

async function startAgent(): Promise<Child> {
  const child = spawnCtl(["--control", control, "agent", "--id", "a", "--nbd", `unix:${nbdSocket}`], "agent");
  await child.waitForLine(/registered with the controller/);
  return child;
}

/** Fills the file system holding `path` to the last byte. */
function fillUp(path: string): void {
  const fd = openSync(path, "w");
  const chunk = new Uint8Array(64 * 1024).fill(1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error;
  } finally {
    closeSync(fd);
  }
}

/** 4 KiB written at the start of each segment given; for each write "ok" or its errno's name. */
function writeSegments(disk: string, segments: number[], byte: number): Promise<string[]> {
  return libnbd<string[]>(
    `
    h = nbd.NBD()
    h.connect_uri(uri)
    out = []
    for s in segments:
        try:
            h.pwrite(bytes([byte]) * 4096, s * segment)
            out.append("ok")
        except nbd.Error as e:
            out.append(e.errno or str(e))
    h.shutdown()
    print(json.dumps(out))
    `,
    { uri: uri(disk), segments, byte, segment: SEGMENT },
  );
}

function readFirstBytes(disk: string, segments: number[]): Promise<number[]> {
  return libnbd<number[]>(
    `
    h = nbd.NBD()
    h.connect_uri(uri)
    out = [h.pread(1, s * segment)[0] for s in segments]
    h.shutdown()
    print(json.dumps(out))
    `,
    { uri: uri(disk), segments, segment: SEGMENT },
  );
}

function startFio(disk: string, offset: number): Child {
  return spawn(
    ["fio", "--name=load", "--ioengine=nbd", `--uri=${uri(disk)}`, "--rw=randwrite", "--bs=4k", "--iodepth=8",
      `--offset=${offset}`, "--size=512M", "--time_based", "--runtime=4", "--output-format=json"],
    "fio",
  );
}

async function expectCheckClean(): Promise<void> {
  const check = await run(["check", "--json"]);
  expect(JSON.parse(check.stdout).problems).toEqual([]);
  expect(check.code).toBe(0);
}

const ENOSPC = "ENOSPC";

describe("the log on a full file system", () => {
  test.skipIf(skipReason !== null)("read-only for changes while full (snapshots refused with what is needed, writes get ENOSPC, nothing leaked); takes changes again once space is freed, without a restart", async () => {
    let controller = await startController();
    await ok(["lun", "add", join(dir.path, "lun1.img"), "--size", "2G"]);
    const agent = await startAgent();
    await ok(["disk", "create", "d", "--size", "1G", "--segment-size", "64K"]);
    // Mapped before the file system fills: 256 segments, their data read back at the end.
    const before = Array.from({ length: 256 }, (_, i) => i);
    expect(await writeSegments("d", before, 0x11)).toEqual(before.map(() => "ok"));

    fillUp(filler);
    // fio writes new segments while snapshots are taken until the log's room is used up.
    const fio = startFio("d", 128 * 2 ** 20);
    let refusal: { stderr: string } | null = null;
    for (let i = 0; i < SNAPSHOTS_MAX && !refusal; i += 1) {
      const result = await run(["snapshot", "create", "d", `s${i}`]);
      if (result.code !== 0) refusal = result;
    }
    await fio.exited;
    const fioJob = JSON.parse(fio.lines.join("\n").replace(/^[^{]*/, "")).jobs[0];
    expect(refusal).not.toBeNull();
    // fio's writes to new segments after that got ENOSPC (28), never EIO.
    expect(fioJob.error).toBe(28);
    expect(refusal!.stderr).toMatch(/read-only for changes: the file system holding the log .*controller\.log is full \(\d+ bytes free\): the log needs \d+ more bytes/);
    expect(controller.lines.filter((line) => line.includes("read-only for changes"))).toHaveLength(1);

    // Full: a write that needs a new segment (or a copy: the old ones are in snapshots now) gets
    // ENOSPC; mapped data reads as before.
    const fresh = [1000, 1001, 1002];
    expect(await writeSegments("d", [...fresh, 0], 0x22)).toEqual([...fresh, 0].map(() => ENOSPC));
    expect(await readFirstBytes("d", before)).toEqual(before.map(() => 0x11));
    expect((await run(["disk", "create", "e", "--size", "1G"])).stderr).toMatch(/read-only for changes/);
    await expectCheckClean();

    // Space back: changes are taken again, by the same controller.
    rmSync(filler);
    expect(await writeSegments("d", fresh, 0x22)).toEqual(fresh.map(() => "ok"));
    await ok(["snapshot", "create", "d", "after"]);
    await controller.waitForLine(/space is back, changes are accepted again/);
    await expectCheckClean();
    const listed = JSON.parse(await ok(["disk", "list", "--json"])) as { name: string }[];

    // What was acknowledged survives a restart.
    const mark = agent.lines.length;
    await controller.kill();
    controller = await startController();
    await agent.waitForLine(/registered with the controller/, undefined, mark);
    expect((JSON.parse(await ok(["disk", "list", "--json"])) as { name: string }[]).map((disk) => disk.name).sort()).toEqual(listed.map((disk) => disk.name).sort());
    expect(await readFirstBytes("d", [...before, ...fresh])).toEqual([...before.map(() => 0x11), ...fresh.map(() => 0x22)]);
    await expectCheckClean();
  }, 180_000);
});
