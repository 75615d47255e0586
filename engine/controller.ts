// The controller: owns the persistent tables (R4), serves ctl requests and agents' faults (R5),
// and pushes table changes to every agent mapping a disk (R6). This file wires its services
// together over one environment (controller-env.ts): the real one, or the simulator's.
import { mkdirSync } from "node:fs";
import { join, resolve as resolvePath } from "node:path";
import { lockDataDir, type DataLock } from "./data-lock.ts";
import { Catalog, type Freed, type LogRecord } from "./catalog.ts";
import { TablesLog } from "./tables-log.ts";
import { AgentFleet } from "./agent-fleet.ts";
import { AgentRequests } from "./agent-requests.ts";
import { Containers } from "./containers.ts";
import { ControlPort } from "./control-port.ts";
import type { ControllerCore } from "./controller-core.ts";
import { nodeControllerEnv, type ControlListener, type ControllerEnv } from "./controller-env.ts";
import { CtlRequests } from "./ctl-requests.ts";
import { DiskOperations } from "./disk-operations.ts";
import { Pool } from "./pool.ts";
import type { SnapshotContext } from "./snapshots.ts";
import { ensureSecret, SECRET_FILE } from "./secret.ts";
import type { AgentLink } from "./agent-link.ts";
import { KeyedMutex } from "./util/mutex.ts";
import { formatAddress, type Address } from "./util/address.ts";

export const LOG_FILE = "controller.log";
export const DEFAULT_LUN_FILE = "lun0.img";
export const DEFAULT_LUN_BYTES = 64 * 2 ** 30;

export interface ControllerOptions {
  dataDir: string;
  control: Address;
  /** The control secret's file (created when absent); default SECRET_FILE in the data directory. */
  secretFile?: string;
  defaultLunBytes?: number;
  compactSlackBytes?: number;
  log?: (line: string) => void;
  /** The controller cannot go on (its log failed): it has stopped taking changes and must exit.
   *  Without it, the controller only says so and refuses every change from then on. */
  onFatal?: (error: Error) => void;
}

/** What a controller starts with, in any environment. */
export interface ControllerSetup {
  secret: string;
  /** The containers a new pool starts with. */
  firstContainers: { path: string; size: number }[];
  compactSlackBytes?: number;
  onFatal?: (error: Error) => void;
}

export class Controller implements ControllerCore {
  readonly catalog = new Catalog();
  readonly pool: Pool;
  readonly agents: AgentFleet;
  readonly familyLocks = new KeyedMutex<number>();
  readonly catalogLock = new KeyedMutex<"catalog">();
  readonly context: SnapshotContext;
  readonly tables: TablesLog;
  private readonly containers: Containers;
  private readonly port: ControlPort;
  private listener: ControlListener | null = null;
  private dataLock: DataLock | null = null;
  private controlAddress: Address | null = null;

  private constructor(
    readonly env: ControllerEnv,
    private readonly setup: ControllerSetup,
  ) {
    this.pool = new Pool(this.catalog, env.containerIo(this.catalog));
    this.agents = new AgentFleet(
      {
        catalog: this.catalog,
        persist: (records) => this.persist(records),
        say: (line) => this.say(line),
        fenced: (agent) => this.say(`agent ${agent.id}: lease expired; fenced until it registers again`),
      },
      env.clock,
    );
    const context: SnapshotContext = {
      catalog: this.catalog,
      pool: this.pool,
      persist: (records) => this.persist(records),
      record: (records) => this.tables.record(records),
      isDurable: (position) => this.tables.isDurable(position),
      runPosition: () => this.catalog.runPosition,
      commit: () => this.tables.commit(),
      run: env.newRunId(),
      onlyHolder: (disk, agent) => this.agents.onlyHolder(disk, agent),
      tablesSettled: () => this.agents.knownAgentsSettled(),
      release: (freed) => this.release(freed),
      pushEntries: (disk, segments, options) => this.agents.pushEntries(disk, segments, options),
      dropEntries: (agent, disk, segments) => this.agents.invalidate([agent as AgentLink], disk, segments, true),
      moveEntries: (disk, segments, options) => this.agents.moveEntries(disk, segments, options),
      nextChange: (disk) => this.agents.nextChange(disk),
      pushStates: (disk, set, blocking) => this.agents.pushStates(disk, set, blocking),
      exportDisk: (disk) => this.agents.exportDisk(disk),
      newDiskId: () => this.catalog.newDiskId(),
      failpoint: (name) => env.failpoint(name),
    };
    this.context = env.adjustContext?.(context) ?? context;
    this.tables = this.openTables();
    this.containers = new Containers(this);
    this.port = new ControlPort(this, setup.secret, new AgentRequests(this, this.containers), new CtlRequests(this, new DiskOperations(this), this.containers));
  }

