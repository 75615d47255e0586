/**
 * The NBD server under test, in one place. Every conformance test gets its server from
 * startNbdTarget(), and every conformance file runs its suite once per target kind
 * (NBD_TARGET_KINDS):
 *
 * - "fixture": test/fixtures/memory-nbd-server.ts as a child process. It prints `READY <uri>` when
 *   it accepts connections and answers control lines on stdin (STATE, STATS, CLOSE). It offers
 *   the special exports "ro", "faulty", "sparse", "slow", "extents" and "big".
 * - "agent": the real system, `ctl up` (controller + mapping agent) on a fresh data directory
 *   with a 1 GiB storage container, and thin disks created through `ctl disk create` so that the
 *   exports look like the fixture's: "disk" (16 MiB, the default export), "sparse" and "slow"
 *   (1 MiB each) and "big" (48 MiB). There are no control lines; `waitIdle` watches the agent's
 *   sockets in /proc/net instead.
 *
 * What a kind cannot do is listed in LACKS with the reason; tests that need such a feature are
 * registered through testWith(kind, ...features), which skips them there and says why in the
 * test's name. stop() always kills and reaps the child; call it in afterAll/finally.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, test } from "bun:test";
import type { Subprocess } from "bun";
import type { MemoryExportConfig } from "../fixtures/memory-backend.ts";
import { Child, ctl, forEachLine, spawnCtl } from "./processes.ts";
import { type Endpoint, NBD, RawNbdClient } from "./raw-nbd-client.ts";

export type NbdTargetKind = "fixture" | "agent";

/**
 * The kinds every conformance file runs against; NBD_TARGETS=fixture (or =agent) narrows it,
 * e.g. to debug one of them.
 */
export const NBD_TARGET_KINDS: NbdTargetKind[] = (() => {
  const all: NbdTargetKind[] = ["fixture", "agent"];
  const wanted = process.env.NBD_TARGETS?.split(",").map((s) => s.trim()).filter(Boolean);
  if (!wanted || wanted.length === 0) return all;
  for (const w of wanted) if (!all.includes(w as NbdTargetKind)) throw new Error(`NBD_TARGETS: unknown kind ${w}`);
  return all.filter((k) => wanted.includes(k));
})();

/** Exports beyond the default one. "slow" is one whose I/O may complete asynchronously. */
export type ExportRole = "ro" | "faulty" | "sparse" | "slow" | "extents" | "big";

/** Features a test may need that not every kind has. */
export type TargetFeature =
  | "ro"
  | "faulty"
  | "extents"
  /** STATS/STATE/CLOSE control lines and deterministic injected delays. */
  | "control"
  /** Export descriptions (NBD_INFO_DESCRIPTION, NBD_REP_SERVER's description). */
  | "descriptions"
  /** Custom export lists (sizes, delays, a persistence file) through `exports`. */
  | "exportConfig"
  | "multiConnSwitch"
  | "handshakeTimeout"
  /** A storage pool that can be filled, so that a real write gets ENOSPC (`lunSize`). */
  | "poolLimit"
  /** A graceful shutdown on SIGTERM, as a service manager would stop the server. */
  | "sigterm"
  /** Data on disk that a restarted server serves again (AgentTarget.restart). */
  | "restart";

/** What each kind cannot do, and why; a test needing one of these is skipped there. */
export const LACKS: Record<NbdTargetKind, Partial<Record<TargetFeature, string>>> = {
  fixture: {
    poolLimit: "the memory fixture has no storage pool (its 'faulty' export injects ENOSPC instead)",
    sigterm: "the fixture has no signal handling; its shutdown is driven by the CLOSE control line (the close() tests)",
    restart: "the fixture keeps its exports in memory; its kill -9 test uses a persistence file (exportConfig) instead",
  },
  agent: {
    faulty:
      "the real system cannot inject backend errors at chosen offsets (its EIO/ENOSPC paths: agent-commands.test.ts, pool-full.test.ts and the full-pool test in nbd-commands.test.ts)",
    extents:
      "block status comes from the mapping table in whole segments (>= 64 KiB), so 2^20 extents would need a 64 GiB disk of alternating allocation",
    control: "ctl up has no control lines (backend call counts, a CLOSE that reports completion) and no injectable delays",
    descriptions: "the real system's exports carry no description",
    exportConfig: "the real system's exports are thin disks made by ctl disk create; they cannot be configured like the fixture's",
    multiConnSwitch: "ctl up always advertises CAN_MULTI_CONN; there is no switch",
    handshakeTimeout: "ctl up has no handshake-timeout option (the NBD layer's 30 s default applies)",
  },
};

