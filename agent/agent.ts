// The mapping agent's main thread: it talks to the controller, owns the writes to the shared
// tables, and runs the worker threads that serve NBD. Tables are volatile (R4): a new table is all
// Invalid and entries arrive through faults or pushes from the controller.
import { availableParallelism } from "node:os";
import { SharedTables, TABLE_SLOTS_MAX, TablesError } from "../wasm/tables.ts";
import { ERR_NO_MEMORY } from "../wasm/assembly/layout.ts";
import { InflightTracker } from "./inflight.ts";
import { QuiesceGates } from "./gates.ts";
import { TableSlots } from "./table-slots.ts";
import { ChangeOrder, checkRange, commandInOrder, stateChange, writeChange } from "./table-edits.ts";
import { Lease } from "./lease.ts";
import { UncommittedChanges } from "./uncommitted.ts";
import { RegistrationEra } from "./registration-era.ts";
import { BatchingPort, onMessages } from "./thread-port.ts";
import type { ContainerEntry, ExportEntry, FromWorker, NbdListen, ToWorker } from "./thread-messages.ts";
import { formatAddress, nbdUri, type Address } from "../engine/util/address.ts";
import { assert } from "../engine/util/assert.ts";
import { formatSize } from "../engine/util/size.ts";
import { PortClaim } from "./port-claim.ts";
import {
  agentRequests,
  controllerRequests,
  BACKGROUND_COMMIT_MS,
  LEASE_MS_DEFAULT,
  LUN_FAILURE_LENGTH_MAX,
  PROTOCOL_VERSION,
  type AgentRequests,
  type ArgsOf,
} from "../engine/wire/messages.ts";
import { INVALID_WORD } from "../wasm/entry.ts";
import { ConnectionClosedError, Peer, RemoteError, RequestError } from "../engine/wire/peer.ts";
import { connect, removeStaleSocket, type Stream } from "../engine/wire/transport.ts";

export const WORKERS_MAX = 16;
/** How long a fault waits for the controller to be reachable before the host gets EIO. */
export const FAULT_WAIT_MS = 30_000;
const RECONNECT_DELAY_MIN_MS = 50;
/** Renewals per lease term: a few lost or late ones do not end the lease. */
const LEASE_RENEWALS_PER_TERM = 4;
const RECONNECT_DELAY_MAX_MS = 2_000;
/** The errors a host can get for a request the main thread handled. */
type HostErrno = NonNullable<Extract<ToWorker, { type: "resume" }>["errno"]>;
/** Answers to hello that trying again cannot change (EBUSY: another process has this agent id). */
const REFUSALS_FOR_GOOD = new Set(["EACCES", "EVERSION", "EBUSY"]);
/** While the controller cannot be reached, the agent says so this often. */
const UNREACHABLE_REPORT_MS = 5_000;

export interface AgentOptions {
  id: string;
  control: Address;
  /** The controller's control secret (engine/secret.ts). */
  secret: string;
  /** Where the secret came from, for the error when the controller refuses it. */
  secretOrigin?: string;
  nbd: Address;
  workers?: number;
  /** R8: without a renewed lease for this long the agent stops I/O (default LEASE_MS_DEFAULT). */
  leaseMs?: number;
  log?: (line: string) => void;
}

type ControllerPeer = Peer<AgentRequests, typeof controllerRequests>;

interface Table extends ExportEntry {
  entryCount: number;
  changes: ChangeOrder;
}

