// A simulated mapping agent, modelled on agent/agent.ts: one incarnation of the process holds
// volatile tables (the real WebAssembly SharedTables), registers with the controller over the
// simulated network through the real Peer, serves its commands (with the blocking flag), renews its
// lease and stops I/O when the lease lapses, and forwards faults. A crash drops the incarnation;
// the next one starts with no tables at all.
import { FAULT_WAIT_MS } from "../../agent/agent.ts";
import { QuiesceGates } from "../../agent/gates.ts";
import { ChangeOrder, commandInOrder, stateChange, writeChange, writeRuns } from "../../agent/table-edits.ts";
import { UncommittedChanges } from "../../agent/uncommitted.ts";
import {
  agentRequests,
  BACKGROUND_COMMIT_MS,
  controllerRequests,
  LUN_FAILURE_LENGTH_MAX,
  PROTOCOL_VERSION,
  type AgentRequests,
  type ArgsOf,
  type Runs,
} from "../../engine/wire/messages.ts";
import { ConnectionClosedError, Peer, RemoteError, RequestError } from "../../engine/wire/peer.ts";
import { INVALID_WORD } from "../../wasm/entry.ts";
import { TABLE_SLOTS_MAX, type SharedTables } from "../../wasm/tables.ts";
import { TableSlots } from "../../agent/table-slots.ts";
import { DataPath, HostError, type DataPathContext, type ExportedTable, type FaultRequest } from "./agent-io.ts";
import { SimInflight } from "./inflight.ts";
import { SIM_SECRET } from "./controller.ts";
import type { CrashKind } from "./log-disk.ts";
import type { SimNetwork } from "./network.ts";
import type { Random } from "./random.ts";
import { Life, type Scheduler } from "./scheduler.ts";
import { HostStorage, type SimStorage } from "./storage.ts";
import type { Trace } from "./trace.ts";

/** The simulated host's connections date from before the agent's first registration (era 1). */
const CONNECTION_ERA = 0;
const RECONNECT_DELAY_MIN_MS = 50;
const RECONNECT_DELAY_MAX_MS = 2_000;
/** Renewals per lease term, as the real agent does. */
const LEASE_RENEWALS_PER_TERM = 4;

type ControllerPeer = Peer<AgentRequests, typeof controllerRequests>;

export interface AgentEnv {
  scheduler: Scheduler;
  random: Random;
  trace: Trace;
  network: SimNetwork;
  storage: SimStorage;
  leaseMs: number;
  /** The "ack-unwritten" canary. */
  dropWrites: boolean;
  /** The "ignore-change-order" canary. */
  ignoreChangeOrder: boolean;
  /** The agent has registered with the controller (dropping every entry it held). */
  registered(): void;
}

interface Table extends ExportedTable {
  entryCount: number;
  changes: ChangeOrder;
}

/** One host's agent across crashes and restarts. */
export class SimAgent {
  private process: AgentProcess | null = null;
  private incarnations = 0;

  constructor(
    readonly host: string,
    private readonly env: AgentEnv,
    /** Kept across incarnations; a crash frees every table the dead process had. */
    private readonly tables: SharedTables,
  ) {}

  get isUp(): boolean {
    return this.process !== null;
  }

  /** Up and registered with the controller. */
  get isRegistered(): boolean {
    return this.process?.registered ?? false;
  }

  start(): void {
    this.env.trace.note(`agent ${this.host}: starts`);
    this.incarnations += 1;
    this.process = new AgentProcess(this.host, String(this.incarnations), this.env, this.tables);
    this.env.network.agentUp(this.host);
  }

  crash(kind: CrashKind): void {
    const process = this.process;
    if (!process) return;
    this.env.trace.note(`agent ${this.host}: ${kind} crash`);
    this.process = null;
    process.kill();
    this.env.network.agentDown(this.host, kind);
    if (kind === "host") this.env.storage.crashHost(this.host);
  }

