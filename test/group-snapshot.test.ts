// Consistency groups (R12) over three disks served by two agent processes: dependent writes (A,
// then after its acknowledgement B, then C) are never seen out of order in a group snapshot; an
// agent that cannot quiesce in time makes the group fail cleanly and every held I/O resumes.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Child, ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";
import { BlockClient } from "./helpers/block-client.ts";

const BLOCK = 4096;
const dir = tempDir("group");
const control = `unix:${join(dir.path, "control.sock")}`;
const sockets = [join(dir.path, "nbd1.sock"), join(dir.path, "nbd2.sock")];
const stallFlag = join(dir.path, "stall-agent-2");
let controller: Child;
const agents: Child[] = [];

beforeAll(async () => {
  controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "512M"], "controller");
  await controller.waitForLine(/^ready:/);
  for (const [i, socket] of sockets.entries()) {
    // Agent 2's storage writes stall while the flag file exists (a test-only failpoint).
    const env: Record<string, string> = i === 1 ? { TABLEDISK_STALL_WRITES_WHILE: stallFlag } : {};
    const agent = spawnCtl(["--control", control, "agent", "--id", `a${i + 1}`, "--nbd", `unix:${socket}`], `agent${i + 1}`, env);
    await agent.waitForLine(/registered with the controller/);
    agents.push(agent);
  }
  for (const name of ["x", "y", "z"]) expect((await ctl(["--control", control, "disk", "create", name, "--size", "16M", "--segment-size", "64K"])).code).toBe(0);
});

afterAll(async () => {
  rmSync(stallFlag, { force: true });
  for (const agent of agents) agent.proc.kill("SIGCONT");
  await reapAll();
  dir.remove();
});

function block(seq: number): Uint8Array {
  const data = new Uint8Array(BLOCK);
  new DataView(data.buffer).setUint32(0, seq);
  data.fill(0x5a, 4);
  return data;
}

/** The highest sequence number in a disk, after checking blocks 1..max are all there. */
async function highest(client: BlockClient, blocks: number): Promise<number> {
  const data = await client.read(0, blocks * BLOCK);
  let max = 0;
  for (let seq = 1; seq < blocks; seq += 1) {
    const stored = new DataView(data.buffer, data.byteOffset + seq * BLOCK, 4).getUint32(0);
    if (stored === seq) {
      expect(max).toBe(seq - 1);
      max = seq;
    } else {
      expect(stored).toBe(0);
    }
  }
  return max;
}

describe("consistency groups", () => {
  test("group: with dependent writes across 3 disks on 2 agents, no snapshot holds a later write without its earlier one", async () => {
    // A on x through agent 1, then B on y through agent 2, then C on z through agent 1.
    const x = await BlockClient.open(sockets[0]!, "x");
    const y = await BlockClient.open(sockets[1]!, "y");
    const z = await BlockClient.open(sockets[0]!, "z");
    const BLOCKS = 4096;
    let stop = false;
    let written = 0;
    const writer = (async () => {
      for (let seq = 1; seq < BLOCKS && !stop; seq += 1) {
        expect(await x.write(seq * BLOCK, block(seq))).toBe(0);
        expect(await y.write(seq * BLOCK, block(seq))).toBe(0);
        expect(await z.write(seq * BLOCK, block(seq))).toBe(0);
        written = seq;
      }
    })();
    const counts: number[][] = [];
    for (let round = 0; round < 3; round += 1) {
      const before = written;
      const taken = await ctl(["--control", control, "snapshot", "group", `x=x${round}`, `y=y${round}`, `z=z${round}`, "--timeout", "5000"]);
      expect(taken.stderr).toBe("");
      expect(taken.code).toBe(0);
      const after = written;
      const seen: number[] = [];
      for (const name of [`x${round}`, `y${round}`, `z${round}`]) {
        const client = await BlockClient.open(sockets[round % 2]!, name);
        seen.push(await highest(client, BLOCKS));
        await client.close();
      }
      counts.push(seen);
      // x >= y >= z: B only after A, C only after B; and the point lies within the command.
      expect(seen[0]!).toBeGreaterThanOrEqual(seen[1]!);
      expect(seen[1]!).toBeGreaterThanOrEqual(seen[2]!);
      expect(seen[2]!).toBeGreaterThanOrEqual(before);
      expect(seen[0]!).toBeLessThanOrEqual(after + 1);
    }
    stop = true;
    await writer;
    // The writer was really running across the snapshots.
    expect(counts.at(-1)![2]!).toBeGreaterThan(counts[0]![2]!);
    for (const client of [x, y, z]) await client.close();
  });

  test("group: an agent that cannot drain within the time limit fails the group cleanly: no new disks, and I/O resumes", async () => {
    const before = JSON.parse((await ctl(["--control", control, "disk", "list", "--json"])).stdout).length;
    const y = await BlockClient.open(sockets[1]!, "y");
    expect(await y.write(0, block(3))).toBe(0);
    writeFileSync(stallFlag, "");
    const stuck = y.write(0, block(4));
    await agents[1]!.waitForLine(/storage write stalled/);
    const failed = await ctl(["--control", control, "snapshot", "group", "x=xt", "y=yt", "--timeout", "300"]);
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toMatch(/^ctl: error: group snapshot abandoned, no snapshot made: agent a2: .*I\/O still in progress after 300 ms/);
    expect(JSON.parse((await ctl(["--control", control, "disk", "list", "--json"])).stdout).length).toBe(before);
    // Agent 1 was quiesced and activated again: its I/O goes on, and agent 2's once the write ends.
    const x = await BlockClient.open(sockets[0]!, "x");
    expect(await x.write(0, block(5))).toBe(0);
    rmSync(stallFlag);
    expect(await stuck).toBe(0);
    expect(await y.write(BLOCK, block(6))).toBe(0);
    await x.close();
    await y.close();
  });

  test("group: an agent that does not answer at all (stopped) fails the group; the others never stop serving", async () => {
    const before = JSON.parse((await ctl(["--control", control, "disk", "list", "--json"])).stdout).length;
    agents[1]!.proc.kill("SIGSTOP");
    const failed = await ctl(["--control", control, "snapshot", "group", "x=xs", "y=ys", "--timeout", "300"]);
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toMatch(/^ctl: error: group snapshot abandoned, no snapshot made: agent a2: no answer to quiesce/);
    expect(JSON.parse((await ctl(["--control", control, "disk", "list", "--json"])).stdout).length).toBe(before);
    // Agent 1 serves reads meanwhile. (Writes that need the controller to update agent 2 wait for
    // it: declaring a silent agent dead needs leases, which come with multi-host support.)
    const x = await BlockClient.open(sockets[0]!, "x");
    expect((await x.read(0, BLOCK)).length).toBe(BLOCK);
    agents[1]!.proc.kill("SIGCONT");
    // Agent 2 gets its quiesce late and the activate after it: both serve writes again.
    expect(await x.write(2 * BLOCK, block(7))).toBe(0);
    const y = await BlockClient.open(sockets[1]!, "y");
    expect(await y.write(2 * BLOCK, block(8))).toBe(0);
    await x.close();
    await y.close();
    const checked = await ctl(["--control", control, "check", "--json"]);
    expect(JSON.parse(checked.stdout).problems).toEqual([]);
  });
});
