// The blocking flag (R6): a drain of a disk answers only after every I/O to that disk in progress
// when it began has ended, does not wait for I/O that began after it, nor for other disks' I/O.
import { afterEach, describe, expect, test } from "bun:test";
import { INFLIGHT_LANES, InflightTracker } from "../agent/inflight.ts";
import { CONTROL_CELLS, goCell, holdingCell, MAPPING, type IoOrder, type WorkerEvent, type WorkerSetup } from "./inflight-worker.ts";

/** Whether `promise` has settled, checked after the pending microtasks and timers have run. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(() => (done = true));
  await Bun.sleep(0);
  await Promise.resolve();
  return done;
}

describe("in-flight tracking", () => {
  test("blocking: a drain waits for the I/O in progress when it began", async () => {
    const main = InflightTracker.create();
    const worker = InflightTracker.attach(main.buffer);
    const io = worker.begin(7);
    const drained = main.drain(7);
    expect(await settled(drained)).toBe(false);
    worker.end(io);
    await drained;
  });

  test("blocking: I/O that begins after the drain does not hold it up", async () => {
    const main = InflightTracker.create();
    const worker = InflightTracker.attach(main.buffer);
    const before = worker.begin(2);
    const drained = main.drain(2);
    const after = worker.begin(2);
    worker.end(before);
    await drained;
    worker.end(after);
    await main.drain(2);
  });

  test("blocking: with nothing in flight a drain answers at once", async () => {
    const main = InflightTracker.create();
    expect(await settled(main.drain(0))).toBe(true);
  });

  test("blocking: drains queue behind each other and each sees its own I/O finish", async () => {
    const main = InflightTracker.create();
    const worker = InflightTracker.attach(main.buffer);
    const first = worker.begin(3);
    const drainOne = main.drain(3);
    const second = worker.begin(3);
    const drainTwo = main.drain(3);
    worker.end(second);
    expect(await settled(drainOne)).toBe(false);
    expect(await settled(drainTwo)).toBe(false);
    worker.end(first);
    await Promise.all([drainOne, drainTwo]);
  });

  test("blocking: a drain of one disk does not wait for another disk's I/O; slots a lane apart share it", async () => {
    const main = InflightTracker.create();
    const worker = InflightTracker.attach(main.buffer);
    const onA = worker.begin(1);
    expect(await settled(main.drain(2))).toBe(true);
    // Beyond INFLIGHT_LANES tables, slots share lanes: the drain waits longer, never shorter.
    const sharing = main.drain(1 + INFLIGHT_LANES);
    expect(await settled(sharing)).toBe(false);
    worker.end(onA);
    await sharing;
  });

  test("a bad slot is refused", () => {
    const main = InflightTracker.create();
    expect(() => main.begin(-1)).toThrow(/bad table slot/);
    expect(() => main.drain(0.5)).toThrow(/bad table slot/);
  });
});

/** Real worker threads running inflight-worker.ts, each told one step at a time. */
class IoThreads {
  private readonly workers: Worker[] = [];
  private readonly events: WorkerEvent[][] = [];
  private readonly notify: (() => void)[] = [];
  readonly control: Int32Array;

  constructor(tracker: InflightTracker, count: number, recheckDisabled = false) {
    const control = new SharedArrayBuffer(CONTROL_CELLS(count) * 4);
    this.control = new Int32Array(control);
    for (let index = 0; index < count; index += 1) {
      const worker = new Worker(new URL("./inflight-worker.ts", import.meta.url).href);
      this.events.push([]);
      this.notify.push(() => {});
      worker.onmessage = (event: MessageEvent<WorkerEvent>) => {
        this.events[index]!.push(event.data);
        this.notify[index]!();
      };
      worker.postMessage({ tracker: tracker.buffer, control, index, recheckDisabled } satisfies WorkerSetup);
      this.workers.push(worker);
    }
  }

  /** Starts an I/O on worker `index`. */
  start(index: number, order: IoOrder): void {
    this.workers[index]!.postMessage(order);
  }