  read(name: string, offset: number, length: number): Promise<number[]> {
    return this.request((process) => process.data.read(name, offset, length));
  }

  write(name: string, offset: number, tags: readonly number[]): Promise<void> {
    return this.request((process) => process.data.write(name, offset, tags));
  }

  trim(name: string, offset: number, length: number): Promise<void> {
    return this.request((process) => process.data.trim(name, offset, length));
  }

  zero(name: string, offset: number, length: number): Promise<void> {
    return this.request((process) => process.data.zero(name, offset, length));
  }

  flush(name: string): Promise<void> {
    return this.request((process) => process.data.flush(name, process.containerIds()));
  }

  /** A host request: it fails with ECONNRESET if the agent is down or crashes before answering. */
  private request<T>(work: (process: AgentProcess) => Promise<T>): Promise<T> {
    const process = this.process;
    if (!process) return Promise.reject(new HostError("ECONNRESET", `agent ${this.host} is down`));
    return Promise.race([work(process), process.crashed]);
  }
}

class AgentProcess implements DataPathContext {
  readonly life: Life;
  readonly scheduler: Scheduler;
  readonly random: Random;
  readonly gates = QuiesceGates.create();
  readonly inflight = new SimInflight();
  readonly storage: HostStorage;
  readonly data = new DataPath(this);
  /** Rejects every host request still open when the process dies. */
  readonly crashed: Promise<never>;
  private failRequests!: (error: Error) => void;
  private readonly byDisk = new Map<number, Table>();
  private readonly containers = new Set<number>();
  /** Slots holding a table, live or retiring; freed at once if the process dies. */
  private readonly slots = new TableSlots();
  private leaseUntil = 0;
  private controller: ControllerPeer | null = null;
  private reloaded = new Set<number>();
  private connectedWaiters: (() => void)[] = [];
  private gateWaiters: (() => void)[] = [];
  private readonly storageErrorsReporting = new Set<number>();
  private readonly uncommitted = new UncommittedChanges();
  /** Registrations so far (see agent/registration-era.ts). */
  private era = 0;
  private readonly commitsPlanned = new Set<number>();
  constructor(
    private readonly host: string,
    /** What hello calls this process: one per incarnation of the host's agent. */
    private readonly instance: string,
    private readonly env: AgentEnv,
    readonly tables: SharedTables,
  ) {
    this.life = new Life(`agent ${host}`);
    this.scheduler = env.scheduler;
    this.random = env.random;
    this.storage = new HostStorage(env.storage, host, this.life, env.dropWrites);
    this.crashed = new Promise<never>((_, reject) => (this.failRequests = reject));
    this.crashed.catch(() => undefined);
    void this.connectLoop();
  }

  kill(): void {
    this.life.end();
    this.failRequests(new HostError("ECONNRESET", `agent ${this.host} crashed`));
    for (const slot of this.slots.inUse()) {
      this.tables.retireTable(slot);
      this.tables.freeTable(slot);
    }
  }

  get registered(): boolean {
    return this.controller !== null && !this.controller.isClosed;
  }

  containerIds(): number[] {
    return [...this.containers];
  }

  // ---- DataPathContext ----

  exported(name: string): ExportedTable | undefined {
    for (const table of this.byDisk.values()) if (table.name === name) return table;
    return undefined;
  }

  knowsContainer(id: number): boolean {
    return this.containers.has(id);
  }

  leaseValid(): boolean {
    return this.scheduler.now < this.leaseUntil;
  }

  gateOpened(): Promise<void> {
    return new Promise((resolve) => this.gateWaiters.push(resolve));
  }

