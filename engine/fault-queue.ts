// Faults wait for their disk family's lock (one table change at a time per family). The faults of
// one disk from one agent that arrive while they wait are resolved together when the lock comes:
// under a burst of first writes (a thin disk, a fresh snapshot) that is one batch per turn of the
// lock, with one sync for all its copies, instead of one turn and one sync per fault.
import type { Disk } from "./catalog.ts";
import type { FaultAnswer, FaultArgs, FaultResolver } from "./faults.ts";
import type { KeyedMutex } from "./util/mutex.ts";

interface Waiting {
  fault: FaultArgs;
  resolve(answer: FaultAnswer): void;
  reject(reason: unknown): void;
}

export class FaultQueue {
  /** Per disk and agent, the batch still waiting for the lock (faults may join it). */
  private readonly open = new Map<Disk, Map<object, Waiting[]>>();

  constructor(
    private readonly familyLocks: KeyedMutex<number>,
    private readonly resolver: Pick<FaultResolver, "resolve">,
  ) {}

  submit(disk: Disk, fault: FaultArgs, agent: object): Promise<FaultAnswer> {
    return new Promise((resolve, reject) => {
      const waiting: Waiting = { fault, resolve, reject };
      const byAgent = this.open.get(disk) ?? new Map<object, Waiting[]>();
      this.open.set(disk, byAgent);
      const batch = byAgent.get(agent);
      if (batch) {
        batch.push(waiting);
        return;
      }
      const started = [waiting];
      byAgent.set(agent, started);
      void this.familyLocks.run(disk.family, async () => {
        // From here on the batch is closed: later faults start the next one.
        byAgent.delete(agent);
        if (byAgent.size === 0 && this.open.get(disk) === byAgent) this.open.delete(disk);
        try {
          const settled = await this.resolver.resolve(
            disk,
            started.map((entry) => entry.fault),
            agent,
          );
          settled.forEach((result, i) => (result.status === "fulfilled" ? started[i]!.resolve(result.value) : started[i]!.reject(result.reason)));
        } catch (error) {
          for (const entry of started) entry.reject(error);
        }
      });
    });
  }
}
