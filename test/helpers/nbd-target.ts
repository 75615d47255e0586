/**
 * The NBD server under test, in one place. Every conformance test gets its server from
 * startNbdTarget(), so the suite can later run against the real agent by changing only this file
 * (the agent must then offer an export like the fixture's default one; tests that rely on the
 * fixture's special exports — "ro", "faulty", "sparse", "slow", "extents" — check `target.fixture`).
 *
 * Today it spawns test/fixtures/memory-nbd-server.ts as a child process, waits (bounded) for its
 * `READY <uri>` line, and talks to it over stdin/stdout control lines. stop() always kills and
 * reaps the child; call it in afterAll/finally.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { MemoryExportConfig } from "../fixtures/memory-backend.ts";
import { type Endpoint, NBD, RawNbdClient } from "./raw-nbd-client.ts";

export interface NbdTargetOptions {
  transport?: "unix" | "tcp";
  /** Exports of the memory fixture (default: its STANDARD_EXPORTS). */
  exports?: MemoryExportConfig[];
  /** Serve from this many worker threads sharing one TCP port (implies tcp). */
  workers?: number;
  multiConn?: boolean;
  graceMs?: number;
  handshakeTimeoutMs?: number;
}

export interface NbdTarget {
  /** URI of the default export. */
  readonly uri: string;
  readonly endpoint: Endpoint;
  readonly unixPath: string | undefined;
  readonly host: string | undefined;
  readonly port: number | undefined;
  /** A writable export the tests may scribble on, and its size. */
  readonly exportName: string;
  readonly sizeBytes: number;
  /** True when this is the memory fixture (its special exports and control lines exist). */
  readonly fixture: boolean;
  /** Server log lines (stderr `LOG ...`). */
  readonly logs: string[];
  uriFor(exportName: string): string;
  connect(): Promise<RawNbdClient>;
  /** Sends a control line and returns the answer line. */
  control(line: string): Promise<string>;
  /** The next line the fixture prints (e.g. `CLOSED` after `CLOSE`), bounded. */
  nextLine(timeoutMs?: number): Promise<string>;
  /** Waits (bounded) until the server has no connection and no open export handle left. */
  waitIdle(timeoutMs?: number): Promise<void>;
  /** A fresh client can negotiate and read: the server survived whatever came before. */
  assertServes(): Promise<void>;
  /** Kills the server with a signal and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Kills (if still running) and reaps the server, removes its temp dir. */
  stop(): Promise<void>;
  readonly exited: Promise<number>;
}

const FIXTURE = join(import.meta.dir, "../fixtures/memory-nbd-server.ts");
const READY_TIMEOUT_MS = 15_000;
const CONTROL_TIMEOUT_MS = 10_000;

export async function startNbdTarget(options: NbdTargetOptions = {}): Promise<NbdTarget> {
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
  void pumpStderr(child.stderr, logs);
  let ready: string;
  try {
    ready = await stdout.next(READY_TIMEOUT_MS);
  } catch (error) {
    child.kill("SIGKILL");
    await child.exited;
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`NBD fixture did not get ready: ${String(error)}\n${logs.join("\n")}`);
  }
  if (!ready.startsWith("READY ")) throw new Error(`unexpected first line from the fixture: ${ready}`);
  const uri = ready.slice("READY ".length);
  const exports = options.exports ?? (await import("../fixtures/memory-nbd-server.ts")).STANDARD_EXPORTS;
  const first = exports[0]!;
  return new FixtureTarget(child, stdout, logs, dir, uri, first.name, first.sizeBytes);
}

class FixtureTarget implements NbdTarget {
  readonly endpoint: Endpoint;
  readonly fixture = true;
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
  ) {
    this.exited = child.exited;
    const parsed = new URL(uri);
    if (parsed.protocol === "nbd+unix:") this.endpoint = { unixPath: parsed.searchParams.get("socket")! };
    else this.endpoint = { host: parsed.hostname, port: Number(parsed.port) };
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

  async control(line: string): Promise<string> {
    this.child.stdin.write(`${line}\n`);
    await this.child.stdin.flush();
    return this.stdout.next(CONTROL_TIMEOUT_MS);
  }

  nextLine(timeoutMs = CONTROL_TIMEOUT_MS): Promise<string> {
    return this.stdout.next(timeoutMs);
  }

  async waitIdle(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let state = "";
    while (Date.now() < deadline) {
      state = await this.control("STATE");
      if (state === "STATE 0 0") return;
      await new Promise((resolve) => setTimeout(resolve, 10)); // poll the condition, bounded by the deadline
    }
    throw new Error(`server not idle: ${state}`);
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
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = pending.indexOf("\n")) >= 0) {
        this.lines.push(pending.slice(0, i));
        pending = pending.slice(i + 1);
      }
      this.waiter?.();
    }
    this.ended = true;
    this.waiter?.();
  }
}

async function pumpStderr(stream: ReadableStream<Uint8Array>, logs: string[]): Promise<void> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, i);
      logs.push(line.startsWith("LOG ") ? line.slice(4) : line);
      pending = pending.slice(i + 1);
    }
  }
}
