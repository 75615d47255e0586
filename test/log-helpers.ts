/** Shared helpers for the engine/log tests. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type LogIo, nodeLogIo } from "../engine/log/append-log.ts";
export { seededRandom } from "../engine/util/seeded-random.ts";

export function randomInt(random: () => number, lowInclusive: number, highExclusive: number): number {
  return lowInclusive + Math.floor(random() * (highExclusive - lowInclusive));
}

/** Temp directories removed by `removeAll` (call it in afterEach). */
export class TempDirs {
  private dirs: string[] = [];

  make(): string {
    const dir = mkdtempSync(join(tmpdir(), "log-test-"));
    this.dirs.push(dir);
    return dir;
  }

  removeAll(): void {
    for (const dir of this.dirs) rmSync(dir, { recursive: true, force: true });
    this.dirs = [];
  }
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * A LogIo over node:fs that counts calls, can hold the next fdatasync until released, and can
 * fail the next one.
 */
export class ProbeIo implements LogIo {
  writes = 0;
  syncs = 0;
  /** When set, the next datasync resolves `started` and waits for `release` before syncing. */
  private hold: { started: Deferred<void>; release: Deferred<void> } | null = null;
  private failNext: Error | null = null;

  write(fd: number, data: Uint8Array, position: number): Promise<number> {
    this.writes++;
    return nodeLogIo.write(fd, data, position);
  }

  async datasync(fd: number): Promise<void> {
    this.syncs++;
    const hold = this.hold;
    this.hold = null;
    if (hold) {
      hold.started.resolve();
      await hold.release.promise;
    }
    const failure = this.failNext;
    this.failNext = null;
    if (failure) throw failure;
    return nodeLogIo.datasync(fd);
  }

  open(path: string, flags: string): Promise<number> {
    return nodeLogIo.open(path, flags);
  }

  rename(from: string, to: string): Promise<void> {
    return nodeLogIo.rename(from, to);
  }

  syncDir(path: string): Promise<void> {
    return nodeLogIo.syncDir(path);
  }

  /** Holds the next datasync; returns when it started and a function to let it go on. */
  holdNextSync(): { started: Promise<void>; release: () => void } {
    const hold = { started: deferred(), release: deferred() };
    this.hold = hold;
    return { started: hold.started.promise, release: () => hold.release.resolve() };
  }

  failNextSync(error: Error): void {
    this.failNext = error;
  }
}
