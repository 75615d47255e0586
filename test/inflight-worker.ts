// Worker for the multi-thread tests in inflight.test.ts: one I/O at a time on a table slot, each
// step told by the main thread. It can be made to stall between reading the slot's epoch and
// counting itself in (as a preempted thread would), and holds its I/O, with the mapping version it
// "looked up" on display, until it is released.
import { InflightTracker } from "../agent/inflight.ts";

declare const self: Worker;

export interface WorkerSetup {
  tracker: SharedArrayBuffer;
  /** Int32Array, see the cells below. */
  control: SharedArrayBuffer;
  index: number;
  /** Test canary: the tracker's re-check of the epoch after counting in sees the epoch it read
   *  first, as in the tracker before the re-check existed. */
  recheckDisabled: boolean;
}

/** An I/O on `slot`; with `stall`, stopped between reading the epoch and counting in. */
export interface IoOrder {
  slot: number;
  stall: boolean;
}

/** What the worker reports: stalled (epoch read, not counted in), holding (counted in and looked
 *  up), ended. */
export type WorkerEvent = "stalled" | "holding" | "ended";

/** control cells: the current mapping version (the main thread's "table"), then per worker the
 *  version its I/O looked up (0: none) and its go-ahead flag. */
export const MAPPING = 0;
export const holdingCell = (index: number) => 1 + 2 * index;
export const goCell = (index: number) => 2 + 2 * index;
export const CONTROL_CELLS = (workers: number) => 1 + 2 * workers;

/** Waits until the main thread sets this worker's go-ahead flag, then clears it. */
function awaitGo(control: Int32Array, index: number): void {
  while (Atomics.load(control, goCell(index)) === 0) Atomics.wait(control, goCell(index), 0);
  Atomics.store(control, goCell(index), 0);
}

class StallingTracker extends InflightTracker {
  private stallFirstRead = false;
  private reads = 0;
  private epochRead = 0;

  constructor(
    buffer: SharedArrayBuffer,
    private readonly setup: WorkerSetup,
    private readonly control: Int32Array,
  ) {
    super(buffer);
  }

  beginStalling(slot: number, stall: boolean): number {
    this.stallFirstRead = stall;
    this.reads = 0;
    return this.begin(slot);
  }

  // begin() reads the epoch before counting in and again after (the re-check), per try.
  protected override epochOf(lane: number): number {
    const recheck = this.reads % 2 === 1;
    this.reads += 1;
    if (recheck) return this.setup.recheckDisabled ? this.epochRead : super.epochOf(lane);
    this.epochRead = super.epochOf(lane);
    if (this.stallFirstRead) {
      this.stallFirstRead = false;
      postMessage("stalled" satisfies WorkerEvent);
      awaitGo(this.control, this.setup.index);
    }
    return this.epochRead;
  }
}

let tracker: StallingTracker;
let control: Int32Array;
let index = 0;

self.onmessage = (event: MessageEvent<WorkerSetup | IoOrder>) => {
  if ("tracker" in event.data) {
    const setup = event.data;
    control = new Int32Array(setup.control);
    index = setup.index;
    tracker = new StallingTracker(setup.tracker, setup, control);
    return;
  }
  const { slot, stall } = event.data;
  const token = tracker.beginStalling(slot, stall);
  Atomics.store(control, holdingCell(index), Atomics.load(control, MAPPING)); // the lookup
  postMessage("holding" satisfies WorkerEvent);
  awaitGo(control, index);
  Atomics.store(control, holdingCell(index), 0);
  tracker.end(token);
  postMessage("ended" satisfies WorkerEvent);
};
