// The main thread's side of the agent's worker threads, however they run (Bun Workers in
// production, see worker-pool.ts; in-process ones in a simulator): the memory they share with it,
// starting each, messages to one or all of them, and export changes that resolve once every
// worker uses them.
import type { SharedTables } from "../wasm/tables.ts";
import type { AgentEnvironment } from "./environment.ts";
import { QuiesceGates } from "./gates.ts";
import { InflightTracker } from "./inflight.ts";
import { Lease } from "./lease.ts";
import { RegistrationEra } from "./registration-era.ts";
import type { ExportEntry, FromWorker, NbdListen, ToWorker } from "./thread-messages.ts";

/** What the agent's threads share: created by the main thread, attached to by each worker. */
export interface AgentMemory {
  tables: SharedTables;
  inflight: InflightTracker;
  gates: QuiesceGates;
  lease: Lease;
  era: RegistrationEra;
}

export function createAgentMemory(tables: SharedTables, env: AgentEnvironment): AgentMemory {
  return {
    tables,
    inflight: InflightTracker.create({ whileHolds: env.whileHolds, after: env.clock.after }),
    gates: QuiesceGates.create(),
    lease: Lease.create(env.clock),
    era: RegistrationEra.create(),
  };
}

/** The way to one worker thread and back; each direction delivers in order. */
export interface ThreadChannel {
  post(message: ToWorker): void;
  onMessage(handle: (message: FromWorker) => void): void;
}

export class WorkerThreads {
  private readonly channels: ThreadChannel[] = [];
  private exportsVersion = 0;
  private readonly exportWaiters = new Map<number, { pending: number; resolve(): void }>();
  private handleRequest: (channel: ThreadChannel, message: FromWorker) => void = () => undefined;

  constructor(private readonly memory: AgentMemory) {}

  /** Who handles the workers' messages (faults, commits and the like). */
  onRequest(handle: (channel: ThreadChannel, message: FromWorker) => void): void {
    this.handleRequest = handle;
  }

  /** Starts the worker behind `channel`; resolves once it serves, with the TCP port it listens on
   *  if it does. */
  start(channel: ThreadChannel, listen: NbdListen[]): Promise<number | undefined> {
    const started = new Promise<number | undefined>((resolve, reject) => {
      channel.onMessage((message) => {
        if (message.type === "listening") resolve(message.tcpPort);
        if (message.type === "failed") reject(new Error(message.message));
      });
    });
    channel.onMessage((message) => this.dispatch(channel, message));
    const { tables, inflight, gates, lease, era } = this.memory;
    this.channels.push(channel);
    channel.post({
      type: "init",
      thread: this.channels.length,
      tables: tables.handle(),
      inflight: inflight.buffer,
      gates: gates.buffer,
      lease: lease.buffer,
      era: era.buffer,
      clock: lease.now(),
      listen,
    });
    return started;
  }

  broadcast(message: ToWorker): void {
    for (const channel of this.channels) channel.post(message);
  }

  /** Sends what changed in the export list (new or replaced tables, dropped disks) to every
   *  worker; resolves once all of them use it, so a host that connects after the controller's
   *  command was answered finds the export. Only the change goes: thousands of exports are normal. */
  broadcastExports(change: { set?: ExportEntry[]; removed?: number[] }): Promise<void> {
    const version = ++this.exportsVersion;
    const applied = new Promise<void>((resolve) => this.exportWaiters.set(version, { pending: this.channels.length, resolve }));
    this.broadcast({ type: "exports", set: change.set ?? [], removed: change.removed ?? [], version });
    return applied;
  }

  private dispatch(channel: ThreadChannel, message: FromWorker): void {
    if (message.type !== "exports-applied") {
      this.handleRequest(channel, message);
      return;
    }
    const waiter = this.exportWaiters.get(message.version);
    if (waiter && --waiter.pending === 0) {
      this.exportWaiters.delete(message.version);
      waiter.resolve();
    }
  }
}