export class Agent {
  private readonly tables = new Map<number, Table>();
  private readonly containers = new Map<number, ContainerEntry>();
  private readonly slots = new TableSlots();
  private readonly workers: Worker[] = [];
  private readonly ports = new Map<Worker, BatchingPort<ToWorker>>();
  private readonly gates = QuiesceGates.create();
  private readonly lease = Lease.create();
  private leaseTimer: Timer | undefined;
  private controller: ControllerPeer | null = null;
  /** Disks whose table the controller sent since the current connection began. */
  private reloaded = new Set<number>();
  private connectedWaiters: (() => void)[] = [];
  private stopping = false;
  private nbdAddress: Address;
  private exportsVersion = 0;
  private readonly exportWaiters = new Map<number, { pending: number; resolve(): void }>();
  private readonly exportListeners: ((name: string, uri: string) => void)[] = [];
  private readonly storageErrorsReporting = new Set<number>();
  private readonly uncommitted = new UncommittedChanges();
  private readonly era = RegistrationEra.create();
  private readonly commitTimers = new Map<number, Timer>();
  private readonly refusalListeners: ((error: RemoteError) => void)[] = [];
  /** Host connections that have each disk open, over every worker. */
  private readonly openConnections = new Map<number, number>();
  /** This process's name for itself in hello (see the hello message). */
  private readonly instance = crypto.randomUUID();
  private portClaim: PortClaim | null = null;
  private readonly say: (line: string) => void;

  private constructor(
    private readonly options: AgentOptions,
    private readonly shared: SharedTables,
    private readonly inflight: InflightTracker,
  ) {
    this.say = options.log ?? ((line) => console.error(line));
    this.nbdAddress = options.nbd;
  }

  static async start(options: AgentOptions): Promise<Agent> {
    const agent = new Agent(options, await SharedTables.create(), InflightTracker.create());
    try {
      await agent.startWorkers(Math.min(WORKERS_MAX, options.workers ?? Math.min(availableParallelism(), 4)));
    } catch (error) {
      await agent.stop();
      throw error;
    }
    agent.connectLoop();
    return agent;
  }

  /** The NBD address actually served (the TCP port is filled in when 0 was asked for). */
  get address(): Address {
    return this.nbdAddress;
  }

  /** Calls `listener` for every export the agent starts serving from now on. */
  onExport(listener: (name: string, uri: string) => void): void {
    this.exportListeners.push(listener);
  }

  /** Calls `listener` if the controller refuses this agent for good (wrong secret or protocol
   *  version); the agent then stops trying to connect. */
  onRefused(listener: (error: RemoteError) => void): void {
    this.refusalListeners.push(listener);
  }

  exportNames(): string[] {
    return [...this.tables.values()].map((table) => table.name);
  }

  /** Resolves once the agent is registered with the controller. */
  whenConnected(): Promise<void> {
    if (this.controller) return Promise.resolve();
    return new Promise((resolve) => this.connectedWaiters.push(resolve));
  }

  /** Stops serving: the NBD servers finish their in-flight requests (which may still need the
   *  controller for faults), then the controller connection is closed. */
  async stop(): Promise<void> {
    await Promise.all(
      this.workers.map(
        (worker) =>
          new Promise<void>((resolve) => {
            onMessages<FromWorker>(worker, (message) => {
              if (message.type === "stopped") resolve();
            });
            worker.addEventListener("close", () => resolve());
            this.post(worker, { type: "stop" });
          }),
      ),
    );
    for (const worker of this.workers) worker.terminate();
    this.portClaim?.release();
    this.stopping = true;
    clearTimeout(this.leaseTimer);
    for (const timer of this.commitTimers.values()) clearTimeout(timer);
    this.controller?.close();
  }

  // ---- Worker threads ----

  private async startWorkers(count: number): Promise<void> {
    const nbd = this.options.nbd;
    if (nbd.kind === "unix") await removeStaleSocket(nbd.path);
    // Port 0 is a port nobody serves yet; the first worker picks it and the others join it.
    else if (nbd.port !== 0) this.portClaim = PortClaim.take(nbd);
    for (let index = 0; index < count; index += 1) {
      const listen: NbdListen[] = [];
      if (nbd.kind === "unix") {
        // A unix socket path can be bound once, so one worker accepts every unix connection.
        if (index === 0) listen.push({ kind: "unix", path: nbd.path });
      } else {
        const port = this.nbdAddress.kind === "tcp" ? this.nbdAddress.port : nbd.port;
        listen.push({ kind: "tcp", host: nbd.host, port, reusePort: count > 1 });
      }
      const worker = new Worker(new URL("./worker.ts", import.meta.url).href);
      const started = new Promise<number | undefined>((resolve, reject) => {
        onMessages<FromWorker>(worker, (message) => {
          if (message.type === "listening") resolve(message.tcpPort);
          if (message.type === "failed") reject(new Error(message.message));
        });
        worker.addEventListener("error", (event) => reject(new Error(`NBD worker failed: ${(event as ErrorEvent).message}`)));
      });
      this.ports.set(worker, new BatchingPort<ToWorker>(worker));
      onMessages<FromWorker>(worker, (message) => this.onWorkerMessage(worker, message));
      this.post(worker, {
        type: "init",
        thread: index + 1,
        tables: this.shared.handle(),
        inflight: this.inflight.buffer,
        gates: this.gates.buffer,
        lease: this.lease.buffer,
        era: this.era.buffer,
        clock: this.lease.now(),
        listen,
      });
      this.workers.push(worker);
      const port = await started;
      if (port !== undefined && this.nbdAddress.kind === "tcp") this.nbdAddress = { ...this.nbdAddress, port };
    }
  }

