// The simulated controller. Everything that decides anything is the real engine: the catalog and
// its log records, the AppendLog (recovery, group commit) over a simulated disk, the pool and
// allocator over simulated containers, FaultResolver, createSnapshots/rollback, AgentLink (leases
// and fencing) on the simulated clock, the wire Peer. What is modelled here is the glue of
// engine/controller.ts that binds them to sockets, files and timers, kept as close to it as
// possible: hello and registration, the operations' locking, container health. What agents get
// and when (pushes, quiesce, leases and fencing) is the real AgentFleet.
// Compaction is left out (the world compacts the log between incarnations instead).
import { restoreEntries } from "../../engine/restore.ts";
import { AgentFleet, type FleetContext } from "../../engine/agent-fleet.ts";
import type { AgentLink, AgentPeer, LeaseClock } from "../../engine/agent-link.ts";
import { HEALTH_CHECK_INTERVAL_MS } from "../../engine/container-health.ts";
import { appendAndApply, Catalog, parseRecord, type Disk, type DiskMode, type Freed, type LogRecord } from "../../engine/catalog.ts";
import { FaultQueue } from "../../engine/fault-queue.ts";
import { FaultResolver, type FaultAnswer } from "../../engine/faults.ts";
import { AppendLog } from "../../engine/log/append-log.ts";
import { Pool, type ContainerIo } from "../../engine/pool.ts";
import { createSnapshots, rollback, type SnapshotContext } from "../../engine/snapshots.ts";
import { assert } from "../../engine/util/assert.ts";
import { KeyedMutex } from "../../engine/util/mutex.ts";
import {
  agentRequests,
  BACKGROUND_COMMIT_MS,
  controllerRequests,
  LEASE_MS_DEFAULT,
  LUN_FAILURE_LENGTH_MAX,
  PROTOCOL_VERSION,
  type ArgsOf,
  type ControllerRequests,
} from "../../engine/wire/messages.ts";
import { Peer, RequestError } from "../../engine/wire/peer.ts";
import type { Stream } from "../../engine/wire/transport.ts";
import { entryContainer } from "../../wasm/entry.ts";
import type { CrashKind, SimLogDisk } from "./log-disk.ts";
import type { SimNetwork } from "./network.ts";
import type { Random } from "./random.ts";
import { Life, type Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES, CONTROLLER_HOST, HostStorage, type SimStorage } from "./storage.ts";
import type { Trace } from "./trace.ts";

/** How often a fault's answer is held back, and for how long at most. */
const LATE_ANSWER_PROBABILITY = 0.05;
const LATE_ANSWER_MS_MAX = 5;

export interface ContainerSpec {
  id: number;
  path: string;
  sizeBytes: number;
}

export interface ControllerEnv {
  scheduler: Scheduler;
  random: Random;
  trace: Trace;
  network: SimNetwork;
  storage: SimStorage;
  logDisk: SimLogDisk;
  /** The containers the pool starts with (added at the first start). */
  containers: ContainerSpec[];
  /** At a failpoint of the engine: the world may crash the controller right there (it throws). */
  failpoint(name: string): void;
  /** What the pool's container I/O becomes (the canary breaks it); identity by default. */
  containerIo(io: ContainerIo): ContainerIo;
  /** The "push-over-old-entries" canary: a fault's new entries go out while agents still hold
   *  the old ones. */
  pushOverOldEntries: boolean;
  /** A name for a new controller run, different from every earlier one. */
  newRunId(): number;
}

export class SimController {
  readonly catalog = new Catalog();
  readonly pool: Pool;
  readonly life = new Life("controller");
  /** Resolves when this incarnation crashes. */
  readonly died: Promise<void>;
  private die!: () => void;
  private readonly agents: AgentFleet;
  private readonly familyLocks = new KeyedMutex<number>();
  private readonly catalogLock = new KeyedMutex<"catalog">();
  private readonly context: SnapshotContext;
  private readonly faults: FaultResolver;
  private readonly faultQueue: FaultQueue;
  private readonly clock: LeaseClock;
  private readonly storage: HostStorage;
  private log!: AppendLog;
  private persisting = 0;
  private commitPlanned = false;
  /** Operations in progress (faults, ctl requests, registrations, container failures). */
  private busy = 0;
  private checkingHealth = false;

