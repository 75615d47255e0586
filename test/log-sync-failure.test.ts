// A failed fdatasync of the controller's log (injected: TABLEDISK_LOG_SYNC_FAILS_WHEN) stops the
// controller, through real processes (`ctl controller`, `ctl agent`, libnbd): the FLUSH that
// needed the commit fails, the controller exits non-zero with one line, and after a restart
// everything acknowledged is there (the writes whose FLUSH failed too: their agent hands back the
// mappings the failed commit did not make durable) and the disk created after the failure is not.
import { afterAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { hasLibnbdPython, libnbd } from "./helpers/nbd-tools.ts";
import { ctl, ctlOk, reapAll, spawnCtl, tempDir, type Child } from "./helpers/processes.ts";

const SEGMENT = 64 * 1024;
const dir = tempDir("log-sync-failure");
const data = join(dir.path, "data");
const control = `unix:${join(dir.path, "control.sock")}`;
const nbdSocket = join(dir.path, "nbd.sock");
const uri = `nbd+unix:///d?socket=${nbdSocket}`;
const trigger = join(dir.path, "fail-log-sync");

afterAll(async () => {
  await reapAll();
  dir.remove();
});

const run = (args: string[]) => ctl(["--control", control, ...args]);

const ok = (args: string[]) => ctlOk(["--control", control, ...args]);

async function startController(env: Record<string, string> = {}): Promise<Child> {
  const child = spawnCtl(["--control", control, "controller", "--data", data, "--lun-size", "256M"], "controller", env);
  await child.waitForLine(/^ready:/);
  return child;
}

/** Writes 4 KiB of `byte` at the start of each segment, then FLUSH; what each step gave. */
function writeThenFlush(segments: number[], byte: number): Promise<{ writes: string[]; flush: string }> {
  return libnbd(
    `
    h = nbd.NBD()
    h.connect_uri(uri)
    def attempt(step):
        try:
            step()
            return "ok"
        except nbd.Error as e:
            return e.errno or str(e)
    writes = [attempt(lambda: h.pwrite(bytes([byte]) * 4096, s * segment)) for s in segments]
    flush = attempt(lambda: h.flush())
    print(json.dumps({"writes": writes, "flush": flush}))
    `,
    { uri, segments, byte, segment: SEGMENT },
  );
}

function readFirstBytes(segments: number[]): Promise<number[]> {
  return libnbd(
    `
    h = nbd.NBD()
    h.connect_uri(uri)
    print(json.dumps([h.pread(1, s * segment)[0] for s in segments]))
    `,
    { uri, segments, segment: SEGMENT },
  );
}

describe("a failed fdatasync of the log", () => {
  test.skipIf(!hasLibnbdPython)("stops the controller (exit 1, one line), the FLUSH that needed it fails, and a restart has what was acknowledged and nothing else", async () => {
    let controller = await startController({ TABLEDISK_LOG_SYNC_FAILS_WHEN: trigger });
    const agent = spawnCtl(["--control", control, "agent", "--id", "a", "--nbd", `unix:${nbdSocket}`], "agent");
    await agent.waitForLine(/registered with the controller/);
    await ok(["disk", "create", "d", "--size", "1G", "--segment-size", "64K"]);
    const acknowledged = Array.from({ length: 10 }, (_, i) => i);
    expect(await writeThenFlush(acknowledged, 0x11)).toEqual({ writes: acknowledged.map(() => "ok"), flush: "ok" });

    // The log's disk fails: the mappings of these writes cannot be made durable.
    writeFileSync(trigger, "");
    const unflushed = Array.from({ length: 10 }, (_, i) => 100 + i);
    const outcome = await writeThenFlush(unflushed, 0x22);
    expect(outcome.flush).toBe("EIO");
    expect(await controller.exited).toBe(1);
    const fatal = controller.lines.filter((line) => /fatal/.test(line));
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatch(/^ctl: fatal: the controller has stopped: log .*controller\.log: commit failed.*EIO/);
    expect((await run(["disk", "create", "e", "--size", "1G"])).code).not.toBe(0);

    const mark = agent.lines.length;
    controller = await startController();
    await agent.waitForLine(/registered with the controller/, undefined, mark);
    const names = (JSON.parse(await ok(["disk", "list", "--json"])) as { name: string }[]).map((disk) => disk.name);
    expect(names).toEqual(["d"]);
    // Flushed data is there, and so are the writes whose FLUSH failed: the agent handed their
    // mappings back to the new controller.
    expect(await readFirstBytes([...acknowledged, ...unflushed])).toEqual([...acknowledged.map(() => 0x11), ...unflushed.map(() => 0x22)]);
    expect(controller.lines.some((line) => /agent a: restored 10 mapping entries of disk d/.test(line))).toBe(true);
    const check = await run(["check", "--json"]);
    expect(JSON.parse(check.stdout).problems).toEqual([]);
  }, 120_000);
});
