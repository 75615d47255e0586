// The agent's lease (R8), shared by its threads: until when the controller's last renewal lets
// this agent do I/O. Storage checks it right before each read or write (storage.ts), so a process
// that was stopped past its lease does not write on old mappings when it resumes.
//
// Times are whole milliseconds on the main thread's monotonic clock (performance.now(), immune to
// wall-clock jumps), in a BigInt64Array cell read and written with Atomics: the main thread moves
// the end later while workers read it. Each thread has its own performance.now() origin, so a
// worker learns the offset to the main thread's clock when it starts (off by the message latency,
// far below the controller's grace).

export class Lease {
  private readonly cell: BigInt64Array;

  private constructor(
    readonly buffer: SharedArrayBuffer,
    /** Added to this thread's performance.now() to get the main thread's clock. */
    private readonly offsetMs: number,
  ) {
    this.cell = new BigInt64Array(buffer);
  }

  static create(): Lease {
    return new Lease(new SharedArrayBuffer(8), 0);
  }

  /** In a worker: `mainNow` is the main thread's clock when it sent the buffer. */
  static attach(buffer: SharedArrayBuffer, mainNow: number): Lease {
    return new Lease(buffer, mainNow - performance.now());
  }

  /** The main thread's clock, read from this thread. */
  now(): number {
    return performance.now() + this.offsetMs;
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
