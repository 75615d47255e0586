// Data integrity: whatever was written before an acknowledged FLUSH survives kill -9 of the whole
// system, of the controller alone and of the agent alone (its table comes back through faults).
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Child, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";
import { startUp } from "./helpers/system.ts";
import { nbdPython, SYSTEM_PATH } from "./helpers/nbd-clients.ts";

const BLOCKS = 48;
const DISK = "crashy";
const dirs: { remove(): void }[] = [];

afterAll(async () => {
  await reapAll();
  for (const dir of dirs) dir.remove();
});

// Block i: 64 KiB of seeded random bytes at a spread of offsets, some inside segments, some
// straddling two. After the FLUSH the writer goes on writing elsewhere until it is cut off.
const BLOCK_SCRIPT = `
import random
def block(i):
    return random.Random(i).randbytes(65536)
def offset(i):
    return i * 1048576 + (i * 12288) % 1048576
`;

const WRITER = `${BLOCK_SCRIPT}
for i in range(${BLOCKS}):
    h.pwrite(block(i), offset(i))
h.flush()
print("FLUSHED", flush=True)
rnd = random.Random(99)
try:
    while True:
        h.pwrite(rnd.randbytes(4096), 64 * 1048576 + rnd.randrange(0, 16000) * 4096)
except Exception:
    pass
`;

const VERIFIER = `${BLOCK_SCRIPT}
bad = [i for i in range(${BLOCKS}) if h.pread(65536, offset(i)) != block(i)]
print("BAD", bad)
`;

/** Starts the writer; resolves once its FLUSH is acknowledged, with the child to reap later. */
async function writeAndFlush(uri: string): Promise<Child> {
  const program = `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\n${WRITER}`;
  const proc = Bun.spawn(["/usr/bin/python3", "-c", program], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, PATH: SYSTEM_PATH },
  });
  const writer = new Child(proc, "writer");
  await writer.waitForLine(/^FLUSHED$/);
  return writer;
}

async function expectAllBlocks(uri: string): Promise<void> {
  expect((await nbdPython(uri, VERIFIER)).trim()).toBe("BAD []");
}

describe("crash recovery", () => {
  test("kill -9 of ctl up right after a FLUSH: every block written before it reads back after restart", async () => {
    const dir = tempDir("crash-up");
    dirs.push(dir);
    const system = await startUp({ dir: dir.path, lunSize: "1G" });
    const uri = await system.createDisk(DISK, "128M", ["--segment-size", "256K"]);
    const writer = await writeAndFlush(uri);
    await system.restart("SIGKILL");
    await writer.exited;
    await expectAllBlocks(uri);
    await system.stop();
  });

  describe("controller and agent as separate processes", () => {
    const dir = tempDir("crash-split");
    dirs.push(dir);
    const control = `unix:${join(dir.path, "control.sock")}`;
    const nbdSocket = join(dir.path, "nbd.sock");
    const uri = `nbd+unix:///${DISK}?socket=${nbdSocket}`;
    const startController = async () => {
      const child = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "1G"], "controller");
      await child.waitForLine(/^ready:/);
      return child;
    };
    const startAgent = async () => {
      const child = spawnCtl(["--control", control, "agent", "--id", "a1", "--nbd", `unix:${nbdSocket}`], "agent");
      await child.waitForLine(/registered with the controller/);
      return child;
    };

    test("kill -9 of the controller alone: the agent reconnects and every flushed block reads back", async () => {
      let controller = await startController();
      const agent = await startAgent();
      const created = await spawnCtl(["--control", control, "disk", "create", DISK, "--size", "128M", "--segment-size", "64K"]).exited;
      expect(created).toBe(0);
      await agent.waitForLine(/registered/);
      const writer = await writeAndFlush(uri);
      const seen = agent.lines.length;
      await controller.kill("SIGKILL");
      controller = await startController();
      await agent.waitForLine(/registered with the controller/, undefined, seen);
      // The agent kept serving the writer while the controller was gone; stop it now.
      await writer.kill();
      await expectAllBlocks(uri);
      await agent.kill();
      await controller.kill();
    });

    test("kill -9 of the agent alone: a new agent reloads its table through faults and reads every flushed block", async () => {
      const controller = await startController();
      let agent = await startAgent();
      const writer = await writeAndFlush(uri);
      await agent.kill("SIGKILL");
      await writer.exited;
      agent = await startAgent();
      await expectAllBlocks(uri);
      await agent.kill();
      await controller.kill();
    });
  });
});
