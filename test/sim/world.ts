// The simulated world: the controller and agents with their crashes and restarts, the network and
// storage they share, and the first violation seen. It is what the fault injector acts on and
// what the administrator reaches the controller through.
import type { Controller } from "../../engine/controller.ts";
import type { ContainerIo } from "../../engine/pool.ts";
import type { SnapshotContext } from "../../engine/snapshots.ts";
import type { SharedTables } from "../../wasm/tables.ts";
import type { ControlPlane, Outcome } from "./admin.ts";
import { SimAgent } from "./agent.ts";
import { stateProblems } from "./checks.ts";
import { SimController, type ContainerSpec } from "./controller.ts";
import type { DiskRegistry } from "./disks.ts";
import type { Chaos, Injector } from "./injector.ts";
import type { CrashKind, SimLogDisk } from "./log-disk.ts";
import type { Model } from "./model.ts";
import type { SimNetwork } from "./network.ts";
import type { Canary } from "./options.ts";
import type { Random } from "./random.ts";
import { Life, type Scheduler } from "./scheduler.ts";
import type { SimStorage } from "./storage.ts";
import type { Trace } from "./trace.ts";

/** The agents' lease: short, so lapses and fencing happen within a run. */
export const LEASE_MS = 400;
const COMPACT_AT_START_PROBABILITY = 0.3;
/** The log is compacted live once it has grown by this much (or by its compacted size). */
const LOG_SLACK_BYTES_MIN = 2 * 1024;
const LOG_SLACK_BYTES_MAX = 64 * 1024;
/** How long after an agent process exits its supervisor starts it again. */
const SUPERVISOR_RESTART_MS = 500;

export interface WorldParts {
  scheduler: Scheduler;
  random: Random;
  trace: Trace;
  network: SimNetwork;
  storage: SimStorage;
  logDisk: SimLogDisk;
  model: Model;
  disks: DiskRegistry;
  containers: ContainerSpec[];
  canary: Canary | undefined;
}

export class World implements Chaos, ControlPlane {
  /** The workload's own life: it never crashes. */
  readonly life = new Life("workload");
  readonly agents: SimAgent[] = [];
  readonly agentHosts: string[] = [];
  readonly containers: number[];
  injector!: Injector;
  private controller: SimController | null = null;
  /** The controller once it serves (after recovery and its start). */
  private ready: SimController | null = null;
  private readyWaiters: ((controller: SimController) => void)[] = [];
  private failingContainers = new Set<number>();
  private controllerRuns = 0;
  private firstViolation: string | null = null;

  constructor(private readonly parts: WorldParts) {
    this.containers = parts.containers.map((spec) => spec.id);
  }

  get violation(): string | null {
    return this.firstViolation;
  }

  get model(): Model {
    return this.parts.model;
  }

  get disks(): DiskRegistry {
    return this.parts.disks;
  }

  /** The controller, if one serves now. */
  get liveController(): Controller | null {
    return this.ready?.controller ?? null;
  }

  get controllerQuiet(): boolean {
    return this.ready !== null && this.ready.controller.idle;
  }

  /** Some container is out of service at the live controller. */
  get containerOutOfService(): boolean {
    return [...(this.ready?.controller.catalog.luns.values() ?? [])].some((lun) => lun.failed !== null);
  }

  /** What a recovery from the log now would find. */
  durableRecords(): object[] {
    return this.parts.logDisk.durableRecords();
  }

  /** Records a broken invariant; the run stops at the first one. */
  violate(message: string): void {
    this.parts.trace.note(`VIOLATION: ${message}`);
    this.firstViolation ??= message;
  }

  addAgent(host: string, tables: SharedTables): void {
    const { scheduler, random, trace, network, storage, canary, containers } = this.parts;
    const env = {
      scheduler,
      random,
      trace,
      network,
      storage,
      leaseMs: LEASE_MS,
      canary,
      containerAt: (path: string) => containers.find((spec) => spec.path === path)?.id,
      registered: () => {
        // Once every running agent has registered with the new controller, none can still use a
        // mapping the crashed one had not committed.
        if (this.controller && this.agents.every((agent) => !agent.isUp || agent.isRegistered)) this.parts.model.controllerLossesSettled();
      },
      exited: () => {
        trace.count("agent refused for good");
        this.parts.model.agentProcessCrashed(host);
        scheduler.after(SUPERVISOR_RESTART_MS, this.life, () => this.startAgent(host));
      },
    };
    this.agents.push(new SimAgent(host, env, tables));
    this.agentHosts.push(host);
  }

  // ---- Chaos ----

  startController(): void {
    if (this.controller) return;
    const { scheduler, random, trace, network, storage, logDisk, containers, canary } = this.parts;
    if (random.chance(COMPACT_AT_START_PROBABILITY)) {
      logDisk.compact();
      trace.count("log compaction");
    }
    trace.note("controller: starts");
    const controller = new SimController({
      scheduler,
      random,
      trace,
      network,
      storage,
      logDisk,
      containers,
      failpoint: (name) => {
        if (!this.injector.crashesAtFailpoint()) return;
        throw new Error(`the controller crashed at failpoint ${name}`);
      },
      containerIo: (io) => (canary === "skip-copy" ? skipCopy(io) : io),
      context: (context) => (canary === "push-over-old-entries" ? pushOverOldEntries(context) : context),
      newRunId: () => ++this.controllerRuns,
      compactSlackBytes: random.int(LOG_SLACK_BYTES_MIN, LOG_SLACK_BYTES_MAX),
    });
    this.controller = controller;
    this.checkRecovered(controller);
    controller.controller.serve().then(
      () => {
        if (!controller.life.isAlive) return;
        this.ready = controller;
        for (const waiter of this.readyWaiters.splice(0)) waiter(controller);
      },
      (error: Error) => {
        if (controller.life.isAlive) this.violate(`the controller failed to start: ${error.message}`);
      },
    );
  }