  /** Sends a fault and applies its answer (modelled on Agent.forwardFault). */
  async fault(request: FaultRequest): Promise<void> {
    const answer = await this.withController((controller) =>
      controller.request("fault", request, (arrived) => {
        const table = this.byDisk.get(request.disk);
        if (table && arrived.action === "retry" && arrived.runs && arrived.first !== undefined && arrived.change !== undefined) {
          this.applyAnswer(table, arrived.first, arrived.runs, arrived.change);
        }
      }),
    ).catch(hostErrorOf);
    if (answer.action === "error") throw new HostError(answer.errno ?? "EIO", `the controller answered ${answer.errno ?? "EIO"}`);
    if (answer.run !== undefined && answer.at !== undefined && answer.runs && answer.first !== undefined) {
      this.uncommitted.note(request.disk, answer.run, answer.first, answer.runs, answer.at);
      this.commitSoon(request.disk);
    }
  }

  /** Has the controller commit what writes to `disk` relied on (modelled on Agent.commitFor). */
  async commit(disk: number, flushing = true): Promise<void> {
    // withController throws a HostError when the controller stays out of reach.
    const commit = async (run: number) => Boolean(await this.withController((controller) => controller.request("commit", { run })));
    // The simulated host keeps one connection per disk for the agent's life: it is of the era
    // before any loss (modelled on Agent.commitFor).
    const lost = () => flushing && this.uncommitted.lostFor(disk, CONNECTION_ERA);
    if (lost()) throw new HostError("EIO", "mapping changes this connection relied on were lost");
    const outcome = await this.uncommitted.commitDisk(disk, commit).catch(hostErrorOf);
    if (outcome === "unreachable") throw new HostError("EIO", "the controller is unreachable");
    if (lost()) throw new HostError("EIO", "mapping changes this connection relied on were lost");
  }

  /** Modelled on Agent.commitSoon. */
  private commitSoon(disk: number): void {
    if (this.commitsPlanned.has(disk)) return;
    this.commitsPlanned.add(disk);
    this.scheduler.after(BACKGROUND_COMMIT_MS, this.life, () => {
      this.commitsPlanned.delete(disk);
      this.commit(disk, false).catch(() => undefined); // a failure is the next FLUSH's to report
    });
  }

  /** Runs `call` on the controller connection, again after a lost connection (modelled on
   *  Agent.withController); no controller in time is EIO for the host. */
  private async withController<T>(call: (controller: ControllerPeer) => Promise<T>): Promise<T> {
    const deadline = this.scheduler.now + FAULT_WAIT_MS;
    for (;;) {
      const controller = await this.controllerBefore(deadline);
      if (!controller) throw new HostError("EIO", "the controller is unreachable");
      try {
        return await call(controller);
      } catch (error) {
        if (!(error instanceof ConnectionClosedError)) throw error;
      }
    }
  }

  reportStorageError(container: number, message: string): void {
    const controller = this.controller;
    if (!controller || this.storageErrorsReporting.has(container)) return;
    this.storageErrorsReporting.add(container);
    controller
      .request("storage_error", { container, message: message.slice(0, LUN_FAILURE_LENGTH_MAX) })
      .catch(() => undefined)
      .finally(() => this.storageErrorsReporting.delete(container));
  }

  private async controllerBefore(deadline: number): Promise<ControllerPeer | null> {
    while (!this.controller || this.controller.isClosed) {
      const left = deadline - this.scheduler.now;
      if (left <= 0) return null;
      await Promise.race([new Promise<void>((resolve) => this.connectedWaiters.push(resolve)), this.scheduler.sleep(left, this.life)]);
    }
    return this.controller;
  }

  // ---- Controller connection (modelled on Agent.connectLoop) ----