/** Why `kind` cannot run a test needing `features`, or undefined when it can. */
export function lacks(kind: NbdTargetKind, ...features: TargetFeature[]): string | undefined {
  const reasons = features.map((f) => LACKS[kind][f]).filter((r): r is string => r !== undefined);
  return reasons.length > 0 ? reasons.join("; ") : undefined;
}

type TestBody = () => unknown;

/**
 * `test` when `kind` has every feature; otherwise registers the test as skipped, with the reason
 * in its name so that it shows in every test report.
 */
export function testWith(kind: NbdTargetKind, ...features: TargetFeature[]) {
  const reason = lacks(kind, ...features);
  return (name: string, body: TestBody, timeout?: number): void => {
    if (reason === undefined) test(name, body as () => Promise<void>, timeout);
    else test.skip(`${name} [skipped on ${kind}: ${reason}]`, body as () => Promise<void>, timeout);
  };
}

/**
 * Waits (bounded) for a server log line containing `text`: log lines arrive through a pipe, after
 * the reply that caused them. Both kinds must log protocol violations (agent/nbd/server.ts: `log`
 * takes "bad magic from a client, backend failures").
 */
export async function expectLogged(target: NbdTarget, text: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!target.logs.some((line) => line.includes(text))) {
    if (Date.now() >= deadline) {
      throw new Error(`no server log line containing "${text}" within ${timeoutMs} ms; the ${target.kind} target logged:\n${target.logs.join("\n")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10)); // poll the condition, bounded by the deadline
  }
}

export interface NbdTargetOptions {
  /** Which server (default "fixture"). */
  kind?: NbdTargetKind;
  transport?: "unix" | "tcp";
  /** Exports of the memory fixture (default: its STANDARD_EXPORTS). Fixture only. */
  exports?: MemoryExportConfig[];
  /** Serve from this many worker threads sharing one TCP port (implies tcp). */
  workers?: number;
  /** Fixture only. */
  multiConn?: boolean;
  /** Fixture only. */
  graceMs?: number;
  /** Fixture only. */
  handshakeTimeoutMs?: number;
  /** Agent only: size of the storage container (ctl up --lun-size), default 1G. */
  lunSize?: string;
}

export interface NbdTarget {
  readonly kind: NbdTargetKind;
  /** URI of the default export. */
  readonly uri: string;
  readonly endpoint: Endpoint;
  readonly unixPath: string | undefined;
  readonly host: string | undefined;
  readonly port: number | undefined;
  /** A writable export the tests may scribble on, and its size. */
  readonly exportName: string;
  readonly sizeBytes: number;
  /** Every export, in the order NBD_OPT_LIST gives them. */
  readonly exportNames: string[];
  /** True when this is the memory fixture (its special exports and control lines exist). */
  readonly fixture: boolean;
  /** Server log lines (fixture: stderr `LOG ...`; agent: everything ctl up printed). */
  readonly logs: string[];
  /** The export playing `role` here; throws when this kind has none (see LACKS). */
  exportFor(role: ExportRole): string;
  uriFor(exportName: string): string;
  connect(): Promise<RawNbdClient>;
  /** Sends a control line and returns the answer line. Fixture only. */
  control(line: string): Promise<string>;
  /** The next line the fixture prints (e.g. `CLOSED` after `CLOSE`), bounded. Fixture only. */
  nextLine(timeoutMs?: number): Promise<string>;
  /**
   * Waits (bounded) until the server has no connection left, or only `remaining` ones that a test
   * keeps open on purpose (fixture: and no more open export handles than that; agent: counted as
   * server-side NBD sockets in /proc/net, as export handles cannot be seen from outside).
   */
  waitIdle(options?: { timeoutMs?: number; remaining?: number }): Promise<void>;
  /** A fresh client can negotiate and read: the server survived whatever came before. */
  assertServes(): Promise<void>;
  /** Kills the server with a signal and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Kills (if still running) and reaps the server, removes its temp dir. */
  stop(): Promise<void>;
  readonly exited: Promise<number>;
}

export async function startNbdTarget(options: NbdTargetOptions = {}): Promise<NbdTarget> {
  if ((options.kind ?? "fixture") === "agent") return startAgentTarget(options);
  return startFixtureTarget(options);
}

const FIXTURE = join(import.meta.dir, "../fixtures/memory-nbd-server.ts");
const READY_TIMEOUT_MS = 15_000;
const CONTROL_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 10_000;

/** What both kinds share: the endpoint, URIs, clients and the liveness probe. */
abstract class TargetBase {
  abstract readonly kind: NbdTargetKind;
  abstract readonly exportName: string;
  abstract readonly sizeBytes: number;
  endpoint!: Endpoint;

  protected setUri(uri: string): void {
    const parsed = new URL(uri);
    if (parsed.protocol === "nbd+unix:") this.endpoint = { unixPath: parsed.searchParams.get("socket")! };
    else if (parsed.protocol === "nbd:") this.endpoint = { host: parsed.hostname, port: Number(parsed.port) };
    else throw new Error(`not an NBD URI: ${uri}`);
  }

  get fixture(): boolean {
    return this.kind === "fixture";
  }
  get unixPath(): string | undefined {
    return this.endpoint.unixPath;
  }
  get host(): string | undefined {
    return this.endpoint.host;
  }
  get port(): number | undefined {
    return this.endpoint.port;
  }

  uriFor(exportName: string): string {
    const name = encodeURIComponent(exportName);
    if (this.endpoint.unixPath !== undefined) return `nbd+unix:///${name}?socket=${this.endpoint.unixPath}`;
    return `nbd://${this.endpoint.host}:${this.endpoint.port}/${name}`;
  }

  connect(): Promise<RawNbdClient> {
    return RawNbdClient.connect(this.endpoint);
  }

  async assertServes(): Promise<void> {
    const client = await this.connect();
    try {
      const { size } = await client.negotiate(this.exportName);
      if (size !== BigInt(this.sizeBytes)) throw new Error(`fresh client sees size ${size}`);
      await client.sendRequest({ type: NBD.CMD_READ, cookie: 77n, offset: 0n, length: 512 });
      const reply = await client.readSimpleReply(512);
      if (reply.error !== 0 || reply.cookie !== 77n) throw new Error(`fresh client read failed: ${reply.error}`);
      await client.disconnect();
    } finally {
      client.close();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The memory fixture

const FIXTURE_ROLES: Record<ExportRole, string> = {
  ro: "ro",
  faulty: "faulty",
  sparse: "sparse",
  slow: "slow",
  extents: "extents",
  big: "big",
};

async function startFixtureTarget(options: NbdTargetOptions): Promise<NbdTarget> {
  if (options.lunSize !== undefined) throw new Error("the memory fixture has no storage pool (lunSize)");
  const dir = mkdtempSync(join(tmpdir(), "nbd-target-"));
  const transport = options.workers ? "tcp" : (options.transport ?? "unix");
  const args = [process.execPath, FIXTURE];
  if (transport === "unix") args.push("--unix", join(dir, "nbd.sock"));
  else args.push("--tcp", "127.0.0.1");
  if (options.exports) args.push("--config", JSON.stringify(options.exports));
  if (options.workers) args.push("--workers", String(options.workers));
  if (options.multiConn === false) args.push("--no-multi-conn");
  if (options.graceMs !== undefined) args.push("--grace", String(options.graceMs));
  if (options.handshakeTimeoutMs !== undefined) args.push("--handshake-timeout", String(options.handshakeTimeoutMs));

  const child = Bun.spawn(args, { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  const stdout = new LineReader(child.stdout);
  const logs: string[] = [];
  void forEachLine(child.stderr, (line) => logs.push(line.startsWith("LOG ") ? line.slice(4) : line));
  let ready: string;
  try {
    ready = await stdout.next(READY_TIMEOUT_MS);
  } catch (error) {
    child.kill("SIGKILL");
    await child.exited;
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`NBD fixture did not get ready: ${String(error)}\n${logs.join("\n")}`);
  }
  if (!ready.startsWith("READY ")) {
    child.kill("SIGKILL");
    await child.exited;
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`unexpected first line from the fixture: ${ready}`);
  }
  const uri = ready.slice("READY ".length);
  const exports = options.exports ?? (await import("../fixtures/memory-nbd-server.ts")).STANDARD_EXPORTS;
  const first = exports[0]!;
  return new FixtureTarget(child, stdout, logs, dir, uri, first.name, first.sizeBytes, exports.map((e) => e.name));
}

class FixtureTarget extends TargetBase implements NbdTarget {
  readonly kind = "fixture" as const;
  readonly exited: Promise<number>;
  private stopped = false;

  constructor(
    private readonly child: Subprocess<"pipe", "pipe", "pipe">,
    private readonly stdout: LineReader,
    readonly logs: string[],
    private readonly dir: string,
    readonly uri: string,
    readonly exportName: string,
    readonly sizeBytes: number,
    readonly exportNames: string[],
  ) {
    super();
    this.exited = child.exited;
    this.setUri(uri);
  }

  exportFor(role: ExportRole): string {
    const name = FIXTURE_ROLES[role];
    if (!this.exportNames.includes(name)) throw new Error(`this fixture was started without the "${name}" export`);
    return name;
  }

  async control(line: string): Promise<string> {
    this.child.stdin.write(`${line}\n`);
    await this.child.stdin.flush();
    return this.stdout.next(CONTROL_TIMEOUT_MS);
  }

  nextLine(timeoutMs = CONTROL_TIMEOUT_MS): Promise<string> {
    return this.stdout.next(timeoutMs);
  }

  async waitIdle({ timeoutMs = IDLE_TIMEOUT_MS, remaining = 0 } = {}): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let state = "";
    while (Date.now() < deadline) {
      state = await this.control("STATE");
      if (state === `STATE ${remaining} ${remaining}`) return;
      await new Promise((resolve) => setTimeout(resolve, 10)); // poll the condition, bounded by the deadline
    }
    throw new Error(`server not idle: ${state}`);
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    this.child.kill(signal);
    await this.child.exited;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.child.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The real system: ctl up

/**
 * The disks an agent target creates, in this order (the first is the default export). "disk"
 * matches the fixture's default export; "sparse" and "slow" are fresh thin disks: every range
 * reads as zeroes and reports HOLE|ZERO until written, and the first I/O to each segment after
 * `ctl up` started waits for a fault answered by the controller (the agent's tables are
 * volatile), so it completes asynchronously like the fixture's "slow" export, minus the fixed
 * delays. "big" is large enough for maximum-payload requests.
 */
export const AGENT_DISKS: readonly { name: string; size: string; sizeBytes: number; segmentSize?: string; protect?: boolean }[] = [
  { name: "disk", size: "16M", sizeBytes: 16 * 1024 * 1024, segmentSize: "64K" },
  { name: "sparse", size: "1M", sizeBytes: 1024 * 1024, segmentSize: "64K" },
  { name: "slow", size: "1M", sizeBytes: 1024 * 1024, segmentSize: "64K" },
  { name: "big", size: "48M", sizeBytes: 48 * 1024 * 1024 },
  // A protected disk is exported read-only.
  { name: "ro", size: "1M", sizeBytes: 1024 * 1024, segmentSize: "64K", protect: true },
];

const AGENT_ROLES: Partial<Record<ExportRole, string>> = { ro: "ro", sparse: "sparse", slow: "slow", big: "big" };

/** Starts `ctl up` in a temp dir and creates AGENT_DISKS. */
export async function startAgentTarget(options: NbdTargetOptions = {}): Promise<AgentTarget> {
  const fixtureOnly: [keyof NbdTargetOptions, TargetFeature][] = [
    ["exports", "exportConfig"],
    ["multiConn", "multiConnSwitch"],
    ["handshakeTimeoutMs", "handshakeTimeout"],
    ["graceMs", "control"],
  ];
  for (const [option, feature] of fixtureOnly) {
    if (options[option] !== undefined) throw new Error(`agent target: no ${option}: ${LACKS.agent[feature]}`);
  }
  const dir = mkdtempSync(join(tmpdir(), "nbd-agent-"));
  const transport = options.workers ? "tcp" : (options.transport ?? "unix");
  const args = ["--control", `unix:${join(dir, "control.sock")}`, "up", "--data", join(dir, "data")];
  args.push("--nbd", transport === "unix" ? `unix:${join(dir, "nbd.sock")}` : "127.0.0.1:0");
  args.push("--lun-size", options.lunSize ?? "1G");
  if (options.workers) args.push("--workers", String(options.workers));
  const target = new AgentTarget(dir, args);
  try {
    await target.boot(true);
  } catch (error) {
    await target.stop();
    throw error;
  }
  return target;
}

export class AgentTarget extends TargetBase implements NbdTarget {
  readonly kind = "agent" as const;
  readonly exportName = AGENT_DISKS[0]!.name;
  readonly sizeBytes = AGENT_DISKS[0]!.sizeBytes;
  readonly exportNames = AGENT_DISKS.map((d) => d.name);
  /** The URI `ctl up` announced for each disk. */
  readonly announced = new Map<string, string>();
  private readonly children: Child[] = [];
  private stopped = false;

  constructor(
    readonly dir: string,
    private readonly args: string[],
  ) {
    super();
  }

  /** The running `ctl up`. */
  get child(): Child {
    return this.children.at(-1)!;
  }
  get uri(): string {
    return this.announced.get(this.exportName)!;
  }
  get logs(): string[] {
    return this.children.flatMap((c) => c.lines);
  }
  get exited(): Promise<number> {
    return this.child.exited;
  }
  get controlAddress(): string {
    return `unix:${join(this.dir, "control.sock")}`;
  }

  /** Spawns `ctl up`, waits for `ready:`, creates the disks (first boot) or waits for their URIs. */
  async boot(create: boolean): Promise<void> {
    const child = spawnCtl(this.args, "ctl up");
    this.children.push(child);
    await child.waitForLine(/^ready:/, READY_TIMEOUT_MS);
    this.announced.clear();
    for (const disk of AGENT_DISKS) {
      const seen = create ? child.lines.length : 0;
      if (create) {
        const extra = disk.segmentSize ? ["--segment-size", disk.segmentSize] : [];
        const created = await ctl(["--control", this.controlAddress, "disk", "create", disk.name, "--size", disk.size, ...extra]);
        if (created.code !== 0) throw new Error(`ctl disk create ${disk.name} failed: ${created.stderr}`);
        if (disk.protect) {
          const protectedNow = await ctl(["--control", this.controlAddress, "snapshot", "protect", disk.name]);
          if (protectedNow.code !== 0) throw new Error(`ctl snapshot protect ${disk.name} failed: ${protectedNow.stderr}`);
        }
      }
      // One URI line per disk on stdout: nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME.
      const name = encodeURIComponent(disk.name).replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      const line = await child.waitForLine(new RegExp(`^(nbd\\+unix:///${name}\\?socket=|nbd://[^/]+/${name}$)`), READY_TIMEOUT_MS, seen);
      this.announced.set(disk.name, line);
    }
    this.setUri(this.uri);
  }

  exportFor(role: ExportRole): string {
    const name = AGENT_ROLES[role];
    if (name === undefined) throw new Error(`the agent target has no "${role}" export: ${LACKS.agent[role as TargetFeature] ?? ""}`);
    return name;
  }

  control(line: string): Promise<string> {
    return Promise.reject(new Error(`agent target: no control line ${line}: ${LACKS.agent.control}`));
  }

  nextLine(): Promise<string> {
    return Promise.reject(new Error(`agent target: no control lines: ${LACKS.agent.control}`));
  }

  /** NBD connections the agent still holds open, seen from /proc/net; undefined without /proc. */
  openConnections(): number | undefined {
    return countServerSockets(this.endpoint);
  }

  async waitIdle({ timeoutMs = IDLE_TIMEOUT_MS, remaining = 0 } = {}): Promise<void> {
    if (this.openConnections() === undefined) return this.assertServes(); // no /proc: liveness is all we can see
    const deadline = Date.now() + timeoutMs;
    let open = this.openConnections();
    while (open !== remaining) {
      if (Date.now() >= deadline) {
        throw new Error(`agent not idle: ${open} NBD connection(s) open on the server side, expected ${remaining}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10)); // poll the condition, bounded by the deadline
      open = this.openConnections();
    }
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.child.kill(signal);
  }

  /** Kills `ctl up` (if still running) and starts it again on the same data directory. */
  async restart(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.child.kill(signal);
    await this.boot(false);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const child of this.children) await child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Server-side sockets of the NBD endpoint that are still open (Linux /proc/net). Unix: accepted
 * sockets carry the listening socket's path; the listener itself has __SO_ACCEPTCON (0x10000) in
 * its flags. TCP: the server side has the port as its local port; ESTABLISHED (01), SYN_RECV (03)
 * and CLOSE_WAIT (08, the client left but the server still holds the socket) are open ones.
 */
function countServerSockets(endpoint: Endpoint): number | undefined {
  if (endpoint.unixPath !== undefined) {
    if (!existsSync("/proc/net/unix")) return undefined;
    let open = 0;
    for (const line of readFileSync("/proc/net/unix", "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 8 || fields.slice(7).join(" ") !== endpoint.unixPath) continue;
      if ((Number.parseInt(fields[3]!, 16) & 0x10000) !== 0) continue;
      open++;
    }
    return open;
  }
  const files = ["/proc/net/tcp", "/proc/net/tcp6"].filter((f) => existsSync(f));
  if (files.length === 0 || endpoint.port === undefined) return undefined;
  const port = endpoint.port.toString(16).toUpperCase().padStart(4, "0");
  let open = 0;
  for (const file of files) {
    for (const line of readFileSync(file, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 4 || fields[1]!.split(":")[1] !== port) continue;
      if (["01", "03", "08"].includes(fields[3]!)) open++;
    }
  }
  return open;
}

/** Splits a byte stream into lines; next() is bounded by a timeout. */
class LineReader {
  private readonly lines: string[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    void this.pump(stream);
  }

  async next(timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.ended) throw new Error("stream ended");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for a line");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
    return this.lines.shift()!;
  }

  private async pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    await forEachLine(stream, (line) => {
      this.lines.push(line);
      this.waiter?.();
    });
    this.ended = true;
    this.waiter?.();
  }

}


/** Starts a target of `kind` before a suite's tests (handing it to `assign`) and stops it after. */
export function useNbdTarget(kind: NbdTargetKind, assign: (target: NbdTarget) => void): void {
  let started: NbdTarget | undefined;
  beforeAll(async () => {
    started = await startNbdTarget({ kind });
    assign(started);
  });
  afterAll(async () => {
    await started?.stop();
  });
}
