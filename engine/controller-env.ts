// What the controller's logic runs on: time and timers, the control transport, the log's file
// I/O, the storage containers, and a few process-wide facts. A real controller gets the real ones
// (nodeControllerEnv); the deterministic simulator gives its simulated ones, so both run one code.
import { closeSync, existsSync, fsyncSync, ftruncateSync, openSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { type LeaseClock, monotonicClock } from "./agent-link.ts";
import { ContainerHealth } from "./container-health.ts";
import { failpoint, logIoWithFaults } from "./failpoints.ts";
import { fsyncDirSync, nodeLogIo, type LogIo } from "./log/log-io.ts";
import { ContainerFileIo, type ContainerIo } from "./pool.ts";
import type { Catalog } from "./catalog.ts";
import type { SnapshotContext } from "./snapshots.ts";
import type { Address } from "./util/address.ts";
import { RequestError } from "./wire/peer.ts";
import { listen, removeStaleSocket, type Stream } from "./wire/transport.ts";

/** Whether a storage container can be used (R14). */
export interface ContainerProbe {
  /** Why container `id` at `path` cannot be used, or null when it can. */
  problem(id: number, path: string): string | null;
  /** After a repair, whatever is at the path now is the container. */
  forget(id: number): void;
}

export interface ControlListener {
  /** The TCP port listened on, when the address asked for port 0. */
  readonly port?: number;
  stop(): void;
}

export interface ControllerEnv {
  clock: LeaseClock;
  /** Starts accepting control connections (agents and ctl). */
  listen(accept: (stream: Stream) => void): Promise<ControlListener>;
  /** The log's path and the I/O its commits and compactions do. */
  logPath: string;
  logIo: LogIo;
  /** The controller's own container I/O: zeroing reused segments, copy-on-write copies. */
  containerIo(catalog: Catalog): ContainerIo;
  containerProbe: ContainerProbe;
  /** Creates a container of `size` bytes at `path` if there is none; true when it made one (it
   *  then reads as zeros). */
  createContainer(path: string, size: number): boolean;
  /** Called at the steps of multi-step changes, where tests crash the controller. */
  failpoint(name: string): void;
  /** A name for a new controller run, different from every earlier one. */
  newRunId(): number;
  say(line: string): void;
  /** The simulator holds some answers to agents back, so that they arrive after commands sent
   *  later (agents must apply changes by their numbers, not in the order they arrive). */
  beforeAnswer?(op: string): Promise<void>;
  /** The simulator's deliberate breaks of the table-change context (canaries). */
  adjustContext?(context: SnapshotContext): SnapshotContext;
}

/** The real environment: sockets, files, timers of this process. */
export function nodeControllerEnv(options: { control: Address; logPath: string; say(line: string): void }): ControllerEnv {
  return {
    clock: monotonicClock,
    listen: async (accept) => {
      if (options.control.kind === "unix") await removeStaleSocket(options.control.path);
      const listener = listen(options.control, accept);
      return { port: (listener as { port?: number }).port, stop: () => listener.stop(true) };
    },
    logPath: options.logPath,
    logIo: logIoWithFaults(nodeLogIo),
    containerIo: (catalog) => new ContainerFileIo(catalog),
    containerProbe: new ContainerHealth(),
    createContainer: createContainerFile,
    failpoint,
    newRunId,
    say: options.say,
  };
}

/** A name for this controller run, so agents can tell a commit of it from one of a later run. */
function newRunId(): number {
  const [high, low] = crypto.getRandomValues(new Uint32Array(2));
  return (high! & 0x1fffff) * 2 ** 32 + low!;
}

/** Creates a sparse container file of `size` bytes; returns false when the path already existed.
 *  Its directory must exist: a mistyped path must not become a new directory tree. */
function createContainerFile(path: string, size: number): boolean {
  if (existsSync(path)) {
    const stat = statSync(path);
    if (stat.isFile() && stat.size < size) {
      throw new RequestError("EINVAL", `Cannot add ${path}: the file has ${stat.size} bytes, fewer than the ${size} asked for`);
    }
    return false;
  }
  const directory = dirname(path);
  if (!existsSync(directory) || !statSync(directory).isDirectory()) {
    throw new RequestError("ENOENT", `Cannot add ${path}: directory ${directory} does not exist`);
  }
  const fd = openSync(path, "wx");
  try {
    ftruncateSync(fd, size);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  fsyncDirSync(path);
  return true;
}