  /** A controller on this machine: its data directory, locked for this process, holds the log,
   *  the control secret and the first container. */
  static async start(options: ControllerOptions): Promise<Controller> {
    const dataDir = resolvePath(options.dataDir);
    mkdirSync(dataDir, { recursive: true });
    const dataLock = lockDataDir(dataDir);
    let controller: Controller | undefined;
    try {
      const say = options.log ?? ((line: string) => console.error(line));
      const env = nodeControllerEnv({ control: options.control, logPath: join(dataDir, LOG_FILE), say });
      controller = Controller.open(env, {
        secret: ensureSecret(options.secretFile ?? join(dataDir, SECRET_FILE)),
        firstContainers: [{ path: join(dataDir, DEFAULT_LUN_FILE), size: options.defaultLunBytes ?? DEFAULT_LUN_BYTES }],
        compactSlackBytes: options.compactSlackBytes,
        onFatal: options.onFatal,
      });
      controller.dataLock = dataLock;
      controller.controlAddress = options.control;
      await controller.serve();
    } catch (error) {
      if (controller) await controller.stop();
      else dataLock.release();
      throw error;
    }
    controller.say(`controller listening on ${formatAddress(controller.address)}`);
    return controller;
  }

  /** Recovery: the log is replayed into the tables and the pool rebuilt from them. Nothing is
   *  served before `serve`. */
  static open(env: ControllerEnv, setup: ControllerSetup): Controller {
    return new Controller(env, setup);
  }

  /** The run's first record, the pool's first containers, a health check, then the control port. */
  async serve(): Promise<void> {
    // This run's first record: from here the log counts its records, so that a later run can tell
    // which of them were durable when agents hand back what this run left uncommitted (restore.ts).
    await this.persist([{ t: "run", id: this.context.run, at: 0 }]);
    if (this.catalog.luns.size === 0) {
      for (const { path, size } of this.setup.firstContainers) await this.catalogLock.run("catalog", () => this.containers.add(path, size));
    }
    await this.containers.check();
    this.containers.watch();
    this.listener = await this.env.listen((stream) => this.port.accept(stream));
  }

  /** The address actually listened on (the port is filled in when 0 was asked for). */
  get address(): Address {
    const control = this.controlAddress;
    if (!control) throw new Error("the controller has no address of its own");
    if (control.kind === "unix" || this.listener?.port === undefined) return control;
    return { ...control, port: this.listener.port };
  }

  /** For an agent in the same process (`ctl up`). */
  get secret(): string {
    return this.setup.secret;
  }

  /** No request or check is in progress and every change is durable: the tables, pool and
   *  allocators agree, and are what a recovery now would find. */
  get idle(): boolean {
    return !this.port.busy && !this.containers.busy && this.tables.settled;
  }

  /** ctl's requests, from within this process. */
  request(op: string, args: unknown): Promise<unknown> {
    return this.port.ctlRequest(op, args);
  }

  async stop(): Promise<void> {
    this.containers.unwatch();
    this.listener?.stop();
    this.agents.endAll();
    await this.tables.close();
    this.pool.close();
    this.dataLock?.release();
  }

  /** The process is gone at once (the simulator's crash): whatever of its code still runs changes
   *  nothing and arms no timer. */
  halt(): void {
    this.tables.halt("the controller crashed");
    this.containers.unwatch();
  }

  persist(records: LogRecord[]): Promise<Freed[]> {
    return this.tables.persist(records);
  }

  release(freed: Freed[]): void {
    for (const { lun, offset, shift } of freed) this.pool.release(lun, offset, shift);
  }

  say(line: string): void {
    this.env.say(line);
  }

  private openTables(): TablesLog {
    const { tables, recovery } = TablesLog.open(this.env.logPath, this.catalog, {
      io: this.env.logIo,
      clock: this.env.clock,
      compactSlackBytes: this.setup.compactSlackBytes,
      say: (line) => this.say(line),
      onFatal: this.setup.onFatal ?? ((error) => this.say(error.message)),
    });
    if (recovery.truncatedBytes > 0) {
      this.say(`log: dropped a torn tail of ${recovery.truncatedBytes} bytes at offset ${recovery.truncatedAt}`);
    }
    this.pool.rebuild();
    this.agents.expectKnownAgents();
    return tables;
  }
}