  /** Resolves with worker `index`'s next event, within a bound. */
  async next(index: number): Promise<WorkerEvent> {
    for (let tries = 0; this.events[index]!.length === 0; tries += 1) {
      if (tries > 100) throw new Error(`worker ${index} went silent`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.notify[index] = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.events[index]!.shift()!;
  }

  /** Lets worker `index` go on from where it waits. */
  go(index: number): void {
    Atomics.store(this.control, goCell(index), 1);
    Atomics.notify(this.control, goCell(index));
  }

  holding(index: number): number {
    return Atomics.load(this.control, holdingCell(index));
  }

  terminate(): void {
    for (const worker of this.workers) worker.terminate();
  }
}

let threads: IoThreads | null = null;
afterEach(() => {
  threads?.terminate();
  threads = null;
});

/**
 * Every worker, each on its own slot and all at once, `rounds` times: an I/O stalls between
 * reading its slot's epoch and counting in while the mapping changes and a whole drain runs; it
 * then looks up the new mapping and holds; the mapping changes again and a drain starts. That drain
 * must not return while the I/O still uses the mapping it replaced. Returns the drains that did.
 */
async function preemptedBegins(workers: number, rounds: number, recheckDisabled: boolean): Promise<string[]> {
  const tracker = InflightTracker.create();
  const io = (threads = new IoThreads(tracker, workers, recheckDisabled));
  const wrong: string[] = [];
  // One mapping version for everything; each worker's slot has its own drains.
  const newMapping = () => Atomics.add(io.control, MAPPING, 1) + 1;
  newMapping();
  await Promise.all(
    Array.from({ length: workers }, async (_, index) => {
      const slot = 10 + index;
      for (let round = 0; round < rounds; round += 1) {
        io.start(index, { slot, stall: true });
        expect(await io.next(index)).toBe("stalled");
        newMapping();
        await tracker.drain(slot); // nothing counted in on the slot yet: answers at once
        io.go(index);
        expect(await io.next(index)).toBe("holding");
        const lookedUp = io.holding(index);
        const replaced = newMapping();
        const drained = tracker.drain(slot);
        if ((await settled(drained)) && io.holding(index) !== 0 && io.holding(index) < replaced) {
          wrong.push(`slot ${slot} round ${round}: drain returned while an I/O used mapping ${lookedUp} (now ${replaced})`);
        }
        io.go(index);
        expect(await io.next(index)).toBe("ended");
        await drained;
      }
    }),
  );
  return wrong;
}

describe("in-flight tracking across threads", () => {
  test("blocking: a worker thread's I/O is seen across threads", async () => {
    const tracker = InflightTracker.create();
    const io = (threads = new IoThreads(tracker, 1));
    io.start(0, { slot: 4, stall: false });
    expect(await io.next(0)).toBe("holding");
    const drained = tracker.drain(4);
    expect(await settled(drained)).toBe(false);
    io.go(0);
    expect(await io.next(0)).toBe("ended");
    await drained;
  });

  test("blocking: a stalled I/O on disk A holds up drains of A only, not of disk B, on other threads too", async () => {
    const tracker = InflightTracker.create();
    const io = (threads = new IoThreads(tracker, 2));
    io.start(0, { slot: 1, stall: false });
    io.start(1, { slot: 2, stall: false });
    expect(await io.next(0)).toBe("holding");
    expect(await io.next(1)).toBe("holding");
    const drainA = tracker.drain(1);
    const drainB = tracker.drain(2);
    io.go(1); // B's I/O ends; A's stays stalled
    expect(await io.next(1)).toBe("ended");
    await drainB;
    expect(await settled(drainA)).toBe(false);
    // A later drain of B, and one of a disk with no I/O at all, answer while A's I/O still stalls.
    expect(await settled(tracker.drain(2))).toBe(true);
    expect(await settled(tracker.drain(3))).toBe(true);
    expect(await settled(drainA)).toBe(false);
    io.go(0);
    expect(await io.next(0)).toBe("ended");
    await drainA;
  });

  test("stress: a begin preempted between reading the epoch and counting in, for a whole drain, is waited for by the next drain (4 threads x 200 rounds)", async () => {
    expect(await preemptedBegins(4, 200, false)).toEqual([]);
  });

  test("canary: without the re-check of the epoch after counting in, the same rounds catch drains returning early", async () => {
    const wrong = await preemptedBegins(2, 5, true);
    expect(wrong.length).toBeGreaterThan(0);
  });
});