  private post(worker: Worker, message: ToWorker): void {
    this.ports.get(worker)!.post(message);
  }

  private broadcast(message: ToWorker): void {
    for (const worker of this.workers) this.post(worker, message);
  }

  /** Sends what changed in the export list (new or replaced tables, dropped disks) to every
   *  worker; resolves once all of them use it, so a host that connects after the controller's
   *  command was answered finds the export. Only the change goes: thousands of exports are normal. */
  private broadcastExports(change: { set?: Table[]; removed?: number[] }): Promise<void> {
    const set: ExportEntry[] = (change.set ?? []).map(({ entryCount: _, changes: __, ...entry }) => entry);
    const version = ++this.exportsVersion;
    const applied = new Promise<void>((resolve) => this.exportWaiters.set(version, { pending: this.workers.length, resolve }));
    this.broadcast({ type: "exports", set, removed: change.removed ?? [], version });
    return applied;
  }

  private onWorkerMessage(worker: Worker, message: FromWorker): void {
    if (message.type === "exports-applied") {
      const waiter = this.exportWaiters.get(message.version);
      if (waiter && --waiter.pending === 0) {
        this.exportWaiters.delete(message.version);
        waiter.resolve();
      }
      return;
    }
    if (message.type === "sync") {
      // Messages to a worker arrive in order, so it has the latest exports when it gets this.
      this.post(worker, { type: "resume", request: message.request });
      return;
    }
    if (message.type === "connections") {
      const count = (this.openConnections.get(message.disk) ?? 0) + message.delta;
      assert(count >= 0, `disk ${message.disk}: more connections closed than opened`);
      if (count === 0) this.openConnections.delete(message.disk);
      else this.openConnections.set(message.disk, count);
      return;
    }
    if (message.type === "storage-error") {
      this.reportStorageError(message.container, message.message);
      return;
    }
    if (message.type === "commit") {
      this.answer(worker, message.request, this.commitFor(message.disk, message.era), `commit of disk ${message.disk}`);
      return;
    }
    if (message.type !== "fault") return;
    this.answer(worker, message.request, this.forwardFault(message), `fault on disk ${message.disk}`);
  }

  /** Resumes the worker's request once `outcome` is known, with its errno if any. */
  private answer(worker: Worker, request: number, outcome: Promise<HostErrno | undefined>, what: string): void {
    outcome.then(
      (errno) => this.post(worker, errno ? { type: "resume", request, errno } : { type: "resume", request }),
      (error: Error) => {
        this.say(`${what} failed: ${error.message}`);
        this.post(worker, { type: "resume", request, errno: "EIO" });
      },
    );
  }

  /** Tells the controller a container failed (R14), once per container until it answers. */
  private reportStorageError(container: number, message: string): void {
    this.say(`agent ${this.options.id}: storage container ${container} failed: ${message}`);
    const controller = this.controller;
    if (!controller || this.storageErrorsReporting.has(container)) return;
    this.storageErrorsReporting.add(container);
    controller
      .request("storage_error", { container, message: message.slice(0, LUN_FAILURE_LENGTH_MAX) })
      .catch((error: Error) => this.say(`agent ${this.options.id}: could not report the failure of container ${container}: ${error.message}`))
      .finally(() => this.storageErrorsReporting.delete(container));
  }

