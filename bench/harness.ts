// What every end-to-end benchmark script needs around its measurements: a temp directory on a
// disk-backed file system, writing back dirty pages between runs, progress lines on stderr, and
// reaping every child on SIGINT/SIGTERM.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { rmSync } from "node:fs";
import { type MachineInfo, formatMachineInfo, machineInfo } from "./machine-info.ts";
import { reapAll, runCommand } from "./processes.ts";

/** Preferred home of the temp directory: a disk-backed file system, unlike a tmpfs /tmp. */
export const TEMP_ROOT = "/var/tmp";
/** Bound on writing back the dirty pages of the temp file system between runs. */
const SYNC_TIMEOUT_MS = 120_000;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

/** A fresh directory named `prefix` + random suffix, under TEMP_ROOT if possible, else the OS temp dir. */
export function makeTempDir(prefix: string): string {
  for (const root of [TEMP_ROOT, tmpdir()]) {
    try {
      return mkdtempSync(join(root, prefix));
    } catch {
      // try the next root
    }
  }
  throw new Error("cannot create a temp directory");
}

export function log(text: string): void {
  process.stderr.write(`${text}\n`);
}

/**
 * Writes back the page cache's dirty pages on the temp directory's file system, so that one run's
 * writes (or the fills) are not flushed by the kernel in the middle of the next run.
 */
export async function settle(dir: string): Promise<void> {
  const result = await runCommand(["sync", "-f", dir], { timeoutMs: SYNC_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`sync -f ${dir} failed: ${result.stderr.trim()}`);
}

let interrupted = false;

/** Whether SIGINT or SIGTERM came (after onInterrupt): start nothing new, the children are being reaped. */
export function isInterrupted(): boolean {
  return interrupted;
}

/** Reaps every child and runs `cleanUp` (then exits 130) if the benchmark is interrupted. */
export function onInterrupt(cleanUp: () => void): void {
  const handler = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    log(`bench: ${signal}: stopping servers`);
    reapAll().finally(() => {
      cleanUp();
      process.exit(EXIT_INTERRUPTED);
    });
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
}

/** A bad command line: the script prints its usage. */
export class UsageError extends Error {}

/** `-h`/`--help`: runScript prints the usage and exits 0. */
class HelpRequested extends Error {}

export type BenchMode = "full" | "quick" | "smoke";

/** Options every bench script takes; `extra` names its own options that take a value. */
export interface BenchArgs<K extends string> {
  mode: BenchMode;
  keep: boolean;
  verbose: boolean;
  values: Partial<Record<K, string>>;
}

/** Parses `--quick | --smoke`, `--keep`, `--verbose`, `-h` and the script's `extra` options. */
export function parseBenchArgs<K extends string>(argv: string[], extra: readonly K[]): BenchArgs<K> {
  const options: NonNullable<ParseArgsConfig["options"]> = {
    quick: { type: "boolean" },
    smoke: { type: "boolean" },
    keep: { type: "boolean" },
    verbose: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  };
  for (const name of extra) options[name] = { type: "string" };
  const { values } = parseArgs({ args: argv, strict: true, options });
  if (values.help) throw new HelpRequested();
  if (values.quick && values.smoke) throw new UsageError("--quick and --smoke exclude each other");
  const mode: BenchMode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  return { mode, keep: !!values.keep, verbose: !!values.verbose, values: values as Partial<Record<K, string>> };
}

/** Whether `error` is a bad command line (ours or parseArgs'), not a failed run. */
export function isUsageError(error: unknown): boolean {
  return error instanceof UsageError || !!(error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
}

/** What `inTempDir` ran, with when it started and the machine it ran on. */
export interface DirRun<T> {
  result: T;
  machine: MachineInfo;
  startedAt: Date;
}

/**
 * Runs a part's measurements in a fresh temp directory (`prefix` + random suffix): prints the
 * machine first, and afterwards (also on SIGINT/SIGTERM) reaps every child and removes the
 * directory, unless `keep`.
 */
export async function inTempDir<T>(prefix: string, keep: boolean, work: (dir: string) => Promise<T>): Promise<DirRun<T>> {
  const dir = makeTempDir(prefix);
  const cleanUp = () => (keep ? log(`bench: kept ${dir}`) : rmSync(dir, { recursive: true, force: true }));
  onInterrupt(cleanUp);
  const startedAt = new Date();
  try {
    const machine = await machineInfo(dir);
    console.log(formatMachineInfo(machine).join("\n"));
    return { result: await work(dir), machine, startedAt };
  } finally {
    await reapAll();
    cleanUp();
  }
}

/** A bench script's entry: the exit code `main` returns; the usage and 0 for help; 2 and the
 *  usage for a bad command line; 1 when it throws. */
export async function runScript(usage: string, main: () => Promise<number>): Promise<void> {
  try {
    process.exitCode = await main();
  } catch (error) {
    if (error instanceof HelpRequested) {
      console.log(usage);
      process.exitCode = 0;
      return;
    }
    const bad = isUsageError(error);
    log(`bench: ${(error as Error).message}${bad ? `\n${usage}` : ""}`);
    process.exitCode = bad ? EXIT_USAGE : EXIT_FAILED;
  }
}
