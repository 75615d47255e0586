// What every end-to-end benchmark script needs around its measurements: a temp directory on a
// disk-backed file system, writing back dirty pages between runs, progress lines on stderr, and
// reaping every child on SIGINT/SIGTERM.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { reapAll, runCommand } from "./processes.ts";

/** Preferred home of the temp directory: a disk-backed file system, unlike a tmpfs /tmp. */
export const TEMP_ROOT = "/var/tmp";
/** Bound on writing back the dirty pages of the temp file system between runs. */
const SYNC_TIMEOUT_MS = 120_000;
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

/** Reaps every child and runs `cleanUp` (then exits 130) if the benchmark is interrupted. */
export function onInterrupt(cleanUp: () => void): void {
  let interrupted = false;
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
