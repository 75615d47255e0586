// The simulated agent's record of I/O in progress, with the semantics of agent/inflight.ts: a
// drain waits for every I/O that had begun when it was asked for, not for I/O that begins later.
// (The real tracker waits on shared memory with real timeouts; this one is driven by the sim.)
import { assert } from "../../engine/util/assert.ts";
import type { Life, Scheduler } from "./scheduler.ts";

export class SimInflight {
  private next = 1;
  private readonly live = new Set<number>();
  private waiters: { pending: Set<number>; resolve: () => void }[] = [];

  begin(): number {
    const token = this.next++;
    this.live.add(token);
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

  /** Resolves once every I/O in progress now has ended. */
  drain(): Promise<void> {
    if (this.live.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ pending: new Set(this.live), resolve }));
  }

  /** Like drain, but gives up after `timeoutMs`: true when everything in flight has ended. */
  drainWithin(timeoutMs: number, scheduler: Scheduler, life: Life): Promise<boolean> {
    return Promise.race([this.drain().then(() => true), scheduler.sleep(timeoutMs, life).then(() => false)]);
  }
}
