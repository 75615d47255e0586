// The NBD servers the benchmarks compare: ours (`ctl up`), `nbdkit file`, `qemu-nbd -f raw`,
// `nbdkit memory` and `nbdkit null`. Each one is started in a fresh directory, serves one export named
// EXPORT_NAME on a unix socket or a loopback TCP port, and (but for memory and null) is backed by a sparse
// file of the disk size that the benchmark fills through NBD before measuring (so every backing file ends
// up fully written and hot in the page cache).
import { closeSync, openSync, truncateSync } from "node:fs";
import { join, resolve } from "node:path";
import { type Endpoint, LOOPBACK, ManagedProcess, freeTcpPort, runCommand, waitForEndpoint } from "./processes.ts";

export const REPO = resolve(import.meta.dir, "..");
export const CTL = join(REPO, "ctl/main.ts");
export const EXPORT_NAME = "bench";
/** Bound on a server's start (process up to accepting NBD connections). */
const READY_TIMEOUT_MS = 30_000;
/** Bound on one `ctl` command. */
const CTL_TIMEOUT_MS = 30_000;
/** Bound on `qemu-img create`. */
const QEMU_IMG_TIMEOUT_MS = 30_000;

export type Transport = "unix" | "tcp";
export const TRANSPORTS: readonly Transport[] = ["unix", "tcp"];

export type ServerId = "ours" | "nbdkit-file" | "qemu-nbd" | "nbdkit-memory" | "nbdkit-null";
export const SERVER_IDS: readonly ServerId[] = ["ours", "nbdkit-file", "qemu-nbd", "nbdkit-memory", "nbdkit-null"];

export interface StartOptions {
  /** A fresh directory for this server's files and sockets. */
  dir: string;
  transport: Transport;
  diskBytes: number;
  verbose: boolean;
}

export interface RunningServer {
  id: ServerId;
  uri: string;
  command: string[];
  process: ManagedProcess;
  stop(): Promise<void>;
}

export interface ServerSpec {
  id: ServerId;
  /** How it is set up, for the report. */
  setup: string;
  start(options: StartOptions): Promise<RunningServer>;
}

export function nbdUri(endpoint: Endpoint, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (endpoint.kind === "unix") return `nbd+unix:///${name}?socket=${endpoint.path}`;
  return `nbd://${endpoint.host}:${endpoint.port}/${name}`;
}

async function pickEndpoint(options: StartOptions, name: string): Promise<Endpoint> {
  if (options.transport === "unix") return { kind: "unix", path: join(options.dir, `${name}.sock`) };
  return { kind: "tcp", host: LOOPBACK, port: await freeTcpPort() };
}

function createSparseFile(path: string, bytes: number): void {
  closeSync(openSync(path, "w"));
  truncateSync(path, bytes);
}

/** Starts `command`, waits until `endpoint` accepts connections, and stops the process if that fails. */
async function startListening(id: ServerId, command: string[], endpoint: Endpoint, options: StartOptions): Promise<RunningServer> {
  const process = ManagedProcess.start(id, command, { cwd: options.dir, verbose: options.verbose });
  try {
    await waitForEndpoint(endpoint, process, READY_TIMEOUT_MS);
  } catch (error) {
    await process.stop();
    throw error;
  }
  return { id, uri: nbdUri(endpoint, EXPORT_NAME), command, process, stop: () => process.stop() };
}

function nbdkitListenArgs(endpoint: Endpoint): string[] {
  return endpoint.kind === "unix" ? ["--unix", endpoint.path] : ["-i", endpoint.host, "-p", String(endpoint.port)];
}

function qemuNbdListenArgs(endpoint: Endpoint): string[] {
  return endpoint.kind === "unix" ? ["--socket", endpoint.path] : ["-b", endpoint.host, "-p", String(endpoint.port)];
}

function ctlAddress(endpoint: Endpoint): string {
  return endpoint.kind === "unix" ? `unix:${endpoint.path}` : `${endpoint.host}:${endpoint.port}`;
}

const nbdkitFile: ServerSpec = {
  id: "nbdkit-file",
  setup: "`nbdkit file`, default cache (page cache, no O_DIRECT) and threads",
  async start(options) {
    const image = join(options.dir, "nbdkit-file.img");
    createSparseFile(image, options.diskBytes);
    const endpoint = await pickEndpoint(options, "nbdkit-file");
    const command = ["nbdkit", "--exit-with-parent", "-f", ...nbdkitListenArgs(endpoint), "file", image];
    return startListening("nbdkit-file", command, endpoint, options);
  },
};

/** The raw image the `qemu-nbd` server serves out of its directory. */
export function qemuNbdImage(dir: string): string {
  return join(dir, "qemu-nbd.img");
}

/** `qemu-nbd -f FORMAT` serving `image`, with the flags every qemu-nbd run here shares. */
async function startQemuNbd(options: StartOptions, format: "raw" | "qcow2", image: string): Promise<RunningServer> {
  const endpoint = await pickEndpoint(options, "qemu-nbd");
  // --shared lets the readiness probe's connection overlap fio's; it does not change the data path.
  const command = ["qemu-nbd", "-f", format, "-t", "-x", EXPORT_NAME, "--cache=writeback", "--aio=threads", "--shared=8"];
  command.push(...qemuNbdListenArgs(endpoint), image);
  return startListening("qemu-nbd", command, endpoint, options);
}

const qemuNbd: ServerSpec = {
  id: "qemu-nbd",
  setup: "`qemu-nbd -f raw --cache=writeback --aio=threads` (page cache like the others; flushes only on NBD FLUSH)",
  async start(options) {
    const image = qemuNbdImage(options.dir);
    createSparseFile(image, options.diskBytes);
    return startQemuNbd(options, "raw", image);
  },
};