  private async connectLoop(): Promise<void> {
    let delay = RECONNECT_DELAY_MIN_MS;
    for (;;) {
      try {
        const stream = await this.env.network.connect(this.host, this.life);
        const peer: ControllerPeer = new Peer(stream, agentRequests, controllerRequests);
        peer.serve((op, args) => this.serveCommand(op, args));
        const closed = new Promise<Error>((resolve) => peer.onClosed(resolve));
        // The controller loads every table before it answers hello; a table it did not send
        // belongs to a disk deleted while we were apart.
        this.reloaded = new Set();
        const era = ++this.era;
        await this.forgetEntries();
        const asked = this.scheduler.now;
        const heldRuns = this.uncommitted.runs();
        const hello = await peer.request("hello", {
          version: PROTOCOL_VERSION,
          role: "agent",
          secret: SIM_SECRET,
          agentId: this.host,
          instance: this.instance,
          leaseMs: this.env.leaseMs,
          nbd: `sim:${this.host}`,
          heldRuns,
        });
        // Modelled on Agent.handBack.
        if (heldRuns.some((held) => held !== hello.run)) {
          const lost = await this.uncommitted.handBack(hello.run ?? 0, era, async (disk, ended, entries) => (await peer.request("restore", { disk, run: ended, entries })).lost);
          await peer.request("restored", {});
          if (lost.length > 0) this.env.trace.count("mapping changes lost in a controller restart");
        }
        await this.dropTablesNotReloaded();
        this.renewed(asked);
        this.controller = peer;
        void this.renewLoop(peer);
        delay = RECONNECT_DELAY_MIN_MS;
        for (const waiter of this.connectedWaiters.splice(0)) waiter();
        this.env.trace.note(`agent ${this.host}: registered`);
        this.env.registered();
        const error = await closed;
        this.controller = null;
        this.env.trace.note(`agent ${this.host}: lost the controller (${error.message})`);
      } catch (error) {
        if (!(error instanceof ConnectionClosedError)) this.env.trace.note(`agent ${this.host}: registration failed: ${(error as Error).message}`);
      }
      await this.scheduler.sleep(delay, this.life);
      delay = Math.min(RECONNECT_DELAY_MAX_MS, delay * 2);
    }
  }

  // ---- Lease (R8) ----

  private renewed(asked: number): void {
    const until = asked + this.env.leaseMs;
    if (until <= this.leaseUntil) return;
    this.leaseUntil = until;
    this.scheduler.at(until, this.life, () => this.checkLease());
  }

  private async renewLoop(peer: ControllerPeer): Promise<void> {
    while (!peer.isClosed) {
      await this.scheduler.sleep(this.env.leaseMs / LEASE_RENEWALS_PER_TERM, this.life);
      const asked = this.scheduler.now;
      try {
        await peer.request("renew", {});
        this.renewed(asked);
      } catch {
        return;
      }
    }
  }

  /** Before hello: every entry goes Invalid and I/O past its lookup finishes, so the controller
   *  may take it that this agent holds nothing stale (R8). */
  private async forgetEntries(): Promise<void> {
    const tables = [...this.byDisk.values()];
    for (const table of tables) this.tables.fillEntries(table.slot, 0, table.entryCount, INVALID_WORD);
    await Promise.all(tables.map((table) => this.inflight.drain(table.slot)));
  }

  /** The lease ran out: every entry reverts to Invalid, and storage I/O is refused. */
  private checkLease(): void {
    if (this.leaseValid()) return;
    this.env.trace.note(`agent ${this.host}: lease expired`);
    this.env.trace.count("agent lease expired");
    for (const table of this.byDisk.values()) this.tables.fillEntries(table.slot, 0, table.entryCount, INVALID_WORD);
  }

  // ---- Commands from the controller (R6) ----

