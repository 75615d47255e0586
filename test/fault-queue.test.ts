// FaultQueue: faults of one disk from one agent that wait for the family lock together are
// resolved as one batch; each fault gets its own answer or error.
import { describe, expect, test } from "bun:test";
import type { Disk } from "../engine/catalog.ts";
import { FaultQueue } from "../engine/fault-queue.ts";
import type { FaultAnswer, FaultArgs } from "../engine/faults.ts";
import { KeyedMutex } from "../engine/util/mutex.ts";

function disk(id: number, family: number): Disk {
  return { id, family } as Disk;
}

function writeFault(diskId: number, segment: number): FaultArgs {
  return { disk: diskId, op: "write", first: segment, last: segment, state: 0, offset: segment * 65536, length: 4096 };
}

/** A resolver that records each batch and answers every fault with its first segment, failing segment 13. */
class RecordingResolver {
  readonly batches: { disk: number; agent: object; segments: number[] }[] = [];
  async resolve(target: Disk, faults: FaultArgs[], agent: object): Promise<PromiseSettledResult<FaultAnswer>[]> {
    this.batches.push({ disk: target.id, agent, segments: faults.map((fault) => fault.first) });
    return faults.map((fault) =>
      fault.first === 13 ? { status: "rejected", reason: new Error("segment 13 fails") } : { status: "fulfilled", value: { action: "retry", first: fault.first, runs: [] } },
    );
  }
}

/** Holds the family lock until `release` is called. */
function holdLock(locks: KeyedMutex<number>, family: number): { release: () => void; done: Promise<void> } {
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  return { release, done: locks.run(family, () => held) };
}

describe("fault queue", () => {
  test("faults of one disk from one agent that queue behind the lock are one batch; each gets its own answer", async () => {
    const locks = new KeyedMutex<number>();
    const resolver = new RecordingResolver();
    const queue = new FaultQueue(locks, resolver);
    const d = disk(1, 1);
    const agent = {};
    const lock = holdLock(locks, 1);
    const answers = [3, 7, 9].map((segment) => queue.submit(d, writeFault(1, segment), agent));
    lock.release();
    expect((await Promise.all(answers)).map((answer) => answer.first)).toEqual([3, 7, 9]);
    expect(resolver.batches).toEqual([{ disk: 1, agent, segments: [3, 7, 9] }]);
    await lock.done;
  });

  test("other agents and other disks of the family get batches of their own, in arrival order", async () => {
    const locks = new KeyedMutex<number>();
    const resolver = new RecordingResolver();
    const queue = new FaultQueue(locks, resolver);
    const origin = disk(1, 1);
    const snapshot = disk(2, 1);
    const a = {};
    const b = {};
    const lock = holdLock(locks, 1);
    const answers = [queue.submit(origin, writeFault(1, 1), a), queue.submit(origin, writeFault(1, 2), b), queue.submit(snapshot, writeFault(2, 3), a), queue.submit(origin, writeFault(1, 4), a)];
    lock.release();
    await Promise.all(answers);
    expect(resolver.batches).toEqual([
      { disk: 1, agent: a, segments: [1, 4] },
      { disk: 1, agent: b, segments: [2] },
      { disk: 2, agent: a, segments: [3] },
    ]);
    await lock.done;
  });

  test("a fault that fails fails alone", async () => {
    const locks = new KeyedMutex<number>();
    const queue = new FaultQueue(locks, new RecordingResolver());
    const d = disk(1, 1);
    const agent = {};
    const lock = holdLock(locks, 1);
    const settled = Promise.allSettled([12, 13, 14].map((segment) => queue.submit(d, writeFault(1, segment), agent)));
    lock.release();
    const results = await settled;
    expect(results.map((result) => result.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect((results[1] as PromiseRejectedResult).reason.message).toBe("segment 13 fails");
    await lock.done;
  });

  test("a batch that has the lock takes no more faults: those go to the next batch", async () => {
    const locks = new KeyedMutex<number>();
    const batches: number[][] = [];
    let releaseFirst!: () => void;
    const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve));
    let firstStarted!: () => void;
    const started = new Promise<void>((resolve) => (firstStarted = resolve));
    const queue = new FaultQueue(locks, {
      async resolve(_disk, faults) {
        batches.push(faults.map((fault) => fault.first));
        if (batches.length === 1) {
          firstStarted();
          await firstHeld;
        }
        return faults.map((fault) => ({ status: "fulfilled", value: { action: "retry", first: fault.first, runs: [] } }));
      },
    });
    const d = disk(1, 1);
    const agent = {};
    const first = queue.submit(d, writeFault(1, 1), agent);
    await started;
    const later = [queue.submit(d, writeFault(1, 2), agent), queue.submit(d, writeFault(1, 3), agent)];
    releaseFirst();
    await Promise.all([first, ...later]);
    expect(batches).toEqual([[1], [2, 3]]);
  });
});