  private constructor(private readonly env: ControllerEnv) {
    this.died = new Promise((resolve) => (this.die = resolve));
    this.storage = new HostStorage(env.storage, CONTROLLER_HOST, this.life);
    this.pool = new Pool(this.catalog, env.containerIo(poolIo(this.storage, env.trace)));
    this.context = {
      catalog: this.catalog,
      pool: this.pool,
      persist: (records) => this.persistRecords(records),
      record: (records) => this.recordLater(records),
      isDurable: (position) => this.log.durableRecords >= position,
      runPosition: () => this.catalog.runPosition,
      commit: () => this.commitLog(),
      run: env.newRunId(),
      onlyHolder: (disk, agent) => this.agents.onlyHolder(disk, agent),
      tablesSettled: () => this.agents.knownAgentsSettled(),
      release: (freed) => this.releaseSegments(freed),
      pushEntries: (disk, segments, options) => this.agents.pushEntries(disk, segments, options),
      dropEntries: (agent, disk, segments) => this.agents.invalidate([agent as AgentLink], disk, segments, true),
      // The "push-over-old-entries" canary pushes moved entries as it pushes any others.
      moveEntries: (disk, segments, options) =>
        env.pushOverOldEntries ? this.agents.pushEntries(disk, segments, options) : this.agents.moveEntries(disk, segments, options),
      nextChange: (disk) => this.agents.nextChange(disk),
      pushStates: (disk, set, blocking) => this.agents.pushStates(disk, set, blocking),
      exportDisk: (disk) => this.agents.exportDisk(disk),
      newDiskId: () => this.catalog.newDiskId(),
      failpoint: (name) => env.failpoint(name),
    };
    this.faults = new FaultResolver(this.context);
    this.faultQueue = new FaultQueue(this.familyLocks, this.faults);
    const { scheduler } = env;
    const clock: LeaseClock = { now: () => scheduler.now, after: (ms, run) => scheduler.after(ms, this.life, run) };
    this.clock = clock;
    const fleet: FleetContext = {
      catalog: this.catalog,
      persist: (records) => this.persistRecords(records),
      say: (line) => env.trace.note(`controller: ${line}`),
      fenced: (agent) => {
        env.trace.note(`controller: agent ${agent.id} fenced`);
        env.trace.count("agent fenced");
      },
    };
    this.agents = new AgentFleet(fleet, clock);
  }

  /** Recovery: the real log is opened and replayed, the pool rebuilt from the tables. */
  static open(env: ControllerEnv): SimController {
    const controller = new SimController(env);
    const { log, records, recovery } = AppendLog.open(env.logDisk.path, { io: env.logDisk.open(controller.life) });
    env.logDisk.opened(recovery.validBytes);
    controller.log = log;
    if (recovery.truncatedBytes > 0) {
      env.trace.note(`controller: log: dropped a torn tail of ${recovery.truncatedBytes} bytes`);
      env.trace.count("torn log tail");
    }
    for (const record of records) controller.catalog.apply(parseRecord(record));
    controller.pool.rebuild();
    controller.agents.expectKnownAgents();
    return controller;
  }

  /** The pool's first containers, a health check, then the control port. */
  async start(): Promise<void> {
    // Modelled on Controller.open: the run's first record.
    await this.persistRecords([{ t: "run", id: this.context.run, at: 0 }]);
    if (this.catalog.luns.size === 0) {
      for (const spec of this.env.containers) {
        await this.persistRecords([{ t: "lun", id: spec.id, path: spec.path, size: spec.sizeBytes, knownZero: true }]);
        this.pool.addLun(this.catalog.luns.get(spec.id)!);
      }
    }
    await this.checkContainers();
    this.healthLoop();
    this.env.network.listen(this.life, (stream) => this.accept(stream));
  }

