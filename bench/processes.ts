// Child processes for the benchmarks: spawned, their output kept (last lines only), waited for with a
// bound, and always reaped (SIGTERM, then SIGKILL after a bounded wait).
import { existsSync } from "node:fs";
import { createConnection, createServer } from "node:net";

/** How long a stopped process gets between SIGTERM and SIGKILL. */
const STOP_GRACE_MS = 5_000;
/** Output lines kept per process, for error reports. */
const KEPT_LINES = 200;
/** Pause between two readiness probes. */
const POLL_INTERVAL_MS = 50;

export const LOOPBACK = "127.0.0.1";

export type Endpoint = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };

const living = new Set<ManagedProcess>();
/** Short-lived commands (fio, ctl, sync) still running: killed outright by reapAll. */
const commands = new Set<Bun.Subprocess>();

interface LineWatcher {
  pattern: RegExp;
  resolve(line: string): void;
}

/** A running child process whose stdout and stderr lines are collected as they arrive. */
export class ManagedProcess {
  readonly lines: string[] = [];
  readonly exited: Promise<number>;
  private readonly watchers: LineWatcher[] = [];
  private seenLines = 0;

  private constructor(
    readonly label: string,
    private readonly proc: Bun.Subprocess<"ignore", "pipe", "pipe">,
    private readonly verbose: boolean,
  ) {
    living.add(this);
    const pumps = Promise.all([this.pump(proc.stdout), this.pump(proc.stderr)]);
    this.exited = pumps.then(() => proc.exited).finally(() => living.delete(this));
  }

  static start(label: string, command: string[], options: { cwd?: string; verbose?: boolean } = {}): ManagedProcess {
    const proc = Bun.spawn(command, { cwd: options.cwd, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    return new ManagedProcess(label, proc, options.verbose ?? false);
  }

  get pid(): number {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** "exit code N" or "signal SIG", once exited. */
  get exitDescription(): string {
    if (this.proc.signalCode !== null) return `signal ${this.proc.signalCode}`;
    return `exit code ${this.proc.exitCode ?? "?"}`;
  }

  /** Number of lines seen so far (kept or not), to wait only for later lines. */
  get lineCount(): number {
    return this.seenLines;
  }

  tail(count = 20): string {
    return this.lines.slice(-count).join("\n");
  }

  /** The first line after `after` (a lineCount) matching `pattern`; fails after `timeoutMs` or on exit. */
  waitForLine(pattern: RegExp, timeoutMs: number, after = 0): Promise<string> {
    const skipped = this.seenLines - this.lines.length;
    const seen = this.lines.slice(Math.max(0, after - skipped)).find((line) => pattern.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        clearTimeout(timer);
        const index = this.watchers.indexOf(watcher);
        if (index >= 0) this.watchers.splice(index, 1);
        reject(new Error(`${this.label}: ${why} before printing ${pattern}; last output:\n${this.tail()}`));
      };
      const timer = setTimeout(() => fail(`no matching line within ${timeoutMs} ms`), timeoutMs);
      const watcher: LineWatcher = {
        pattern,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      this.watchers.push(watcher);
      this.exited.then(() => {
        if (this.watchers.includes(watcher)) fail(`exited (${this.exitDescription})`);
      });
    });
  }

  /** SIGTERM, then SIGKILL if still alive after the grace period; resolves once reaped. */
  async stop(graceMs = STOP_GRACE_MS): Promise<void> {
    if (this.running) this.proc.kill("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    });
    // The timer is cleared once the race is decided, so a reaped child leaves nothing pending.
    const reaped = await Promise.race([this.exited.then(() => true), grace]).finally(() => clearTimeout(timer));
    if (reaped) return;
    console.error(`${this.label}: still running ${graceMs} ms after SIGTERM; sending SIGKILL`);
    if (this.running) this.proc.kill("SIGKILL");
    await this.exited;
  }

  private async pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let partial = "";
    for await (const chunk of stream) {
      partial += decoder.decode(chunk, { stream: true });
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) this.onLine(line);
    }
    if (partial) this.onLine(partial);
  }

  private onLine(line: string): void {
    if (this.verbose) console.error(`[${this.label}] ${line}`);
    this.seenLines++;
    this.lines.push(line);
    if (this.lines.length > KEPT_LINES) this.lines.shift();
    for (const watcher of [...this.watchers]) {
      if (!watcher.pattern.test(line)) continue;
      this.watchers.splice(this.watchers.indexOf(watcher), 1);
      watcher.resolve(line);
    }
  }
}

/** Stops every child still alive, in parallel: commands at once, servers gracefully. */
export async function reapAll(): Promise<void> {
  for (const command of commands) command.kill("SIGKILL");
  await Promise.all([...living].map((child) => child.stop()));
}

/** Runs a command to completion (killed after `timeoutMs`) and returns its output. */
export async function runCommand(
  command: string[],
  options: { timeoutMs: number; cwd?: string },
): Promise<{ code: number; stdout: string; stderr: string; timedOut: boolean }> {
  const proc = Bun.spawn(command, { cwd: options.cwd, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  commands.add(proc);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGKILL");
  }, options.timeoutMs);
  try {
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { code, stdout, stderr, timedOut };
  } finally {
    clearTimeout(timer);
    commands.delete(proc);
  }
}

/** `work`, or a rejection saying `what` did not finish within `timeoutMs`. */
export async function withTimeout<T>(what: string, work: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function tryConnect(endpoint: Endpoint): Promise<boolean> {
  return new Promise((resolve) => {
    const socket =
      endpoint.kind === "unix" ? createConnection({ path: endpoint.path }) : createConnection({ host: endpoint.host, port: endpoint.port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/**
 * Polls until `endpoint` accepts a connection (for a unix socket: exists, then accepts), failing after
 * `timeoutMs` or as soon as `owner` exits.
 */
export async function waitForEndpoint(endpoint: Endpoint, owner: ManagedProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!owner.running) throw new Error(`${owner.label} exited (${owner.exitDescription}) before listening; last output:\n${owner.tail()}`);
    const present = endpoint.kind === "tcp" || existsSync(endpoint.path);
    if (present && (await tryConnect(endpoint))) return;
    await delay(POLL_INTERVAL_MS);
  }
  throw new Error(`${owner.label}: not accepting connections within ${timeoutMs} ms; last output:\n${owner.tail()}`);
}

/** A TCP port on the loopback interface that was free a moment ago. */
export function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, LOOPBACK, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("could not pick a free TCP port"))));
    });
  });
}
