// The agent's lease (R8), shared by its threads: until when the controller's last renewal lets
// this agent do I/O. Workers check it right before each storage I/O, so a process that was stopped
// past its lease does not write on old mappings when it resumes.
//
// Times are on the main thread's monotonic clock (performance.now(), immune to wall-clock jumps).
// Each thread has its own performance.now() origin, so a worker learns the offset to the main
// thread's clock when it starts (off by the message latency, far below the controller's grace).

export class Lease {
  private readonly cell: Float64Array;

  private constructor(
    readonly buffer: SharedArrayBuffer,
    /** Added to this thread's performance.now() to get the main thread's clock. */
    private readonly offsetMs: number,
  ) {
    this.cell = new Float64Array(buffer);
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

  get until(): number {
    return this.cell[0]!;
  }

  /** Moves the end of the lease later (never earlier). One writer: the main thread. */
  extend(until: number): void {
    if (until > this.cell[0]!) this.cell[0] = until;
  }

  valid(): boolean {
    return this.now() < this.cell[0]!;
  }
}
