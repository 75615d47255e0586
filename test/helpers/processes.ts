// Real child processes for integration tests: spawned, watched line by line, always reaped.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const REPO = resolve(import.meta.dir, "../..");
export const CTL = join(REPO, "ctl/main.ts");
const LINE_WAIT_MS = 30_000;

const living = new Set<Child>();

/**
 * Every controller, agent and ctl a test starts shares one control secret file, made here so that
 * an agent can start before any controller; tests of the secret itself override CTL_SECRET_FILE.
 * bun test runs no exit handler, so the directory carries the test process's pid and each run
 * removes those of runs that have ended.
 */
const SECRET_DIR_PREFIX = "tabledisk-secret-";
removeSecretDirsOfEndedRuns();
const secretDir = mkdtempSync(join(tmpdir(), `${SECRET_DIR_PREFIX}${process.pid}-`));
export const TEST_SECRET_FILE = join(secretDir, "control.secret");
writeFileSync(TEST_SECRET_FILE, `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
process.env.CTL_SECRET_FILE = TEST_SECRET_FILE;

function removeSecretDirsOfEndedRuns(): void {
  for (const name of readdirSync(tmpdir())) {
    const pid = new RegExp(`^${SECRET_DIR_PREFIX}(\\d+)-`).exec(name)?.[1];
    if (pid !== undefined && !isAlive(Number(pid))) rmSync(join(tmpdir(), name), { recursive: true, force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Calls `onLine` for every line of a byte stream (the last one too, if unterminated). */
export async function forEachLine(stream: ReadableStream<Uint8Array> | null | undefined, onLine: (line: string) => void): Promise<void> {
  if (!stream) return;
  const decoder = new TextDecoder();
  let partial = "";
  for await (const chunk of stream) {
    partial += decoder.decode(chunk, { stream: true });
    const parts = partial.split("\n");
    partial = parts.pop()!;
    for (const line of parts) onLine(line);
  }
  if (partial) onLine(partial);
}

/** A running child whose stdout and stderr lines are collected as they arrive. */
export class Child {
  readonly lines: string[] = [];
  private readonly watchers: { pattern: RegExp; resolve(line: string): void }[] = [];
  readonly exited: Promise<number>;

  constructor(readonly proc: ReturnType<typeof Bun.spawn>, readonly label: string) {
    living.add(this);
    const onLine = (line: string) => this.onLine(line);
    const pumps = Promise.all([forEachLine(proc.stdout as ReadableStream<Uint8Array>, onLine), forEachLine(proc.stderr as ReadableStream<Uint8Array>, onLine)]);
    this.exited = pumps.then(() => proc.exited).finally(() => living.delete(this));
  }

  private onLine(line: string): void {
    if (process.env.TEST_VERBOSE) console.error(`[${this.label}] ${line}`);
    this.lines.push(line);
    for (const watcher of [...this.watchers]) {
      if (watcher.pattern.test(line)) {
        this.watchers.splice(this.watchers.indexOf(watcher), 1);
        watcher.resolve(line);
      }
    }
  }

  /** The first line (already seen or still to come) matching `pattern`; fails after a bound. */
  waitForLine(pattern: RegExp, timeoutMs = LINE_WAIT_MS, after = 0): Promise<string> {
    const seen = this.lines.slice(after).find((line) => pattern.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${this.label}: no line matching ${pattern} within ${timeoutMs} ms; output:\n${this.lines.join("\n")}`));
      }, timeoutMs);
      const watcher = {
        pattern,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolvePromise(line);
        },
      };
      this.watchers.push(watcher);
      this.exited.then(() => {
        if (!this.watchers.includes(watcher)) return;
        clearTimeout(timer);
        reject(new Error(`${this.label} exited before printing ${pattern}; output:\n${this.lines.join("\n")}`));
      });
    });
  }

  async kill(signal: NodeJS.Signals | number = "SIGTERM"): Promise<number> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    return this.exited;
  }
}

export function spawn(command: string[], label: string, env: Record<string, string> = {}): Child {
  const proc = Bun.spawn(command, {
    cwd: REPO,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, ...env },
  });
  return new Child(proc, label);
}

export function spawnCtl(args: string[], label = "ctl", env: Record<string, string> = {}): Child {
  return spawn([process.execPath, CTL, ...args], label, env);
}

/** Runs ctl to completion (in the repository unless `options.cwd`, with `options.env` added). */
export async function ctl(args: string[], options: { cwd?: string; env?: Record<string, string> } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn([process.execPath, CTL, ...args], {
    cwd: options.cwd ?? REPO,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, ...options.env },
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Runs ctl and fails with its error output unless it succeeds; returns its stdout. */
export async function ctlOk(args: string[], options: { cwd?: string; env?: Record<string, string> } = {}): Promise<string> {
  const result = await ctl(args, options);
  if (result.code !== 0) throw new Error(`ctl ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

/** Runs any command to completion and returns its output. */
export async function run(command: string[], options: { stdin?: Uint8Array } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn(command, {
    cwd: REPO,
    stdout: "pipe",
    stderr: "pipe",
    stdin: options.stdin ? new Blob([options.stdin]) : "ignore",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Kills every child still alive (for afterAll): nothing outlives the test file. */
export async function reapAll(): Promise<void> {
  await Promise.all([...living].map((child) => child.kill("SIGKILL")));
}