  /** Sends a fault to the controller and applies its answer; returns the errno for the host, if any. */
  private async forwardFault(fault: Extract<FromWorker, { type: "fault" }>): Promise<HostErrno | undefined> {
    const { request: _, type: __, ...args } = fault;
    const answer = await this.withController((controller) =>
      // The entries go in as the answer is read, unless a later change to them (say a snapshot's
      // No-write) arrived first: then the request faults again.
      controller.request("fault", args, (arrived) => {
        const table = this.tables.get(fault.disk);
        // No table: it went away while the fault was answered, and the request will see GONE.
        if (table && arrived.action === "retry" && arrived.runs && arrived.first !== undefined && arrived.change !== undefined) {
          writeChange(this.shared, table, arrived.first, arrived.runs, arrived.change);
        }
      }),
    );
    if (!answer) return "EIO";
    if (answer.action === "error") return answer.errno ?? "EIO";
    if (answer.run !== undefined && answer.at !== undefined && answer.runs && answer.first !== undefined) {
      this.uncommitted.note(fault.disk, answer.run, answer.first, answer.runs, answer.at);
      this.commitSoon(fault.disk);
    }
    return undefined;
  }

  /** Has the controller commit the mapping changes writes to `disk` relied on: for a FLUSH from a
   *  connection of registration era `era`, or in the background (null). A FLUSH fails if changes
   *  its connection may have relied on were lost, also if that came to light while it waited. */
  private async commitFor(disk: number, era: number | null): Promise<HostErrno | undefined> {
    const lost = () => era !== null && this.uncommitted.lostFor(disk, era);
    if (lost()) return "EIO";
    const outcome = await this.uncommitted.commitDisk(disk, async (run) => (await this.withController((controller) => controller.request("commit", { run }))) !== null);
    return outcome === "unreachable" || lost() ? "EIO" : undefined;
  }

  /** Commits a fault's changes soon without waiting for a FLUSH: then a controller crash after
   *  that does not fail the FLUSH (the agent cannot tell whether another commit saved them). */
  private commitSoon(disk: number): void {
    if (this.commitTimers.has(disk)) return;
    const timer = setTimeout(() => {
      this.commitTimers.delete(disk);
      this.commitFor(disk, null).catch((error: Error) => this.say(`agent ${this.options.id}: background commit of disk ${disk}: ${error.message}`));
    }, BACKGROUND_COMMIT_MS);
    this.commitTimers.set(disk, timer);
  }

  /** Runs `call` on the controller connection, again after a lost connection once the agent is
   *  registered again; null when the controller stays out of reach for FAULT_WAIT_MS. */
  private async withController<T>(call: (controller: ControllerPeer) => Promise<T>): Promise<T | null> {
    const deadline = Date.now() + FAULT_WAIT_MS;
    for (;;) {
      const controller = await this.controllerBefore(deadline);
      if (!controller) return null;
      try {
        return await call(controller);
      } catch (error) {
        if (!(error instanceof ConnectionClosedError)) throw error;
      }
    }
  }

  private async controllerBefore(deadline: number): Promise<ControllerPeer | null> {
    while (!this.controller || this.controller.isClosed) {
      const left = deadline - Date.now();
      if (left <= 0 || this.stopping) return null;
      let timer: Timer | undefined;
      await Promise.race([this.whenConnected(), new Promise((resolve) => (timer = setTimeout(resolve, left)))]);
      clearTimeout(timer);
    }
    return this.controller;
  }

  // ---- Controller connection ----

  private async connectLoop(): Promise<void> {
    let delay = RECONNECT_DELAY_MIN_MS;
    let unreachableSaidAt = -Infinity;
    while (!this.stopping) {
      const stream = await connect(this.options.control).catch((error: Error) => {
        // Said at once, then every few seconds: an agent that only waits looks like one that works.
        if (performance.now() - unreachableSaidAt >= UNREACHABLE_REPORT_MS) {
          unreachableSaidAt = performance.now();
          this.say(`agent ${this.options.id}: cannot reach the controller at ${formatAddress(this.options.control)} (${error.message}); still trying`);
        }
        return null;
      });
      if (stream) {
        unreachableSaidAt = -Infinity;
        const outcome = await this.registerAndServe(stream);
        if (outcome === "refused") return;
        if (outcome === "served") delay = RECONNECT_DELAY_MIN_MS;
      }
      if (this.stopping) return;
      await this.sleep(delay);
      delay = Math.min(RECONNECT_DELAY_MAX_MS, delay * 2);
    }
  }

