// Schedules the faults of a run at random simulated times: crashes of agents and the controller
// (process or host) with their restarts, partitions, slow links, lossy windows and failing
// containers. Every fault ends (heals, restarts) on its own; `stop` makes those still to come
// do nothing and heals what is broken, so the run can settle and be checked.
import type { CrashKind } from "./log-disk.ts";
import type { FaultRates } from "./options.ts";
import type { Random } from "./random.ts";
import type { Scheduler } from "./scheduler.ts";
import type { Trace } from "./trace.ts";

/** What faults act on. */
export interface Chaos {
  readonly agentHosts: string[];
  readonly containers: number[];
  crashAgent(host: string, kind: CrashKind): void;
  startAgent(host: string): void;
  crashController(kind: CrashKind): void;
  startController(): void;
  partition(host: string, on: boolean): void;
  slowLink(host: string, on: boolean): void;
  loseMessages(probability: number): void;
  failContainer(id: number, probability: number): void;
}

export class Injector {
  private stopped = false;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly trace: Trace,
    private readonly chaos: Chaos,
    private readonly rates: FaultRates,
  ) {}

  /** Schedules this run's faults over [start, start + durationMs). */
  plan(durationMs: number): void {
    const { random, chaos, rates } = this;
    const at = (action: () => void) => {
      this.scheduler.after(random.between(0, durationMs), null, () => {
        if (!this.stopped) action();
      });
    };
    for (let i = this.count(rates.agentCrashes); i > 0; i -= 1) {
      at(() => {
        const host = random.pick(chaos.agentHosts);
        chaos.crashAgent(host, this.kind());
        this.later(random.between(20, 600), () => chaos.startAgent(host));
      });
    }
    for (let i = this.count(rates.controllerCrashes); i > 0; i -= 1) at(() => this.crashController());
    for (let i = this.count(rates.partitions); i > 0; i -= 1) {
      at(() => {
        const host = random.pick(chaos.agentHosts);
        this.window(random.between(50, 3000), (on) => chaos.partition(host, on));
      });
    }
    for (let i = this.count(rates.slowLinks); i > 0; i -= 1) {
      at(() => {
        const host = random.pick(chaos.agentHosts);
        this.window(random.between(100, 1000), (on) => chaos.slowLink(host, on));
      });
    }
    for (let i = this.count(rates.lossWindows); i > 0; i -= 1) {
      at(() => this.window(random.between(200, 1500), (on) => chaos.loseMessages(on ? rates.lossProbability : 0)));
    }
    for (let i = this.count(rates.containerFailures); i > 0; i -= 1) {
      at(() => {
        const id = random.pick(chaos.containers);
        const probability = random.between(0.3, 1);
        this.window(random.between(20, 400), (on) => chaos.failContainer(id, on ? probability : 0));
      });
    }
  }

  /** No new faults from now on (faults in progress still heal and restart). */
  stop(): void {
    this.stopped = true;
  }

  /** At a failpoint of the engine: whether the controller crashes right there (it is restarted
   *  later, like any crashed controller). */
  crashesAtFailpoint(): boolean {
    if (this.stopped || !this.random.chance(this.rates.failpointCrash)) return false;
    this.crashController();
    this.trace.count("crash at a failpoint");
    return true;
  }

  private crashController(): void {
    this.chaos.crashController(this.kind());
    this.later(this.random.between(50, 2500), () => this.chaos.startController());
  }

  /** A crash of a process, or a power loss of its host: half each. */
  private kind(): CrashKind {
    return this.random.chance(0.5) ? "host" : "process";
  }

  /** A whole number averaging `rate`. */
  private count(rate: number): number {
    return Math.floor(rate) + (this.random.chance(rate - Math.floor(rate)) ? 1 : 0);
  }

  private later(delayMs: number, action: () => void): void {
    this.scheduler.after(delayMs, null, action);
  }

  /** Something broken now and healed after `durationMs`. */
  private window(durationMs: number, set: (on: boolean) => void): void {
    set(true);
    this.later(durationMs, () => set(false));
  }
}
