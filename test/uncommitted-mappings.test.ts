// Mapping changes from faults (a thin disk's first writes, copy-on-write) are not made durable one
// by one: the FLUSH that needs them commits them, and a FUA write commits its own. Shown with a
// controller and an agent as separate processes and kill -9 of the controller:
//   - after an acknowledged FLUSH, every write before it survives the crash;
//   - a FUA write survives without a FLUSH, also one through a mapping an earlier fault made;
//   - an unflushed write may be lost, but then the next FLUSH says so (EIO) instead of succeeding.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { UncommittedChanges } from "../agent/uncommitted.ts";
import { BlockClient, filled } from "./helpers/block-client.ts";
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
async function started(): Promise<{ control: string; nbdSocket: string; controller: Child; agent: Child; restartController(): Promise<Child> }> {
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
  const agent = spawnCtl(["--control", control, "agent", "--id", "a1", "--nbd", `unix:${nbdSocket}`], "agent");
  await agent.waitForLine(/registered with the controller/);
  expect((await ctl(["--control", control, "disk", "create", "d", "--size", "16M", "--segment-size", "64K"])).code).toBe(0);
  return { control, nbdSocket, controller, agent, restartController: startController };
}

describe("uncommitted mappings (durable at the FLUSH that needs them)", () => {
  test("flushed and FUA writes to new segments survive a controller crash; an unflushed one is lost only with an EIO FLUSH", async () => {
    const { control, nbdSocket, controller, agent, restartController } = await started();
    const client = await BlockClient.open(nbdSocket, "d");
    // Segment 0: written and flushed. Segment 1: FUA. Segment 2: written, not flushed. Segment 3:
    // written (its fault maps it, uncommitted), then a FUA write next to it that needs no fault
    // but relies on that mapping.
    expect(await client.write(0, filled(0x01, 4 * KIB))).toBe(0);
    expect(await client.flush()).toBe(0);
    expect(await client.write(SEGMENT, filled(0x02, 4 * KIB), true)).toBe(0);
    expect(await client.write(2 * SEGMENT, filled(0x03, 4 * KIB))).toBe(0);
    expect(await client.write(3 * SEGMENT, filled(0x05, 4 * KIB))).toBe(0);
    expect(await client.write(3 * SEGMENT + 4 * KIB, filled(0x06, 4 * KIB), true)).toBe(0);
    await controller.kill("SIGKILL");
    const linesBefore = agent.lines.length;
    await restartController();
    // Once the agent has registered again (dropping its entries), reads fault and see the tables
    // the new controller recovered.
    await agent.waitForLine(/registered with the controller/, undefined, linesBefore);
    expect(await bytesAt(client, 0)).toEqual(new Set([0x01]));
    expect(await bytesAt(client, SEGMENT)).toEqual(new Set([0x02]));
    expect(await bytesAt(client, 3 * SEGMENT + 4 * KIB)).toEqual(new Set([0x06]));
    const unflushed = await bytesAt(client, 2 * SEGMENT);
    const flushed = await client.flush();
    // Either the mapping was committed in time (a background commit) and the data is there, or it
    // was lost, and the FLUSH covering that write fails. Never lost and a clean FLUSH.
    if (unflushed.has(0x03)) expect(unflushed).toEqual(new Set([0x03]));
    else expect({ unflushed: [...unflushed], flushed }).toEqual({ unflushed: [0], flushed: 5 /* EIO */ });
    // The loss is reported once; the disk goes on working and flushing.
    expect(await client.write(2 * SEGMENT, filled(0x04, 4 * KIB))).toBe(0);
    expect(await client.flush()).toBe(0);
    expect(await bytesAt(client, 2 * SEGMENT)).toEqual(new Set([0x04]));
    await client.close();
    const check = await ctl(["--control", control, "check"]);
    expect(check.code).toBe(0);
  });
});

describe("UncommittedChanges", () => {
  test("a commit covers the answers noted before it; later ones stay pending", () => {
    const changes = new UncommittedChanges();
    expect(changes.pending(7)).toBeNull();
    changes.note(7, 100);
    const seen = changes.pending(7)!;
    changes.note(7, 100);
    changes.committed(7, seen);
    expect(changes.pending(7)).toEqual({ run: 100, answers: 2, lost: false });
    changes.committed(7, changes.pending(7)!);
    expect(changes.pending(7)).toBeNull();
  });

  test("answers from a new controller run mean the old run's changes were lost, reported once", () => {
    const changes = new UncommittedChanges();
    changes.note(1, 100);
    changes.note(1, 200);
    const seen = changes.pending(1)!;
    expect(seen).toEqual({ run: 200, answers: 2, lost: true });
    changes.note(1, 200);
    changes.lossReported(1, seen);
    expect(changes.pending(1)).toEqual({ run: 200, answers: 3, lost: false });
  });

  test("a run that ended is remembered as lost until a FLUSH reports it", () => {
    const changes = new UncommittedChanges();
    changes.note(1, 100);
    changes.runEnded(1, changes.pending(1)!);
    const seen = changes.pending(1)!;
    expect(seen.lost).toBe(true);
    changes.lossReported(1, seen);
    expect(changes.pending(1)).toBeNull();
  });
});
