// Which I/Os are in progress, shared by the agent's threads, so a blocking command (R6) can answer
// only after every I/O that was in progress when it arrived has finished.
//
// Two-bucket epochs, as in RCU: an I/O enters the bucket of the current epoch before it looks up
// the table and leaves it when its storage I/O is done. A drain flips the epoch and waits until the
// old bucket of every thread is empty. An I/O that read the old epoch but entered after the drain
// looked does its lookup after the table change, so it needs no waiting for.
//
//   Int32Array: [ epoch | waiters | t0.b0 | t0.b1 | t1.b0 | t1.b1 | ... ]
import { assert } from "../engine/util/assert.ts";

const EPOCH = 0;
const WAITERS = 1;
const COUNTERS = 2;
export const INFLIGHT_THREADS_MAX = 64;
/** Waits are done in slices so a thread that never notifies cannot hang a drain forever. */
const WAIT_SLICE_MS = 50;

export class InflightTracker {
  private readonly cells: Int32Array;
  private draining = false;
  private queued: (() => void)[] = [];

  private constructor(
    readonly buffer: SharedArrayBuffer,
    private readonly thread: number,
  ) {
    this.cells = new Int32Array(buffer);
  }

  static create(): InflightTracker {
    return new InflightTracker(new SharedArrayBuffer((COUNTERS + 2 * INFLIGHT_THREADS_MAX) * 4), 0);
  }

  static attach(buffer: SharedArrayBuffer, thread: number): InflightTracker {
    assert(thread > 0 && thread < INFLIGHT_THREADS_MAX, `thread index ${thread} out of range`);
    return new InflightTracker(buffer, thread);
  }

  /** Marks an I/O as started; returns the token to pass to `end`. */
  begin(): number {
    const cell = COUNTERS + 2 * this.thread + (Atomics.load(this.cells, EPOCH) & 1);
    Atomics.add(this.cells, cell, 1);
    return cell;
  }

  end(token: number): void {
    const left = Atomics.sub(this.cells, token, 1) - 1;
    assert(left >= 0, "I/O ended twice");
    if (left === 0 && Atomics.load(this.cells, WAITERS) > 0) Atomics.notify(this.cells, token);
  }

  /**
   * Resolves once every I/O in progress now has ended (main thread). The epoch flips at once, so
   * I/O that begins later is not waited for. While one drain waits, the two buckets are in use,
   * so drains asked for meanwhile are batched and flip together when it is done; they may then
   * wait for a little more than they need to, never for less.
   */
  drain(): Promise<void> {
    return new Promise((resolve) => {
      if (this.draining) this.queued.push(resolve);
      else this.drainFor([resolve]);
    });
  }

  /** Like drain, but gives up after `timeoutMs`: true when everything in flight has ended. */
  async drainWithin(timeoutMs: number): Promise<boolean> {
    let timer: Timer | undefined;
    const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([this.drain().then(() => true), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  private drainFor(waiters: (() => void)[]): void {
    this.draining = true;
    this.drainOnce().then(() => {
      for (const waiter of waiters) waiter();
      const next = this.queued.splice(0);
      if (next.length > 0) this.drainFor(next);
      else this.draining = false;
    });
  }

  private async drainOnce(): Promise<void> {
    const old = Atomics.add(this.cells, EPOCH, 1) & 1;
    Atomics.add(this.cells, WAITERS, 1);
    try {
      for (let thread = 0; thread < INFLIGHT_THREADS_MAX; thread += 1) {
        const cell = COUNTERS + 2 * thread + old;
        for (;;) {
          const count = Atomics.load(this.cells, cell);
          if (count === 0) break;
          await Atomics.waitAsync(this.cells, cell, count, WAIT_SLICE_MS).value;
        }
      }
    } finally {
      Atomics.sub(this.cells, WAITERS, 1);
    }
  }
}