  /** Registers over a new connection and serves the controller's commands until it closes:
   *  "served" then; "refused" when the controller refused this agent for good. */
  private async registerAndServe(stream: Stream): Promise<"served" | "refused" | "failed"> {
    try {
      const peer: ControllerPeer = new Peer(stream, agentRequests, controllerRequests);
      peer.serve((op, args) => this.serveCommand(op, args));
      const closed = new Promise<Error>((resolve) => peer.onClosed(resolve));
      // The controller loads every table before it answers hello; a table it did not send
      // belongs to a disk deleted while we were apart.
      this.reloaded = new Set();
      const era = this.era.advance();
      await this.forgetEntries();
      const asked = this.lease.now();
      const heldRuns = this.uncommitted.runs();
      const hello = await peer.request("hello", {
        version: PROTOCOL_VERSION,
        role: "agent",
        secret: this.options.secret,
        agentId: this.options.id,
        instance: this.instance,
        leaseMs: this.leaseMs,
        nbd: this.nbdAddress.kind === "unix" ? `unix:${this.nbdAddress.path}` : `${this.nbdAddress.host}:${this.nbdAddress.port}`,
        heldRuns,
      });
      await this.handBack(peer, hello.run ?? 0, era, heldRuns);
      await this.dropTablesNotReloaded();
      this.renewed(asked);
      this.controller = peer;
      this.renewLoop(peer);
      for (const waiter of this.connectedWaiters.splice(0)) waiter();
      this.say(`agent ${this.options.id}: registered with the controller`);
      const error = await closed;
      this.controller = null;
      if (!this.stopping) this.say(`agent ${this.options.id}: lost the controller (${error.message}); reconnecting`);
      return "served";
    } catch (error) {
      if (!(error instanceof RemoteError)) return "failed";
      const origin = error.code === "EACCES" && this.options.secretOrigin ? ` (the secret came from ${this.options.secretOrigin})` : "";
      this.say(`agent ${this.options.id}: controller refused: ${error.message}${origin}`);
      if (!REFUSALS_FOR_GOOD.has(error.code)) return "failed";
      const refusal = new RemoteError(error.code, `${error.message}${origin}`);
      for (const listener of this.refusalListeners) listener(refusal);
      return "refused";
    }
  }

  /** Hands back the mapping changes of ended controller runs it holds (uncommitted.ts). */
  private async handBack(peer: ControllerPeer, run: number, era: number, heldRuns: number[]): Promise<void> {
    if (heldRuns.every((held) => held === run)) return;
    const lost = await this.uncommitted.handBack(run, era, async (disk, ended, entries) => (await peer.request("restore", { disk, run: ended, entries })).lost);
    await peer.request("restored", {});
    for (const disk of lost) {
      const name = this.tables.get(disk)?.name ?? `${disk}`;
      this.say(
        `agent ${this.options.id}: disk ${name}: the controller restarted and could not take back every mapping change it had not committed; ` +
          "writes acknowledged through them may be lost, so every FLUSH of a connection opened before now fails (reconnect to go on)",
      );
    }
  }

  private sleep(ms: number): Promise<void> {
    // Unref'd: a stopping agent does not wait for its next attempt.
    return new Promise((resolve) => setTimeout(resolve, ms).unref());
  }

  // ---- Lease (R8) ----

  private get leaseMs(): number {
    return this.options.leaseMs ?? LEASE_MS_DEFAULT;
  }

  /** A renewal asked for at `asked` was answered: the lease runs from when it was asked. */
  private renewed(asked: number): void {
    this.lease.extend(asked + this.leaseMs);
    clearTimeout(this.leaseTimer);
    this.leaseTimer = setTimeout(() => this.checkLease(), Math.max(0, this.lease.until - this.lease.now())).unref();
  }

