// The agent's lease (R8), shared by its threads: until when the controller's last renewal lets
// this agent do I/O. Storage checks it right before each read or write (storage.ts), so a process
// that was stopped past its lease does not write on old mappings when it resumes.
//
// Times are whole milliseconds on the main thread's monotonic clock (performance.now(), immune to
// wall-clock jumps; a simulator gives its own), in a BigInt64Array cell read and written with
// Atomics: the main thread moves the end later while workers read it. Each thread has its own
// clock origin, so a worker learns the offset to the main thread's clock when it starts (off by
// the message latency, far below the controller's grace).
import { monotonicClock, type LeaseClock } from "../engine/agent-link.ts";

/** What a lease reads the time from. */
export type LeaseTime = Pick<LeaseClock, "now">;

export class Lease {
  private readonly cell: BigInt64Array;

  private constructor(
    readonly buffer: SharedArrayBuffer,
    /** Added to this thread's clock to get the main thread's. */
    private readonly offsetMs: number,
    private readonly clock: LeaseTime,
  ) {
    this.cell = new BigInt64Array(buffer);
  }

  static create(clock: LeaseTime = monotonicClock): Lease {
    return new Lease(new SharedArrayBuffer(8), 0, clock);
  }

  /** In a worker: `mainNow` is the main thread's clock when it sent the buffer. */
  static attach(buffer: SharedArrayBuffer, mainNow: number, clock: LeaseTime = monotonicClock): Lease {
    return new Lease(buffer, mainNow - clock.now(), clock);
  }

  /** The main thread's clock, read from this thread. */
  now(): number {
    return this.clock.now() + this.offsetMs;
  }

  /** The end of the lease, in whole milliseconds. */
  get until(): number {
    return Number(Atomics.load(this.cell, 0));
  }

  /** Moves the end of the lease later (never earlier); `until` is rounded down to a millisecond.
   *  One writer: the main thread. */
  extend(until: number): void {
    const end = BigInt(Math.floor(until));
    if (end > Atomics.load(this.cell, 0)) Atomics.store(this.cell, 0, end);
  }

  valid(): boolean {
    return this.now() < this.until;
  }
}
