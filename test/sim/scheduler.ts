// Simulated time: an event queue ordered by (time, insertion order). Nothing in the simulation
// uses real timers; every delay is an event here, so a run is a pure function of its seed.
//
// Each event belongs to a Life (one incarnation of a simulated process). When a process crashes
// its Life ends and its events are dropped, so a promise it was waiting on never resolves: its
// code stops where it was, as a killed process does.
import { assert } from "../../engine/util/assert.ts";

export class Life {
  private alive = true;

  constructor(readonly name: string) {}

  get isAlive(): boolean {
    return this.alive;
  }

  end(): void {
    this.alive = false;
  }
}

interface Event {
  time: number;
  order: number;
  life: Life | null;
  run: () => void;
  cancelled: boolean;
}

/** Real macrotask turns after each event, so promise chains and KeyedMutex hand-overs (which
 *  pass the lock on a setImmediate) settle before simulated time moves on. */
const SETTLE_TURNS = 2;

export class Scheduler {
  private time = 0;
  private order = 0;
  private readonly heap: Event[] = [];
  private processed = 0;

  get now(): number {
    return this.time;
  }

  get eventCount(): number {
    return this.processed;
  }

  /** Runs `run` at simulated time `time` (not before now), unless `life` has ended by then.
   *  Returns what cancels it. */
  at(time: number, life: Life | null, run: () => void): () => void {
    assert(Number.isFinite(time), `event time ${time} is not finite`);
    const event: Event = { time: Math.max(time, this.time), order: this.order++, life, run, cancelled: false };
    this.push(event);
    return () => (event.cancelled = true);
  }

  after(delayMs: number, life: Life | null, run: () => void): () => void {
    return this.at(this.time + delayMs, life, run);
  }

  /** Resolves after `delayMs` of simulated time; never, if `life` ends first. */
  sleep(delayMs: number, life: Life | null): Promise<void> {
    return new Promise((resolve) => {
      this.after(delayMs, life, resolve);
    });
  }

  /**
   * Processes events in order until `done()` holds, the queue is empty, or simulated time would
   * pass `deadline`. Returns whether `done()` held.
   */
  async run(done: () => boolean, deadline: number): Promise<boolean> {
    for (;;) {
      if (done()) return true;
      let next = this.pop();
      if (!next) {
        // Work handed over through real macrotasks may still schedule events.
        await settle();
        next = this.pop();
        if (!next) return done();
      }
      if (next.time > deadline) {
        this.push(next);
        return done();
      }
      if (next.cancelled || (next.life && !next.life.isAlive)) continue;
      this.time = next.time;
      this.processed += 1;
      next.run();
      await settle();
    }
  }

  private push(event: Event): void {
    const heap = this.heap;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  private pop(): Event | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (heap.length === 0 || !last) return top;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left;
      if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right;
      if (smallest === i) return top;
      [heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!];
      i = smallest;
    }
  }
}

function before(a: Event, b: Event): boolean {
  return a.time < b.time || (a.time === b.time && a.order < b.order);
}

async function settle(): Promise<void> {
  for (let turn = 0; turn < SETTLE_TURNS; turn += 1) await new Promise<void>((resolve) => setImmediate(resolve));
}