  private async renewLoop(peer: ControllerPeer): Promise<void> {
    while (!peer.isClosed && !this.stopping) {
      // Unref'd: a pending renewal must not keep a stopping process alive.
      await new Promise((resolve) => setTimeout(resolve, this.leaseMs / LEASE_RENEWALS_PER_TERM).unref());
      const asked = this.lease.now();
      try {
        await peer.request("renew", {});
        this.renewed(asked);
      } catch {
        return; // the connection is gone; the next registration renews
      }
    }
  }

  /**
   * The lease ran out (the controller is unreachable, or this process was stopped): every entry
   * reverts to Invalid, so no I/O goes to storage on old mappings; workers also check the lease
   * right before each storage I/O. The controller has fenced this agent and goes on without it.
   */
  /**
   * Before hello: the controller may have changed any table while we were apart (or restarted and
   * lost track of what we hold), so every entry goes Invalid and I/O already past its lookup
   * finishes. A hello then tells the controller that we hold nothing stale, and changes it held
   * back for us can go ahead (R8).
   */
  private async forgetEntries(): Promise<void> {
    const tables = [...this.tables.values()];
    for (const table of tables) this.shared.fillEntries(table.slot, 0, table.entryCount, INVALID_WORD);
    await Promise.all(tables.map((table) => this.inflight.drain(table.slot)));
  }

  private checkLease(): void {
    if (this.lease.valid() || this.stopping) return;
    this.say(`agent ${this.options.id}: lease expired; I/O stops until the controller is reached again`);
    for (const table of this.tables.values()) this.shared.fillEntries(table.slot, 0, table.entryCount, INVALID_WORD);
  }

  // ---- Commands from the controller (R6) ----

  private async serveCommand(op: string, args: unknown): Promise<unknown> {
    switch (op) {
      case "add_container": {
        const { id, path } = args as ArgsOf<AgentRequests, "add_container">;
        this.containers.set(id, { id, path, epoch: (this.containers.get(id)?.epoch ?? 0) + 1 });
        this.broadcast({ type: "containers", containers: [...this.containers.values()] });
        return {};
      }
      case "new_table":
        return this.newTable(args as ArgsOf<AgentRequests, "new_table">);
      case "delete_table": {
        const { disk } = args as ArgsOf<AgentRequests, "delete_table">;
        const table = this.table(disk);
        this.tables.delete(disk);
        this.uncommitted.forget(disk);
        await this.broadcastExports({ removed: [disk] });
        // Pages are only reused once no lookup can still be reading them, so always drain here.
        await this.retire(table);
        return {};
      }
      case "get_entry": {
        const { disk, first, count } = args as ArgsOf<AgentRequests, "get_entry">;
        const table = this.table(disk);
        checkRange(table, first, count);
        return { words: Array.from({ length: count }, (_, i) => this.shared.getEntry(table.slot, first + i)) };
      }
      case "get_connections": {
        const { disk } = args as ArgsOf<AgentRequests, "get_connections">;
        return { count: this.openConnections.get(disk) ?? 0 };
      }
      case "get_status": {
        const { disk, first, count } = args as ArgsOf<AgentRequests, "get_status">;
        const table = this.table(disk);
        checkRange(table, first, count);
        return { states: Array.from({ length: count }, (_, i) => this.shared.getEntry(table.slot, first + i) % 16) };
      }
      case "quiesce": {
        const { disks, timeoutMs } = args as ArgsOf<AgentRequests, "quiesce">;
        const tables = disks.map((disk) => this.table(disk));
        for (const table of tables) this.gates.close(table.slot);
        if (!(await this.inflight.drainWithin(tables.map((table) => table.slot), timeoutMs))) {
          this.openGates(tables);
          throw new RequestError("ETIMEDOUT", `agent ${this.options.id}: I/O still in progress after ${timeoutMs} ms; quiesce abandoned`);
        }
        return {};
      }
      case "activate": {
        const { disks } = args as ArgsOf<AgentRequests, "activate">;
        this.openGates(disks.flatMap((disk) => this.tables.get(disk) ?? []));
        return {};
      }
      case "set_entry": {
        const { disk, first, runs, blocking, change } = args as ArgsOf<AgentRequests, "set_entry">;
        commandInOrder(writeChange(this.shared, this.table(disk), first, runs, change), change);
        if (blocking) await this.inflight.drain(this.table(disk).slot);
        return {};
      }
      case "set_entry_state": {
        const { disk, first, count, set, clear, blocking, change } = args as ArgsOf<AgentRequests, "set_entry_state">;
        const table = this.table(disk);
        commandInOrder(stateChange(this.shared, table, first, count, set, clear.length > 0, change), change);
        if (blocking) await this.inflight.drain(table.slot);
        return {};
      }
      default:
        throw new RequestError("EINVAL", `unknown command ${op}`);
    }
  }

