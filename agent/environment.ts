// What the agent's logic runs on, given to it as a parameter: its clock and timers, its
// connection to the controller, the raw calls on container files and how its threads serve hosts.
// Production passes real timers, sockets, files and worker threads; a simulator passes its own, so
// one code path runs in both.
import { monotonicClock, type LeaseClock } from "../engine/agent-link.ts";
import type { Address } from "../engine/util/address.ts";
import { connect, type Stream } from "../engine/wire/transport.ts";
import { atomicWaits } from "./inflight.ts";
import type { CommitSender, MappedBackend } from "./mapped-backend.ts";
import type { FileCalls } from "./storage.ts";
import type { writeChange } from "./table-edits.ts";
import type { NbdListen } from "./thread-messages.ts";

export interface AgentClock extends LeaseClock {
  /** As `after`, but the timer does not keep a stopping process alive. */
  afterUnref(ms: number, run: () => void): () => void;
  /** Resolves after `ms`; unref'd as afterUnref. */
  sleep(ms: number): Promise<void>;
}

/** Milestones of the agent, for whoever watches it (a simulator counts them). */
export type AgentEvent = "registered" | "lease expired" | "mapping changes lost";

/** The main thread's environment. */
export interface AgentEnvironment {
  readonly clock: AgentClock;
  /** Opens a connection to the controller. */
  connect(address: Address): Promise<Stream>;
  /** How a drain waits for a count of I/O in flight to change (inflight.ts), or a while anyway. */
  whileHolds(cells: Int32Array, index: number, value: number): Promise<unknown>;
  /** This process's name for itself in hello: new for every process. */
  readonly instance: string;
  observe?(event: AgentEvent): void;
  /** How a fault's answer goes into its table (writeChange when not given). A simulator wraps it
   *  to count the answers refused, or replaces it as a deliberate break. */
  readonly writeFaultAnswer?: typeof writeChange;
}

/** A worker thread's environment. */
export interface WorkerEnvironment {
  /** The clock the lease is read on, on this thread. */
  readonly clock: Pick<LeaseClock, "now">;
  readonly files: FileCalls;
  /** Requests of at least this many bytes move their data on the I/O pool (mapped-backend.ts). */
  readonly poolTransferBytesMin: number;
  /** Starts serving `backend` to hosts on `listen`; resolves to the TCP port listened on, if any,
   *  and what stops serving. */
  serve(backend: MappedBackend, listen: NbdListen[]): Promise<{ tcpPort?: number; close(): Promise<void> }>;
  /** A simulator's deliberate breaks: how a FLUSH or a FUA write has the mapping changes it
   *  relied on committed, given how it is done. */
  readonly adjustCommit?: (commit: CommitSender, by: "flush" | "fua") => CommitSender;
}

export const realClock: AgentClock = {
  ...monotonicClock,
  afterUnref: (ms, run) => {
    const timer = setTimeout(run, ms).unref();
    return () => clearTimeout(timer);
  },
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref()),
};

export function productionEnvironment(): AgentEnvironment {
  return {
    clock: realClock,
    connect,
    whileHolds: atomicWaits.whileHolds,
    instance: crypto.randomUUID(),
  };
}