  crashController(kind: CrashKind): void {
    const controller = this.controller;
    if (!controller) return;
    this.parts.trace.note(`controller: ${kind} crash`);
    this.parts.trace.count(`controller ${kind} crash`);
    this.controller = null;
    this.ready = null;
    controller.crash(kind);
    // Mapping changes not yet committed die with the controller, and with them the unflushed
    // writes (of any host) that went through them.
    this.parts.model.controllerCrashed();
  }

  startAgent(host: string): void {
    const agent = this.agent(host);
    if (!agent.isUp) agent.start();
  }

  crashAgent(host: string, kind: CrashKind): void {
    const agent = this.agent(host);
    if (!agent.isUp) return;
    agent.crash(kind);
    this.parts.trace.count(`agent ${kind} crash`);
    if (kind === "host") this.parts.model.hostCrashed(host);
    else this.parts.model.agentProcessCrashed(host);
  }

  partition(host: string, on: boolean): void {
    this.parts.trace.note(`net ${host}: ${on ? "partitioned" : "healed"}`);
    if (on) this.parts.trace.count("partition");
    if (on) this.parts.network.partition(host);
    else this.parts.network.heal(host);
  }

  slowLink(host: string, on: boolean): void {
    this.parts.trace.note(`net ${host}: ${on ? "slow" : "fast again"}`);
    this.parts.network.setSlow(host, on);
  }

  loseMessages(probability: number): void {
    this.parts.trace.note(`net: messages lost with probability ${probability}`);
    this.parts.network.lossProbability = probability;
  }

  failContainer(id: number, probability: number): void {
    this.parts.trace.note(`storage: container ${id} ${probability > 0 ? `fails ${Math.round(probability * 100)}% of I/O` : "works again"}`);
    if (probability > 0) this.parts.trace.count("container failure");
    this.parts.storage.setFailing(id, probability);
    if (probability > 0) this.failingContainers.add(id);
    else this.failingContainers.delete(id);
  }

  /** Ends every fault now: the network and storage heal and every node runs. */
  healAll(): void {
    for (const host of this.agentHosts) {
      this.parts.network.heal(host);
      this.parts.network.setSlow(host, false);
    }
    this.parts.network.lossProbability = 0;
    for (const id of [...this.failingContainers]) this.failContainer(id, 0);
    this.startController();
    for (const host of this.agentHosts) this.startAgent(host);
  }

  /** A power loss of every host at once. */
  crashEverything(): void {
    this.crashController("host");
    for (const host of this.agentHosts) this.crashAgent(host, "host");
  }

  // ---- ControlPlane ----

  async call(work: (controller: Controller) => Promise<unknown>): Promise<Outcome> {
    const controller = this.ready;
    if (!controller) return { kind: "down" };
    let outcome: Outcome;
    try {
      await Promise.race([work(controller.controller), controller.died]);
      outcome = { kind: "ok" };
    } catch (error) {
      outcome = { kind: "error", message: (error as Error).message };
    }
    return controller.life.isAlive ? outcome : { kind: "crashed" };
  }

  live(): Promise<Controller> {
    if (this.ready) return Promise.resolve(this.ready.controller);
    return new Promise((resolve) => this.readyWaiters.push((ready) => resolve(ready.controller)));
  }

  healthyContainers(): number[] {
    return this.containers.filter((id) => !this.failingContainers.has(id));
  }

  /** The controller serves and every agent is registered with it. */
  get allRegistered(): boolean {
    return this.ready !== null && this.agents.every((agent) => agent.isRegistered);
  }

  private agent(host: string): SimAgent {
    return this.agents[this.agentHosts.indexOf(host)]!;
  }

  /** After recovery: the state is consistent, and every disk the workload was told exists is there. */
  private checkRecovered({ controller }: SimController): void {
    for (const problem of stateProblems(controller.catalog, controller.pool)) this.violate(`after recovery: ${problem}`);
    for (const disk of this.parts.disks.all()) {
      if (!disk.paused && !controller.catalog.diskByName(disk.name)) this.violate(`after recovery: disk ${disk.name} is gone though its creation was acknowledged`);
    }
  }
}

/** The "skip-copy" canary: copy-on-write copies that copy nothing. */
function skipCopy(io: ContainerIo): ContainerIo {
  return { ...io, copy: () => undefined };
}

/** The "push-over-old-entries" canary: a fault's moved entries are pushed to the disk's other
 *  agents as any others are, while they may still hold the old ones. */
function pushOverOldEntries(context: SnapshotContext): SnapshotContext {
  return { ...context, moveEntries: (disk, segments, options) => context.pushEntries(disk, segments, options) };
}