  private async dropTablesNotReloaded(): Promise<void> {
    const stale = [...this.tables.values()].filter((table) => !this.reloaded.has(table.disk));
    for (const table of stale) {
      this.tables.delete(table.disk);
      this.uncommitted.forget(table.disk);
    }
    if (stale.length === 0) return;
    await this.broadcastExports({ removed: stale.map((table) => table.disk) });
    for (const table of stale) await this.retire(table);
  }

  private async newTable(args: ArgsOf<AgentRequests, "new_table">): Promise<object> {
    const entryCount = Math.ceil(args.size / 2 ** args.segmentShift);
    if (entryCount > 2 ** 32 || args.size === 0) throw new RequestError("EINVAL", `table for disk ${args.disk}: bad size ${args.size}`);
    const { slot, generation } = this.createTable(args.disk, entryCount, args.segmentShift);
    // Only a table loaded counts: an older one the controller now thinks this agent lacks goes.
    this.reloaded.add(args.disk);
    const replaced = this.tables.get(args.disk);
    const table: Table = {
      disk: args.disk,
      name: args.name,
      slot,
      generation,
      sizeBytes: args.size,
      segmentShift: args.segmentShift,
      readOnly: args.readOnly,
      entryCount,
      changes: new ChangeOrder(args.change),
    };
    this.tables.set(args.disk, table);
    await this.broadcastExports({ set: [table] });
    if (replaced) await this.retire(replaced);
    else for (const listener of this.exportListeners) listener(args.name, nbdUri(this.nbdAddress, args.name));
    return {};
  }

  /** A new all-Invalid table in a free slot. What can still fail is the memory: the shared
   *  memory is bounded (MEMORY_MAXIMUM_PAGES), and the host may run out before that. */
  private createTable(disk: number, entryCount: number, segmentShift: number): { slot: number; generation: number } {
    const slot = this.slots.take();
    if (slot === null) throw new RequestError("ENOSPC", `agent ${this.options.id}: no free table slot for disk ${disk} (all ${TABLE_SLOTS_MAX} in use)`);
    try {
      return { slot, generation: this.shared.createTable(slot, entryCount, segmentShift) };
    } catch (error) {
      this.slots.release(slot);
      if (!(error instanceof TablesError)) throw error;
      const { memoryBytes } = this.shared.pageStats();
      const code = error.code === ERR_NO_MEMORY ? "ENOMEM" : "EINVAL";
      throw new RequestError(code, `agent ${this.options.id}: cannot load the table of disk ${disk}: ${error.message} (table memory ${formatSize(memoryBytes)})`);
    }
  }

  private openGates(tables: Table[]): void {
    for (const table of tables) this.gates.open(table.slot);
    this.broadcast({ type: "activate" });
  }

  /** Stops lookups on an old table, waits for I/O through it to end, then frees its pages. */
  private async retire(table: Table): Promise<void> {
    this.shared.retireTable(table.slot);
    await this.inflight.drain(table.slot);
    this.shared.freeTable(table.slot);
    this.slots.release(table.slot);
    // I/O held by a quiesce whose activate never came (the controller died mid-group) wakes and
    // finds its table gone.
    this.openGates([table]);
  }


  private table(disk: number): Table {
    const table = this.tables.get(disk);
    if (!table) throw new RequestError("NOT_FOUND", `no table for disk ${disk}`);
    return table;
  }

}
