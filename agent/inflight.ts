// Which I/Os are in progress, per disk, shared by the agent's threads, so a blocking command (R6)
// on a disk can answer only after every I/O to that disk that was in progress when it arrived has
// finished, and waits for no other disk's I/O.
//
// Two-bucket epochs, as in RCU, one set per table slot: an I/O enters the bucket of its slot's
// current epoch before it looks up the table and leaves it when its storage I/O is done. A drain
// flips the slot's epoch and waits until the old bucket is empty.
//
// Entering is two steps (read the epoch, count in its bucket), and a thread can be preempted
// between them for as long as a whole drain takes: it would then count in the bucket that the
// *next* drain does not wait for, and look up the table anyway. So after counting in, the epoch is
// read again: unchanged, the count happened before the next flip (one total order of atomics), so
// that flip's drain sees it and waits; changed, the count is undone and the I/O enters again. An
// I/O that retries has not looked anything up yet, and its lookup comes after the flip, so after
// the table change the flip followed: no drain needs to wait for it.
//
// Slots map to lanes (slot mod LANES); each lane has its own epoch, so drains of different disks
// neither wait for each other's I/O nor batch together. Disks whose slots share a lane (only with
// more than LANES tables) wait for each other's I/O too: longer, never shorter.
//
//   Int32Array, one cache line per lane: [ epoch | waiters | bucket 0 | bucket 1 | padding ]
//
// How a drain waits is a parameter: on shared memory with real timeouts in production, by
// simulated time in a simulator, which then runs this same epoch logic.
import { monotonicClock, type LeaseClock } from "../engine/agent-link.ts";
import { assert } from "../engine/util/assert.ts";

export const INFLIGHT_LANES = 4096;
const LANE_CELLS = 16;
const EPOCH = 0;
const WAITERS = 1;
const BUCKETS = 2;
/** Waits are done in slices so a thread that never notifies cannot hang a drain forever. */
const WAIT_SLICE_MS = 50;

/** How a drain waits: for a bucket's count to change, and for its time limit. */
export interface DrainWaits extends Pick<LeaseClock, "after"> {
  /** Resolves once `cells[index]` may no longer hold `value`, or after a while anyway. */
  whileHolds(cells: Int32Array, index: number, value: number): Promise<unknown>;
}

export const atomicWaits: DrainWaits = {
  whileHolds: async (cells, index, value) => Atomics.waitAsync(cells, index, value, WAIT_SLICE_MS).value,
  after: monotonicClock.after,
};

/** The drains of one lane: while one waits, the lane's two buckets are both in use. */
interface LaneDrains {
  queued: (() => void)[];
}

export class InflightTracker {
  private readonly cells: Int32Array;
  /** Lanes with a drain in progress (main thread). */
  private readonly draining = new Map<number, LaneDrains>();

  protected constructor(
    readonly buffer: SharedArrayBuffer,
    private readonly waits: DrainWaits = atomicWaits,
  ) {
    this.cells = new Int32Array(buffer);
  }

  static create(waits: DrainWaits = atomicWaits): InflightTracker {
    return new InflightTracker(new SharedArrayBuffer(INFLIGHT_LANES * LANE_CELLS * 4), waits);
  }

  static attach(buffer: SharedArrayBuffer, waits: DrainWaits = atomicWaits): InflightTracker {
    assert(buffer.byteLength === INFLIGHT_LANES * LANE_CELLS * 4, "not an in-flight tracker's buffer");
    return new InflightTracker(buffer, waits);
  }

  /** Marks an I/O to the table in `slot` as started, before its lookup; returns the token for `end`. */
  begin(slot: number): number {
    const lane = laneOf(slot);
    for (;;) {
      const epoch = this.epochOf(lane);
      const cell = lane + BUCKETS + (epoch & 1);
      Atomics.add(this.cells, cell, 1);
      if (this.epochOf(lane) === epoch) return cell;
      this.end(cell); // a drain flipped in between (see the top of the file)
    }
  }

  end(token: number): void {
    const left = Atomics.sub(this.cells, token, 1) - 1;
    assert(left >= 0, "I/O ended twice");
    if (left === 0 && Atomics.load(this.cells, token - (token % LANE_CELLS) + WAITERS) > 0) Atomics.notify(this.cells, token);
  }

  /**
   * Resolves once every I/O to `slot` in progress now has ended (main thread). The epoch flips at
   * once, so I/O that begins later is not waited for. While one drain of a lane waits, drains of
   * that lane asked for meanwhile are batched and flip together when it is done; they may then
   * wait for a little more than they need to, never for less.
   */
  drain(slot: number): Promise<void> {
    const lane = laneOf(slot);
    return new Promise((resolve) => {
      const inProgress = this.draining.get(lane);
      if (inProgress) inProgress.queued.push(resolve);
      else this.drainFor(lane, [resolve]);
    });
  }

  /** Drains every slot of `slots`, giving up after `timeoutMs`: true when everything in flight has ended. */
  async drainWithin(slots: number[], timeoutMs: number): Promise<boolean> {
    let cancel: (() => void) | undefined;
    const timedOut = new Promise<false>((resolve) => (cancel = this.waits.after(timeoutMs, () => resolve(false))));
    try {
      return await Promise.race([Promise.all(slots.map((slot) => this.drain(slot))).then(() => true), timedOut]);
    } finally {
      cancel?.();
    }
  }

  /** The lane's epoch. A method of its own so that a test can stretch the window between reading
   *  the epoch and counting in, as a preempted thread would. */
  protected epochOf(lane: number): number {
    return Atomics.load(this.cells, lane + EPOCH);
  }

  private drainFor(lane: number, waiters: (() => void)[]): void {
    const drains: LaneDrains = { queued: [] };
    this.draining.set(lane, drains);
    this.drainOnce(lane).then(() => {
      for (const waiter of waiters) waiter();
      if (drains.queued.length > 0) this.drainFor(lane, drains.queued);
      else this.draining.delete(lane);
    });
  }

  private async drainOnce(lane: number): Promise<void> {
    const cell = lane + BUCKETS + (Atomics.add(this.cells, lane + EPOCH, 1) & 1);
    Atomics.add(this.cells, lane + WAITERS, 1);
    try {
      for (;;) {
        const count = Atomics.load(this.cells, cell);
        if (count === 0) return;
        await this.waits.whileHolds(this.cells, cell, count);
      }
    } finally {
      Atomics.sub(this.cells, lane + WAITERS, 1);
    }
  }
}

/** The first cell of the lane of `slot`. */
function laneOf(slot: number): number {
  assert(Number.isSafeInteger(slot) && slot >= 0, `bad table slot ${slot}`);
  return (slot % INFLIGHT_LANES) * LANE_CELLS;
}