  crash(kind: CrashKind): void {
    this.life.end();
    this.die();
    this.env.logDisk.crash(kind);
    // The dead log fails what it was writing and closes its file.
    void this.log.close();
    this.env.network.controllerDown(kind);
    if (kind === "host") this.env.storage.crashHost(CONTROLLER_HOST);
  }

  /** No operation is in progress and no change is on its way to the log: the catalog, pool and
   *  allocator agree, and are what a recovery now would find. */
  get quiet(): boolean {
    return this.busy === 0 && this.persisting === 0 && this.log.uncommittedRecords === 0;
  }

  private async operation<T>(work: () => Promise<T>): Promise<T> {
    this.busy += 1;
    try {
      return await work();
    } finally {
      this.busy -= 1;
    }
  }

  /** An operation under the catalog lock (as every ctl request that changes disks is). */
  private locked<T>(work: () => Promise<T>): Promise<T> {
    return this.operation(() => this.catalogLock.run("catalog", work));
  }

  // ---- Operations (what ctl asks for; as in engine/controller.ts) ----

  createDisk(name: string, size: number, segmentShift: number, mode: DiskMode): Promise<void> {
    return this.locked(async () => {
      const id = this.catalog.newDiskId();
      await this.persistRecords([{ t: "disk", id, name, size, segmentShift, mode }]);
      await this.agents.exportDisk(this.catalog.disk(id));
    });
  }

  deleteDisk(name: string): Promise<void> {
    return this.locked(async () => {
      const disk = this.diskNamed(name);
      await this.familyLocks.run(disk.family, async () => {
        await Promise.all(this.agents.agentsOf(disk.id).map((agent) => this.agents.dropTable(agent, disk)));
        this.releaseSegments(await this.persistRecords([{ t: "rmdisk", id: disk.id }]));
      });
    });
  }

  createSnapshot(sourceName: string, name: string, mode: DiskMode, invalidate: boolean): Promise<void> {
    return this.locked(async () => {
      const source = this.diskNamed(sourceName);
      await this.familyLocks.run(source.family, () => createSnapshots(this.context, [{ source, name, mode, invalidate, protect: false }]));
    });
  }

  createGroup(pairs: { source: string; name: string }[], timeoutMs: number): Promise<void> {
    return this.locked(async () => {
      const sources = pairs.map((pair) => this.diskNamed(pair.source));
      const families = [...new Set(sources.map((disk) => disk.family))].sort((a, b) => a - b);
      await this.withFamilies(families, async () => {
        const quiesced = await this.agents.quiesceAll(sources, timeoutMs);
        try {
          await createSnapshots(
            this.context,
            sources.map((source, i) => ({ source, name: pairs[i]!.name, mode: source.mode, invalidate: false, protect: false })),
          );
        } finally {
          await this.agents.activateAll(quiesced, sources);
        }
      });
    });
  }

  rollbackDisk(name: string, snapshotName: string): Promise<void> {
    return this.locked(async () => {
      const disk = this.diskNamed(name);
      const snapshot = this.diskNamed(snapshotName);
      await this.familyLocks.run(disk.family, () => rollback(this.context, disk, snapshot));
    });
  }

  /** Puts a failed container back once its storage answers again. */
  repairContainer(id: number): Promise<void> {
    return this.locked(async () => {
      const lun = this.catalog.luns.get(id)!;
      if (lun.failed === null) return;
      const problem = this.problem(id);
      if (problem !== null) throw new RequestError("EIO", `container ${id} still fails its check: ${problem}`);
      this.pool.reopen(id);
      await Promise.all(this.agents.all().map((agent) => agent.call((peer) => peer.request("add_container", { id, path: lun.path }))));
      await this.persistRecords([{ t: "lunhealth", lun: id }]);
      await this.pushSegmentsOn(id);
    });
  }

