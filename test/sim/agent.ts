// A simulated host's mapping agent. Each incarnation of the process runs the real agent
// (agent/agent.ts and what it wires) with one or two in-process worker threads
// (agent/worker-thread.ts) in a simulated environment: scheduler time and timers, the simulated
// network to the controller, simulated storage, and messages between the threads that go through
// the scheduler. A crash ends the incarnation's Life, so its timers and messages never run, and
// frees the table slots it held; the next incarnation starts with no tables at all. Hosts open
// exports on the workers' real MappedBackend: no NBD server in between.
import { Agent, type AgentOptions } from "../../agent/agent.ts";
import type { AgentClock, AgentEnvironment, WorkerEnvironment } from "../../agent/environment.ts";
import type { ExportHandle } from "../../agent/nbd/backend.ts";
import { writeChange, writeRuns } from "../../agent/table-edits.ts";
import type { FromWorker, ToWorker } from "../../agent/thread-messages.ts";
import { WorkerThread } from "../../agent/worker-thread.ts";
import type { ThreadChannel } from "../../agent/worker-threads.ts";
import type { SharedTables } from "../../wasm/tables.ts";
import { SimFileCalls } from "./agent-files.ts";
import { SIM_SECRET } from "./controller.ts";
import type { CrashKind } from "./log-disk.ts";
import type { SimNetwork } from "./network.ts";
import type { Canary } from "./options.ts";
import type { Random } from "./random.ts";
import { Life, type Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES, blocksOf, HostStorage, tagsOf, type SimStorage } from "./storage.ts";
import type { Trace } from "./trace.ts";

/** How long a drain sleeps before it looks again whether the I/O it waits for has ended. */
const DRAIN_RECHECK_MS = 0.2;
/** The longest a message between the agent's threads takes. */
const THREAD_MESSAGE_MS_MAX = 0.05;
const WORKERS_MAX = 2;

export interface AgentEnv {
  scheduler: Scheduler;
  random: Random;
  trace: Trace;
  network: SimNetwork;
  storage: SimStorage;
  leaseMs: number;
  canary: Canary | undefined;
  /** The container behind a path the controller names. */
  containerAt(path: string): number | undefined;
  /** The agent has registered with the controller (dropping every entry it held). */
  registered(): void;
  /** The agent process exited on its own, as the real one does when the controller refuses it
   *  for good (its id is in use by a process whose connection and lease the controller still
   *  holds): as after a process crash, a supervisor starts it again. */
  exited(): void;
}

/** What a host sees when its connection dies with the agent. */
export class ConnectionReset extends Error {
  override name = "ConnectionReset";
}

/** One host's agent across crashes and restarts. */
export class SimAgent {
  private process: AgentProcess | null = null;
  private incarnations = 0;
  private connections = 0;

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
    return this.process?.agent?.registered ?? false;
  }

  start(): void {
    this.env.trace.note(`agent ${this.host}: starts`);
    this.incarnations += 1;
    const process = new AgentProcess(this.host, String(this.incarnations), this.env, this.tables, () => {
      if (this.process !== process) return;
      this.env.trace.note(`agent ${this.host}: exits`);
      this.end(process, "process");
      this.env.exited();
    });
    this.process = process;
    this.env.network.agentUp(this.host);
  }

  crash(kind: CrashKind): void {
    const process = this.process;
    if (!process) return;
    this.env.trace.note(`agent ${this.host}: ${kind} crash`);
    this.end(process, kind);
  }

  private end(process: AgentProcess, kind: CrashKind): void {
    this.process = null;
    process.kill();
    this.env.network.agentDown(this.host, kind);
    if (kind === "host") this.env.storage.crashHost(this.host);
  }

  /** A host connection to export `name` on one of the agent's workers; null if there is none. */
  connect(name: string): HostConnection | null {
    const process = this.process;
    const backend = process ? this.env.random.pick(process.workers).backend : null;
    const handle = backend?.openExport(name);
    if (!process || !handle) return null;
    this.connections += 1;
    return new HostConnection(this.host, `${this.host}#${this.connections}`, handle, process);
  }
}

/** One host connection: an export handle of one incarnation of an agent. */
export class HostConnection {
  constructor(
    readonly host: string,
    readonly id: string,
    private readonly handle: ExportHandle,
    private readonly process: AgentProcess,
  ) {}

  /** The agent incarnation it was opened on still runs. */
  get alive(): boolean {
    return this.process.life.isAlive;
  }

  async read(offset: number, length: number): Promise<number[]> {
    const into = new Uint8Array(length);
    await this.request(() => this.handle.read(offset, into));
    return tagsOf(into, 0, length);
  }

  write(offset: number, tags: readonly number[], fua: boolean): Promise<void> {
    return this.request(() => this.handle.write(offset, blocksOf(tags), fua));
  }

  zero(offset: number, length: number, fua: boolean): Promise<void> {
    return this.request(() => this.handle.writeZeroes(offset, length, fua, false));
  }

  trim(offset: number, length: number): Promise<void> {
    return this.request(() => this.handle.trim(offset, length, false));
  }

  flush(): Promise<void> {
    return this.request(() => this.handle.flush());
  }

  close(): void {
    if (this.alive) this.handle.close();
  }

