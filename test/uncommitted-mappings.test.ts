// Mapping changes from faults (a thin disk's first writes, copy-on-write) are not made durable one
// by one: the FLUSH that needs them commits them, and a FUA write commits its own. Should the
// controller die first, the agent hands them back when it registers with the next one. Shown with
// a controller and an agent as separate processes and kill -9 of the controller:
//   - flushed, FUA and even unflushed writes through new mappings survive the crash;
//   - when the changes cannot be taken back (the agent came back after its lease ran out and the
//     tables may have changed), every FLUSH of a connection opened before fails, never succeeds,
//     while a new connection works.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { UncommittedChanges } from "../agent/uncommitted.ts";
import { BlockClient, filled } from "./helpers/block-client.ts";
import { RemoteError } from "../engine/wire/peer.ts";
import { mappedWord, ZERO_WORD } from "../wasm/entry.ts";
import { type Child, ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";

const KIB = 1024;
const SEGMENT = 64 * KIB;
const dirs: { remove(): void }[] = [];

afterAll(async () => {
  await reapAll();
  for (const dir of dirs) dir.remove();
});

async function bytesAt(client: BlockClient, offset: number): Promise<Set<number>> {
  return new Set(await client.read(offset, 4 * KIB));
}

/** A controller and one agent as separate processes, a fresh thin disk "d" with 64 KiB segments. */
async function started(agentOptions: string[] = []): Promise<{ control: string; nbdSocket: string; controller: Child; agent: Child; restartController(): Promise<Child> }> {
  const dir = tempDir("uncommitted");
  dirs.push(dir);
  const control = `unix:${join(dir.path, "control.sock")}`;
  const nbdSocket = join(dir.path, "nbd.sock");
  const startController = async () => {
    const child = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller");
    await child.waitForLine(/^ready:/);
    return child;
  };
  const controller = await startController();
  const agent = spawnCtl(["--control", control, "agent", "--id", "a1", "--nbd", `unix:${nbdSocket}`, ...agentOptions], "agent");
  await agent.waitForLine(/registered with the controller/);
  expect((await ctl(["--control", control, "disk", "create", "d", "--size", "16M", "--segment-size", "64K"])).code).toBe(0);
  return { control, nbdSocket, controller, agent, restartController: startController };
}

describe("uncommitted mappings (durable at the FLUSH that needs them)", () => {
  test("flushed, FUA and unflushed writes to new segments survive a controller crash (the agent hands back what it was not committed)", async () => {
    const { control, nbdSocket, controller, agent, restartController } = await started();
    const client = await BlockClient.open(nbdSocket, "d");
    // Segment 0: written and flushed. Segment 1: FUA. Segment 3: written (its fault maps it,
    // uncommitted), then a FUA write next to it that needs no fault but relies on that mapping.
    // Segment 2, last: written, not flushed (nothing commits its mapping before the crash).
    expect(await client.write(0, filled(0x01, 4 * KIB))).toBe(0);
    expect(await client.flush()).toBe(0);
    expect(await client.write(SEGMENT, filled(0x02, 4 * KIB), true)).toBe(0);
    expect(await client.write(3 * SEGMENT, filled(0x05, 4 * KIB))).toBe(0);
    expect(await client.write(3 * SEGMENT + 4 * KIB, filled(0x06, 4 * KIB), true)).toBe(0);
    expect(await client.write(2 * SEGMENT, filled(0x03, 4 * KIB))).toBe(0);
    await controller.kill("SIGKILL");
    const linesBefore = agent.lines.length;
    const restarted = await restartController();
    // Once the agent has registered again (dropping its entries), reads fault and see the tables
    // the new controller recovered, with what the agent handed back.
    await agent.waitForLine(/registered with the controller/, undefined, linesBefore);
    expect(await bytesAt(client, 0)).toEqual(new Set([0x01]));
    expect(await bytesAt(client, SEGMENT)).toEqual(new Set([0x02]));
    expect(await bytesAt(client, 2 * SEGMENT)).toEqual(new Set([0x03]));
    expect(await bytesAt(client, 3 * SEGMENT)).toEqual(new Set([0x05]));
    expect(await bytesAt(client, 3 * SEGMENT + 4 * KIB)).toEqual(new Set([0x06]));
    expect(await client.flush()).toBe(0);
    expect(restarted.lines.some((line) => /agent a1: restored \d+ mapping entries of disk d/.test(line))).toBe(true);
    await client.close();
    const check = await ctl(["--control", control, "check"]);
    expect(check.code).toBe(0);
  });

  test("changes the new controller cannot take back fail every FLUSH of the connections that may have relied on them, until they reconnect", async () => {
    const { control, nbdSocket, controller, agent, restartController } = await started(["--lease", "500"]);
    const client = await BlockClient.open(nbdSocket, "d");
    expect(await client.write(0, filled(0x01, 4 * KIB))).toBe(0);
    expect(await client.flush()).toBe(0);
    // Uncommitted (the background commit comes a second later): the agent is stopped before it.
    expect(await client.write(2 * SEGMENT, filled(0x03, 4 * KIB))).toBe(0);
    agent.proc.kill("SIGSTOP");
    await controller.kill("SIGKILL");
    const restarted = await restartController();
    // The agent's lease runs out at the new controller: it may go on without it, so what the agent
    // held can no longer be trusted to fit.
    await restarted.waitForLine(/agent a1: lease expired/);
    const linesBefore = agent.lines.length;
    agent.proc.kill("SIGCONT");
    await agent.waitForLine(/registered with the controller/, undefined, linesBefore);
    expect(agent.lines.slice(linesBefore).some((line) => /disk d: the controller restarted and could not take back/.test(line))).toBe(true);
    // The old connection: every FLUSH fails, also after new writes; reads work.
    expect(await client.flush()).toBe(5 /* EIO */);
    expect(await client.write(4 * SEGMENT, filled(0x04, 4 * KIB))).toBe(0);
    expect(await client.flush()).toBe(5);
    expect(await bytesAt(client, 0)).toEqual(new Set([0x01]));
    await client.close();
    // A new connection starts clean.
    const fresh = await BlockClient.open(nbdSocket, "d");
    expect(await fresh.write(2 * SEGMENT, filled(0x07, 4 * KIB))).toBe(0);
    expect(await fresh.flush()).toBe(0);
    expect(await bytesAt(fresh, 2 * SEGMENT)).toEqual(new Set([0x07]));
    await fresh.close();
    const check = await ctl(["--control", control, "check"]);
    expect(check.code).toBe(0);
  });
});

describe("UncommittedChanges", () => {
  const mapped = (block: number) => mappedWord(0, block * SEGMENT);

  test("a commit covers the answers noted before it; later ones stay pending", () => {
    const changes = new UncommittedChanges();
    expect(changes.pending(7)).toBeNull();
    changes.note(7, 100, 0, [[mapped(1), 1]], 1);
    const seen = changes.pending(7)!;
    changes.note(7, 100, 1, [[mapped(2), 1]], 2);
    changes.committed(7, seen);
    expect(changes.pending(7)).toEqual({ run: 100, answers: 2 });
    changes.committed(7, changes.pending(7)!);
    expect(changes.pending(7)).toBeNull();
  });

  test("after a restart, the writable entries of the ended run are handed back (only those not yet committed); a loss fails the connections of earlier eras", async () => {
    const changes = new UncommittedChanges();
    changes.note(1, 100, 0, [[mapped(1), 1], [ZERO_WORD, 1]], 3);
    changes.committed(1, changes.pending(1)!);
    changes.note(1, 100, 4, [[mapped(2), 2]], 4);
    changes.note(2, 100, 0, [[mapped(9), 1]], 5);
    expect(changes.runs()).toEqual([100]);
    const sent: [number, number, [number, number, number][]][] = [];
    const lost = await changes.handBack(200, 5, async (disk, run, entries) => {
      sent.push([disk, run, entries]);
      return disk === 2 ? 1 : 0;
    });
    expect(sent).toEqual([
      [1, 100, [[4, mapped(2), 4], [5, mapped(2), 4]]],
      [2, 100, [[0, mapped(9), 5]]],
    ]);
    expect(lost).toEqual([2]);
    expect(changes.pending(1)).toBeNull();
    expect(changes.lostFor(2, 4)).toBe(true);
    expect(changes.lostFor(2, 5)).toBe(false);
    expect(changes.lostFor(1, 4)).toBe(false);
    changes.forget(2);
    expect(changes.lostFor(2, 4)).toBe(false);
  });

  test("a FLUSH whose run ended under it looks again after the registration settled it", async () => {
    const changes = new UncommittedChanges();
    changes.note(3, 100, 0, [[mapped(1), 1]], 1);
    const asked: number[] = [];
    const outcome = await changes.commitDisk(3, async (run) => {
      asked.push(run);
      // Meanwhile the agent registered with run 200 and handed the entries back.
      await changes.handBack(200, 1, async () => 0);
      throw new RemoteError("ESTALE", "run 100 ended");
    });
    expect({ outcome, asked }).toEqual({ outcome: "done", asked: [100] });
  });
});