  private async serveCommand(op: string, args: unknown): Promise<unknown> {
    switch (op) {
      case "add_container":
        this.containers.add((args as ArgsOf<AgentRequests, "add_container">).id);
        return {};
      case "new_table":
        return this.newTable(args as ArgsOf<AgentRequests, "new_table">);
      case "delete_table": {
        const table = this.table((args as ArgsOf<AgentRequests, "delete_table">).disk);
        this.byDisk.delete(table.disk);
        await this.retire(table);
        return {};
      }
      case "quiesce": {
        const { disks, timeoutMs } = args as ArgsOf<AgentRequests, "quiesce">;
        const tables = disks.map((disk) => this.table(disk));
        for (const table of tables) this.gates.close(table.slot);
        if (!(await this.inflight.drainWithin(tables.map((table) => table.slot), timeoutMs, this.scheduler, this.life))) {
          this.openGates(tables);
          throw new RequestError("ETIMEDOUT", `agent ${this.host}: I/O still in progress after ${timeoutMs} ms; quiesce abandoned`);
        }
        return {};
      }
      case "activate": {
        const { disks } = args as ArgsOf<AgentRequests, "activate">;
        this.openGates(disks.flatMap((disk) => this.byDisk.get(disk) ?? []));
        return {};
      }
      case "set_entry": {
        const { disk, first, runs, blocking, change } = args as ArgsOf<AgentRequests, "set_entry">;
        commandInOrder(writeChange(this.tables, this.table(disk), first, runs, change), change);
        if (blocking) await this.inflight.drain(this.table(disk).slot);
        return {};
      }
      case "set_entry_state": {
        const { disk, first, count, set, clear, blocking, change } = args as ArgsOf<AgentRequests, "set_entry_state">;
        const table = this.table(disk);
        commandInOrder(stateChange(this.tables, table, first, count, set, clear.length > 0, change), change);
        if (blocking) await this.inflight.drain(table.slot);
        return {};
      }
      default:
        throw new RequestError("EINVAL", `unknown command ${op}`);
    }
  }

  private async newTable(args: ArgsOf<AgentRequests, "new_table">): Promise<object> {
    this.reloaded.add(args.disk);
    const entryCount = Math.ceil(args.size / 2 ** args.segmentShift);
    const slot = this.slots.take();
    if (slot === null) throw new RequestError("ENOSPC", `no free table slot (all ${TABLE_SLOTS_MAX} in use)`);
    const generation = this.tables.createTable(slot, entryCount, args.segmentShift);
    const replaced = this.byDisk.get(args.disk);
    this.byDisk.set(args.disk, {
      disk: args.disk,
      name: args.name,
      slot,
      generation,
      sizeBytes: args.size,
      segmentShift: args.segmentShift,
      entryCount,
      changes: new ChangeOrder(args.change),
    });
    if (replaced) await this.retire(replaced);
    return {};
  }

  private async dropTablesNotReloaded(): Promise<void> {
    const stale = [...this.byDisk.values()].filter((table) => !this.reloaded.has(table.disk));
    for (const table of stale) this.byDisk.delete(table.disk);
    for (const table of stale) await this.retire(table);
  }

  private openGates(tables: Table[]): void {
    for (const table of tables) this.gates.open(table.slot);
    for (const waiter of this.gateWaiters.splice(0)) waiter();
  }

  /** Stops lookups on an old table, waits for I/O through it to end, then frees its slot. */
  private async retire(table: Table): Promise<void> {
    this.tables.retireTable(table.slot);
    await this.inflight.drain(table.slot);
    this.tables.freeTable(table.slot);
    this.slots.release(table.slot);
    this.openGates([table]);
  }


  private table(disk: number): Table {
    const table = this.byDisk.get(disk);
    if (!table) throw new RequestError("NOT_FOUND", `no table for disk ${disk}`);
    return table;
  }


  /** A fault's answer goes in unless a newer change to its entries came first (then the request
   *  faults again); the "ignore-change-order" canary puts it in anyway. */
  private applyAnswer(table: Table, first: number, runs: Runs, change: number): void {
    if (this.env.ignoreChangeOrder) writeRuns(this.tables, table, first, runs);
    else if (!writeChange(this.tables, table, first, runs, change)) this.env.trace.count("fault answer older than a change");
  }

}

/** A refusal from the controller fails the host's request with EIO. */
function hostErrorOf(error: unknown): never {
  if (error instanceof RemoteError) throw new HostError("EIO", `the controller refused: ${error.message}`);
  throw error;
}