  /** A request: it fails if the agent is down or dies before answering. */
  private request<T>(work: () => T | Promise<T>): Promise<T> {
    if (!this.alive) return Promise.reject(new ConnectionReset(`the agent of connection ${this.id} is gone`));
    return Promise.race([new Promise<T>((resolve) => resolve(work())), this.process.crashed]);
  }
}

class AgentProcess {
  readonly life: Life;
  /** Rejects every host request still open when the process dies. */
  readonly crashed: Promise<never>;
  readonly workers: WorkerThread[] = [];
  agent: Agent | null = null;
  private failRequests!: (error: Error) => void;

  constructor(
    host: string,
    /** What hello calls this process: one per incarnation of the host's agent. */
    instance: string,
    env: AgentEnv,
    private readonly tables: SharedTables,
    /** The controller refused it for good: the process exits. */
    refused: () => void,
  ) {
    const { scheduler, random, trace, canary } = env;
    const life = (this.life = new Life(`agent ${host}`));
    this.crashed = new Promise<never>((_, reject) => (this.failRequests = reject));
    this.crashed.catch(() => undefined);
    const clock: AgentClock = {
      now: () => scheduler.now,
      after: (ms, run) => scheduler.after(ms, life, run),
      afterUnref: (ms, run) => scheduler.after(ms, life, run),
      sleep: (ms) => scheduler.sleep(ms, life),
    };
    const agentEnv: AgentEnvironment = {
      clock,
      connect: () => env.network.connect(host, life),
      whileHolds: () => scheduler.sleep(DRAIN_RECHECK_MS, life),
      instance,
      observe: (event) => {
        if (event === "registered") env.registered();
        else trace.count(event === "lease expired" ? "agent lease expired" : "mapping changes lost in a controller restart");
      },
      writeFaultAnswer:
        canary === "ignore-change-order"
          ? (shared, table, first, runs) => {
              writeRuns(shared, table, first, runs);
              return true;
            }
          : (shared, table, first, runs, change) => {
              const applied = writeChange(shared, table, first, runs, change);
              if (!applied) trace.count("fault answer older than a change");
              return applied;
            },
    };
    const storage = new HostStorage(env.storage, host, life);
    const channels: ThreadChannel[] = [];
    for (let i = random.int(1, WORKERS_MAX); i > 0; i -= 1) {
      const workerEnv: WorkerEnvironment = {
        clock,
        files: new SimFileCalls(storage, env.containerAt, scheduler, random, life, canary === "ack-unwritten"),
        // Every transfer waits in the simulated I/O pool (all of them are whole blocks).
        poolTransferBytesMin: BLOCK_BYTES,
        serve: async () => ({ close: async () => undefined }),
        adjustCommit: commitCanary(canary),
      };
      const toWorker = new ThreadQueue<ToWorker>(scheduler, random, life);
      const fromWorker = new ThreadQueue<FromWorker>(scheduler, random, life);
      const worker = new WorkerThread(workerEnv, (message) => fromWorker.post(message));
      toWorker.onMessage((message) => worker.handle(message));
      this.workers.push(worker);
      channels.push({ post: (message) => toWorker.post(message), onMessage: (handle) => fromWorker.onMessage(handle) });
    }
    const options: AgentOptions = {
      id: host,
      control: { kind: "unix", path: "sim/controller" },
      secret: SIM_SECRET,
      nbd: { kind: "unix", path: `sim/${host}` },
      leaseMs: env.leaseMs,
      log: (line) => trace.note(line),
    };
    void Agent.launch(options, agentEnv, tables, async (threads) => {
      for (const channel of channels) await threads.start(channel, []);
      return { address: options.nbd, stop: async () => undefined };
    }).then((agent) => {
      this.agent = agent;
      agent.onRefused(refused);
    });
  }

  kill(): void {
    this.life.end();
    this.failRequests(new ConnectionReset("the agent crashed"));
    for (const slot of this.agent?.tableSlots() ?? []) {
      this.tables.retireTable(slot);
      this.tables.freeTable(slot);
    }
  }
}

/** Messages one way between two threads of a process: in order, each after a small delay. */
class ThreadQueue<T> {
  private readonly handlers: ((message: T) => void)[] = [];
  private lastDelivery = 0;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly life: Life,
  ) {}

  post(message: T): void {
    const time = Math.max(this.scheduler.now + this.random.between(0, THREAD_MESSAGE_MS_MAX), this.lastDelivery);
    this.lastDelivery = time;
    this.scheduler.at(time, this.life, () => {
      for (const handle of this.handlers) handle(message);
    });
  }

  onMessage(handle: (message: T) => void): void {
    this.handlers.push(handle);
  }
}

/** The canaries that break how FLUSH and FUA have mapping changes committed. */
function commitCanary(canary: Canary | undefined): WorkerEnvironment["adjustCommit"] {
  if (canary === "fua-before-commit") return (commit, by) => (by === "fua" ? async () => undefined : commit);
  if (canary === "flush-misses-loss") return (commit, by) => (by === "flush" ? (disk) => commit(disk, ERA_AFTER_EVERY_LOSS) : commit);
  return undefined;
}

/** A registration era later than any loss can be. */
const ERA_AFTER_EVERY_LOSS = 2 ** 31 - 1;