export const QEMU_OVERLAY_CLUSTER_BYTES = 65_536;

/**
 * A fresh qcow2 overlay (64 KiB clusters) in `options.dir` over the raw image `baseImage`, served by
 * qemu-nbd like the raw server: its first write to each cluster copies the rest of the cluster from the
 * base. Its export is announced under EXPORT_NAME too.
 */
export async function startQemuNbdOverlay(options: StartOptions, baseImage: string): Promise<RunningServer> {
  const overlay = join(options.dir, "overlay.qcow2");
  const create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", baseImage, "-F", "raw", "-o", `cluster_size=${QEMU_OVERLAY_CLUSTER_BYTES}`, overlay];
  const result = await runCommand(create, { cwd: options.dir, timeoutMs: QEMU_IMG_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`${create.join(" ")} failed (${result.timedOut ? "timed out" : `exit ${result.code}`}): ${result.stderr.trim()}`);
  return startQemuNbd(options, "qcow2", overlay);
}

const nbdkitMemory: ServerSpec = {
  id: "nbdkit-memory",
  setup: "`nbdkit memory` (a sparse array in RAM, filled like the others): storage without a file system or page cache",
  async start(options) {
    const endpoint = await pickEndpoint(options, "nbdkit-memory");
    const command = ["nbdkit", "--exit-with-parent", "-f", ...nbdkitListenArgs(endpoint), "memory", `size=${options.diskBytes}`];
    return startListening("nbdkit-memory", command, endpoint, options);
  },
};

const nbdkitNull: ServerSpec = {
  id: "nbdkit-null",
  setup: "`nbdkit null` (reads return zeros, writes are dropped): the limit of the NBD pipeline and fio",
  async start(options) {
    const endpoint = await pickEndpoint(options, "nbdkit-null");
    const command = ["nbdkit", "--exit-with-parent", "-f", ...nbdkitListenArgs(endpoint), "null", `size=${options.diskBytes}`];
    return startListening("nbdkit-null", command, endpoint, options);
  },
};

/** Runs `ctl --control ... ARGS...` against `instance` to completion and returns its stdout; throws with its stderr on failure. */
export async function ctl(instance: Pick<OursInstance, "controlArgs">, args: string[]): Promise<string> {
  const result = await runCommand([process.execPath, CTL, ...instance.controlArgs, ...args], { cwd: REPO, timeoutMs: CTL_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`ctl ${args.join(" ")} failed (${result.timedOut ? "timed out" : `exit ${result.code}`}): ${result.stderr.trim()}`);
  return result.stdout;
}

/** A running `ctl up` (controller + one agent) with no disk of ours yet. */
export interface OursInstance {
  /** The controller's address, for ControllerClient.open. */
  control: string;
  /** The control secret's file (the controller creates it at start). */
  secretFile: string;
  /** ctl's global options that reach this controller. */
  controlArgs: string[];
  /** Where the agent serves NBD. */
  endpoint: Endpoint;
  command: string[];
  process: ManagedProcess;
  /** Waits until the agent has announced the export `name` (after line `after`, a lineCount) and returns its URI. */
  announced(name: string, after: number): Promise<string>;
  stop(): Promise<void>;
}

/** `ctl up` in `options.dir` with a default container of `lunBytes` (sparse); resolves once it is ready. */
export async function startOursInstance(options: StartOptions, lunBytes: number): Promise<OursInstance> {
  const control = `unix:${join(options.dir, "ours-control.sock")}`;
  const secretFile = join(options.dir, "ours-control.secret");
  const controlArgs = ["--control", control, "--secret-file", secretFile];
  const endpoint = await pickEndpoint(options, "ours-nbd");
  const command = [process.execPath, CTL, ...controlArgs, "up", "--data", join(options.dir, "ours-data")];
  command.push("--nbd", ctlAddress(endpoint), "--lun-size", String(lunBytes));
  const process_ = ManagedProcess.start("ours", command, { cwd: REPO, verbose: options.verbose });
  try {
    await process_.waitForLine(/^ready:/, READY_TIMEOUT_MS);
  } catch (error) {
    await process_.stop();
    throw error;
  }
  return {
    control,
    secretFile,
    controlArgs,
    endpoint,
    command,
    process: process_,
    async announced(name, after) {
      const line = await process_.waitForLine(new RegExp(`^nbd[^ ]*/${escapeRegExp(encodeURIComponent(name))}(?:\\?|$)`), READY_TIMEOUT_MS, after);
      await waitForEndpoint(endpoint, process_, READY_TIMEOUT_MS);
      return line.trim();
    },
    stop: () => process_.stop(),
  };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** `ctl up` with one container of exactly the disk size, then one thin disk announced under EXPORT_NAME. */
async function startOurs(options: StartOptions): Promise<RunningServer> {
  const instance = await startOursInstance(options, options.diskBytes);
  try {
    const linesBefore = instance.process.lineCount;
    await ctl(instance, ["disk", "create", EXPORT_NAME, "--size", String(options.diskBytes)]);
    const uri = await instance.announced(EXPORT_NAME, linesBefore);
    return { id: "ours", uri, command: instance.command, process: instance.process, stop: () => instance.stop() };
  } catch (error) {
    await instance.stop();
    throw error;
  }
}

const ours: ServerSpec = {
  id: "ours",
  setup: "`ctl up` (controller + agent, default workers), one container of the disk size; a thin disk with 1 MiB segments, fully mapped by the fill",
  start: startOurs,
};

export const SERVERS: Record<ServerId, ServerSpec> = {
  ours,
  "nbdkit-file": nbdkitFile,
  "qemu-nbd": qemuNbd,
  "nbdkit-memory": nbdkitMemory,
  "nbdkit-null": nbdkitNull,
};
