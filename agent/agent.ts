// The mapping agent's main thread: it wires together the link to the controller
// (controller-link.ts), the tables the controller's commands change (table-applier.ts), the
// requests forwarded for the worker threads (fault-forwarder.ts) and the worker threads that serve
// NBD (worker-threads.ts; in production worker-pool.ts). Everything it touches outside the process
// comes from its environment (environment.ts).
import { availableParallelism } from "node:os";
import { SharedTables } from "../wasm/tables.ts";
import { nbdUri, type Address } from "../engine/util/address.ts";
import type { RemoteError } from "../engine/wire/peer.ts";
import { ControllerLink, type LinkOptions } from "./controller-link.ts";
import { productionEnvironment, type AgentEnvironment } from "./environment.ts";
import { FaultForwarder, type HostErrno } from "./fault-forwarder.ts";
import { TableApplier } from "./table-applier.ts";
import type { FromWorker } from "./thread-messages.ts";
import { UncommittedChanges } from "./uncommitted.ts";
import { WorkerPool } from "./worker-pool.ts";
import { createAgentMemory, WorkerThreads, type AgentMemory, type ThreadChannel } from "./worker-threads.ts";

export interface AgentOptions extends LinkOptions {
  nbd: Address;
  workers?: number;
  log?: (line: string) => void;
}

/** The agent's worker threads once started: the NBD address they serve, and how they stop. */
export interface StartedThreads {
  address: Address;
  stop(): Promise<void>;
}

export class Agent {
  private readonly threads: WorkerThreads;
  private readonly tables: TableApplier;
  private readonly link: ControllerLink;
  private readonly forwarder: FaultForwarder;
  private readonly exportListeners: ((name: string, uri: string) => void)[] = [];
  private started: StartedThreads | null = null;
  private readonly say: (line: string) => void;

  private constructor(
    private readonly options: AgentOptions,
    env: AgentEnvironment,
    memory: AgentMemory,
  ) {
    this.say = options.log ?? ((line) => console.error(line));
    const uncommitted = new UncommittedChanges();
    this.threads = new WorkerThreads(memory);
    this.tables = new TableApplier(options.id, memory, this.threads, uncommitted, (name) => {
      for (const listener of this.exportListeners) listener(name, nbdUri(this.address, name));
    });
    this.link = new ControllerLink(options, env, memory, this.tables, uncommitted, () => this.address, this.say);
    this.forwarder = new FaultForwarder(options.id, env, memory, this.link, this.tables, uncommitted, this.say);
    this.threads.onRequest((channel, message) => this.onWorkerMessage(channel, message));
  }

  static async start(options: AgentOptions): Promise<Agent> {
    return Agent.launch(options, productionEnvironment(), await SharedTables.create(), async (threads) => {
      const pool = new WorkerPool(threads, options.nbd);
      try {
        await pool.start(options.workers ?? Math.min(availableParallelism(), 4));
      } catch (error) {
        await pool.stop();
        throw error;
      }
      return { address: pool.address, stop: () => pool.stop() };
    });
  }

  /** Runs an agent in `env` on `tables` (a new SharedTables in production); `startThreads` starts
   *  its worker threads. */
  static async launch(
    options: AgentOptions,
    env: AgentEnvironment,
    tables: SharedTables,
    startThreads: (threads: WorkerThreads) => Promise<StartedThreads>,
  ): Promise<Agent> {
    const agent = new Agent(options, env, createAgentMemory(tables, env));
    try {
      agent.started = await startThreads(agent.threads);
    } catch (error) {
      await agent.stop();
      throw error;
    }
    agent.link.start();
    return agent;
  }

  /** The NBD address actually served (the TCP port is filled in when 0 was asked for). */
  get address(): Address {
    return this.started?.address ?? this.options.nbd;
  }

  /** Registered with the controller now. */
  get registered(): boolean {
    return this.link.current !== null && !this.link.current.isClosed;
  }

  /** Calls `listener` for every export the agent starts serving from now on. */
  onExport(listener: (name: string, uri: string) => void): void {
    this.exportListeners.push(listener);
  }

  /** Calls `listener` if the controller refuses this agent for good (wrong secret or protocol
   *  version); the agent then stops trying to connect. */
  onRefused(listener: (error: RemoteError) => void): void {
    this.link.onRefused(listener);
  }

  exportNames(): string[] {
    return this.tables.exportNames();
  }

  /** Resolves once the agent is registered with the controller. */
  whenConnected(): Promise<void> {
    return this.link.whenConnected();
  }

  /** The table slots this process holds, live or retiring (for a simulator's crash, which frees
   *  them as the death of the process frees its memory). */
  tableSlots(): number[] {
    return this.tables.slotsInUse();
  }

  /** Stops serving: the NBD servers finish their in-flight requests (which may still need the
   *  controller for faults), then the controller connection is closed. */
  async stop(): Promise<void> {
    await this.started?.stop();
    this.link.stop();
    this.forwarder.stop();
  }

  private onWorkerMessage(channel: ThreadChannel, message: FromWorker): void {
    switch (message.type) {
      case "sync":
        // Messages to a worker arrive in order, so it has the latest exports when it gets this.
        channel.post({ type: "resume", request: message.request });
        return;
      case "connections":
        this.tables.countConnection(message.disk, message.delta);
        return;
      case "storage-error":
        this.forwarder.reportStorageError(message.container, message.message);
        return;
      case "commit":
        this.answer(channel, message.request, this.forwarder.commitFor(message.disk, message.era), `commit of disk ${message.disk}`);
        return;
      case "fault":
        this.answer(channel, message.request, this.forwarder.forwardFault(message), `fault on disk ${message.disk}`);
        return;
    }
  }

  /** Resumes the worker's request once `outcome` is known, with its errno if any. */
  private answer(channel: ThreadChannel, request: number, outcome: Promise<HostErrno | undefined>, what: string): void {
    outcome.then(
      (errno) => channel.post(errno ? { type: "resume", request, errno } : { type: "resume", request }),
      (error: Error) => {
        this.say(`${what} failed: ${error.message}`);
        channel.post({ type: "resume", request, errno: "EIO" });
      },
    );
  }
}
