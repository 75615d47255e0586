// Messages between the agent's main thread and its worker threads (postMessage, same process).
import type { FaultOp } from "../engine/wire/messages.ts";

/** What a worker needs to serve one export. */
export interface ExportEntry {
  disk: number;
  name: string;
  slot: number;
  generation: number;
  sizeBytes: number;
  segmentShift: number;
  readOnly: boolean;
}

export interface ContainerEntry {
  id: number;
  path: string;
  /** Bumped whenever the controller names the container again: workers then reopen its file. */
  epoch: number;
}

export type NbdListen =
  | { kind: "tcp"; host: string; port: number; reusePort: boolean }
  | { kind: "unix"; path: string };

export type ToWorker =
  | {
      type: "init";
      thread: number;
      tables: unknown;
      inflight: SharedArrayBuffer;
      gates: SharedArrayBuffer;
      lease: SharedArrayBuffer;
      era: SharedArrayBuffer;
      /** The main thread's performance.now() when it sent this (see Lease). */
      clock: number;
      listen: NbdListen[];
    }
  /** Gates were opened: I/O held by a quiesce looks again. */
  | { type: "activate" }
  /** The export list changed: `set` are new or replaced tables (by disk), `removed` disks went. */
  | { type: "exports"; set: ExportEntry[]; removed: number[]; version: number }
  | { type: "containers"; containers: ContainerEntry[] }
  | { type: "resume"; request: number; errno?: "EIO" | "ENOSPC" | "EPERM" | "EINVAL" }
  | { type: "stop" };

export type FromWorker =
  | { type: "listening"; tcpPort?: number }
  | { type: "exports-applied"; version: number }
  | { type: "failed"; message: string }
  /** A storage I/O failed (the host got EIO): the controller is told (R14). */
  | { type: "storage-error"; container: number; message: string }
  | {
      type: "fault";
      request: number;
      disk: number;
      op: FaultOp;
      first: number;
      last: number;
      state: number;
      offset: number;
      length: number;
    }
  /** A host connection opened (+1) or closed (-1) an export of `disk`. */
  | { type: "connections"; disk: number; delta: 1 | -1 }
  /** A FLUSH of `disk`: the mapping changes its writes relied on must be committed first. */
  | { type: "commit"; request: number; disk: number; era: number }
  /** The table was replaced or deleted under a lookup: answer once the worker has the new exports. */
  | { type: "sync"; request: number }
  | { type: "stopped" };