  // ---- Agents ----

  private accept(stream: Stream): void {
    const peer: AgentPeer = new Peer(stream, controllerRequests, agentRequests);
    let agent: AgentLink | null = null;
    peer.serve(async (op, args) => {
      if (op === "hello") {
        const hello = args as ArgsOf<ControllerRequests, "hello">;
        if (hello.version !== PROTOCOL_VERSION || !hello.agentId || !hello.nbd) throw new RequestError("EPROTO", "bad hello", true);
        const handingBack = (hello.heldRuns ?? []).some((run) => run !== this.context.run);
        agent = await this.registerAgent(hello.agentId, hello.instance ?? "", hello.nbd, hello.leaseMs ?? LEASE_MS_DEFAULT, peer, handingBack);
        return { version: PROTOCOL_VERSION, controller: "tabledisk", run: this.context.run };
      }
      if (!agent) throw new RequestError("EPROTO", `${op} before hello`, true);
      if (op === "renew") {
        agent.renewedAt = this.clock.now();
        return {};
      }
      if (op === "fault") return this.fault(agent, args as ArgsOf<ControllerRequests, "fault">);
      if (op === "commit") {
        await this.faults.commit((args as ArgsOf<ControllerRequests, "commit">).run);
        return {};
      }
      if (op === "restore") return restoreEntries({ ...this.context, agents: this.agents, say: (line) => this.env.trace.note(`controller: ${line}`) }, agent, args as ArgsOf<ControllerRequests, "restore">);
      if (op === "restored") {
        this.agents.restored(agent);
        return {};
      }
      if (op === "storage_error") {
        const { container, message } = args as ArgsOf<ControllerRequests, "storage_error">;
        await this.failContainer(container, `agent ${agent.id}: ${message}`);
        return {};
      }
      throw new RequestError("EINVAL", `unknown request ${op}`);
    });
  }

  private async registerAgent(id: string, instance: string, nbd: string, leaseMs: number, peer: AgentPeer, handingBack: boolean): Promise<AgentLink> {
    const agent = await this.agents.register(id, instance, nbd, leaseMs, peer, handingBack);
    await this.locked(async () => {
      for (const lun of this.catalog.luns.values()) await peer.request("add_container", { id: lun.id, path: lun.path });
      for (const disk of this.catalog.disks.values()) await this.agents.sendTable(agent, disk);
    });
    this.env.trace.note(`controller: agent ${id} registered`);
    return agent;
  }

  // ---- Consistency groups ----

  private withFamilies<T>(families: number[], work: () => Promise<T>): Promise<T> {
    const [first, ...rest] = families;
    if (first === undefined) return work();
    return this.familyLocks.run(first, () => this.withFamilies(rest, work));
  }

  private healthLoop(): void {
    this.env.scheduler.after(HEALTH_CHECK_INTERVAL_MS, this.life, () => {
      void this.checkContainers();
      this.healthLoop();
    });
  }

  private async checkContainers(): Promise<void> {
    if (this.checkingHealth) return;
    this.checkingHealth = true;
    try {
      for (const lun of this.catalog.luns.values()) {
        if (lun.failed !== null) continue;
        const problem = this.problem(lun.id);
        if (problem !== null) await this.failContainer(lun.id, problem);
      }
    } catch {
      // As in the real controller: a failed check is only reported.
    } finally {
      this.checkingHealth = false;
    }
  }

  /** The container health check: can its first block be read? */
  private problem(id: number): string | null {
    try {
      this.storage.read(id, 0, BLOCK_BYTES);
      return null;
    } catch (error) {
      return (error as Error).message;
    }
  }

