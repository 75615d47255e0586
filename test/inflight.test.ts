// The blocking flag (R6): a drain answers only after every I/O in progress when it began has ended,
// and does not wait for I/O that began after it.
import { describe, expect, test } from "bun:test";
import { InflightTracker } from "../agent/inflight.ts";

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
    const worker = InflightTracker.attach(main.buffer, 1);
    const io = worker.begin();
    const drained = main.drain();
    expect(await settled(drained)).toBe(false);
    worker.end(io);
    await drained;
  });

  test("blocking: I/O that begins after the drain does not hold it up", async () => {
    const main = InflightTracker.create();
    const worker = InflightTracker.attach(main.buffer, 2);
    const before = worker.begin();
    const drained = main.drain();
    const after = worker.begin();
    worker.end(before);
    await drained;
    worker.end(after);
    await main.drain();
  });

  test("blocking: with nothing in flight a drain answers at once", async () => {
    const main = InflightTracker.create();
    expect(await settled(main.drain())).toBe(true);
  });

  test("blocking: drains queue behind each other and each sees its own I/O finish", async () => {
    const main = InflightTracker.create();
    const worker = InflightTracker.attach(main.buffer, 3);
    const first = worker.begin();
    const drainOne = main.drain();
    const second = worker.begin();
    const drainTwo = main.drain();
    worker.end(second);
    expect(await settled(drainOne)).toBe(false);
    expect(await settled(drainTwo)).toBe(false);
    worker.end(first);
    await Promise.all([drainOne, drainTwo]);
  });

  test("blocking: a worker thread's I/O is seen across threads", async () => {
    const main = InflightTracker.create();
    const code = `
      import { InflightTracker } from ${JSON.stringify(new URL("../agent/inflight.ts", import.meta.url).pathname)};
      self.onmessage = (event) => {
        const tracker = InflightTracker.attach(event.data, 5);
        const io = tracker.begin();
        postMessage("begun");
        self.onmessage = () => { tracker.end(io); postMessage("ended"); };
      };`;
    const worker = new Worker(URL.createObjectURL(new Blob([code], { type: "application/typescript" })));
    try {
      const messages: string[] = [];
      let notify: () => void = () => {};
      worker.onmessage = (event) => {
        messages.push(event.data);
        notify();
      };
      const next = () => new Promise<void>((resolve) => (notify = resolve));
      let waiting = next();
      worker.postMessage(main.buffer);
      await waiting;
      const drained = main.drain();
      expect(await settled(drained)).toBe(false);
      waiting = next();
      worker.postMessage("end");
      await waiting;
      await drained;
      expect(messages).toEqual(["begun", "ended"]);
    } finally {
      worker.terminate();
    }
  });
});
