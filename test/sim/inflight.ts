// The simulated agent's record of I/O in progress, with the semantics of agent/inflight.ts: a
// drain of a table slot waits for every I/O to that slot that had begun when it was asked for, not
// for I/O that begins later nor for other slots' I/O.
// (The real tracker waits on shared memory with real timeouts; this one is driven by the sim.)
import { assert } from "../../engine/util/assert.ts";
import type { Life, Scheduler } from "./scheduler.ts";

export class SimInflight {
  private next = 1;
  /** Each I/O in progress, with its table slot. */
  private readonly live = new Map<number, number>();
  private waiters: { pending: Set<number>; resolve: () => void }[] = [];

  begin(slot: number): number {
    const token = this.next++;
    this.live.set(token, slot);
    return token;
  }

  end(token: number): void {
    assert(this.live.delete(token), "I/O ended twice");
    for (const waiter of this.waiters) waiter.pending.delete(token);
    const done = this.waiters.filter((waiter) => waiter.pending.size === 0);
    if (done.length === 0) return;
    this.waiters = this.waiters.filter((waiter) => waiter.pending.size > 0);
    for (const waiter of done) waiter.resolve();
  }

  /** Resolves once every I/O to `slot` in progress now has ended. */
  drain(slot: number): Promise<void> {
    const pending = new Set([...this.live].filter(([, of]) => of === slot).map(([token]) => token));
    if (pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ pending, resolve }));
  }

  /** Drains every slot of `slots`, giving up after `timeoutMs`: true when everything in flight has ended. */
  drainWithin(slots: number[], timeoutMs: number, scheduler: Scheduler, life: Life): Promise<boolean> {
    const drained = Promise.all(slots.map((slot) => this.drain(slot))).then(() => true);
    return Promise.race([drained, scheduler.sleep(timeoutMs, life).then(() => false)]);
  }
}