  private async failContainer(id: number, reason: string): Promise<void> {
    await this.locked(async () => {
      const lun = this.catalog.luns.get(id)!;
      if (lun.failed !== null) return;
      await this.persistRecords([{ t: "lunhealth", lun: id, failed: reason.slice(0, LUN_FAILURE_LENGTH_MAX) }]);
      this.env.trace.note(`controller: container ${id} out of service: ${reason}`);
      this.env.trace.count("container out of service");
      await this.pushSegmentsOn(id);
    });
  }

  private async pushSegmentsOn(id: number): Promise<void> {
    for (const disk of this.catalog.disks.values()) {
      const segments = [...disk.table.locations()].filter(([, word]) => entryContainer(word) === id).map(([index]) => index);
      if (segments.length > 0) await this.familyLocks.run(disk.family, () => this.agents.pushEntries(disk, segments, { blocking: false }));
    }
  }

  // ---- Table changes shared by faults and snapshots ----

  private async fault(agent: AgentLink, args: ArgsOf<ControllerRequests, "fault">): Promise<FaultAnswer> {
    const disk = this.catalog.disks.get(args.disk);
    if (!disk) return { action: "error", errno: "EIO" };
    const answer = await this.operation(() => this.faultQueue.submit(disk, args, agent));
    // Agents apply changes by their numbers, not in the order they arrive: now and then an answer
    // leaves after commands sent later.
    const { random, scheduler } = this.env;
    if (random.chance(LATE_ANSWER_PROBABILITY)) await scheduler.sleep(random.between(0, LATE_ANSWER_MS_MAX), this.life);
    return answer;
  }

  private async persistRecords(records: LogRecord[]): Promise<Freed[]> {
    if (records.length === 0) return [];
    const freed = this.appendAndApply(records);
    this.persisting += 1;
    try {
      await this.log.commit();
    } finally {
      this.persisting -= 1;
    }
    return freed;
  }

  /** As in the real controller, committed at the latest BACKGROUND_COMMIT_MS later. */
  private recordLater(records: LogRecord[]): number {
    assert(this.appendAndApply(records).length === 0, "uncommitted records must not free segments");
    const position = this.log.appendedRecords;
    if (this.commitPlanned) return position;
    this.commitPlanned = true;
    this.env.scheduler.after(BACKGROUND_COMMIT_MS, this.life, () => {
      this.commitPlanned = false;
      this.log.commit().catch(() => undefined); // a crashed controller's log fails its commits
    });
    return position;
  }

  private async commitLog(): Promise<void> {
    // As appendAndApply: a crashed controller's code may still run on; its log is closed.
    if (!this.life.isAlive) throw new Error("the controller crashed");
    await this.log.commit();
  }

  private appendAndApply(records: LogRecord[]): Freed[] {
    // A crashed controller's code may still run on (a promise settled as it died): it changes nothing.
    if (!this.life.isAlive) throw new Error("the controller crashed");
    return appendAndApply(this.log, this.catalog, records);
  }

  private releaseSegments(freed: Freed[]): void {
    for (const { lun, offset, shift } of freed) this.pool.release(lun, offset, shift);
  }

  private diskNamed(name: string): Disk {
    const disk = this.catalog.diskByName(name);
    if (!disk) throw new RequestError("NOT_FOUND", `no disk named "${name}"`);
    return disk;
  }
}

/** The controller host's container I/O, as the pool wants it. */
function poolIo(storage: HostStorage, trace: Trace): ContainerIo {
  return {
    zero: (lun, offset, length) => {
      storage.zero(lun, offset, length);
      trace.count("segment zeroed for reuse");
    },
    copy: (fromLun, fromOffset, toLun, toOffset, length) => {
      storage.copy(fromLun, fromOffset, toLun, toOffset, length);
      trace.count("copy-on-write copy");
    },
    sync: (lun) => storage.sync(lun),
    reopen: () => undefined,
    close: () => undefined,
  };
}
