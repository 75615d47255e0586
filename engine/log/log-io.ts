/**
 * File-system operations used by the log. The calls on the commit and compaction paths (write,
 * fdatasync, and the compaction's open, rename and directory sync) go through `LogIo` so tests
 * can count or fail them and the simulator can keep the files on its own disk; everything is async
 * on those paths so the event loop keeps running while the disk works.
 */
import * as fs from "node:fs";
import { dirname } from "node:path";

/** The file operations on the log's hot path. Injectable for tests and instrumentation. */
export interface LogIo {
  /** Positional write; resolves with the number of bytes written (may be short). */
  write(fd: number, data: Uint8Array, position: number): Promise<number>;
  /** fdatasync(2). */
  datasync(fd: number): Promise<void>;
  /** open(2) of a new file (the compaction's). */
  open(path: string, flags: string): Promise<number>;
  /** rename(2): the compacted file replaces the log. */
  rename(from: string, to: string): Promise<void>;
  /** fsync(2) of the directory holding `path`, making a rename in it durable. */
  syncDir(path: string): Promise<void>;
}

export const nodeLogIo: LogIo = {
  write: (fd, data, position) =>
    new Promise((resolve, reject) => {
      fs.write(fd, data, 0, data.length, position, (err, written) => (err ? reject(err) : resolve(written)));
    }),
  datasync: (fd) =>
    new Promise((resolve, reject) => {
      fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()));
    }),
  open: (path, flags) => openAsync(path, flags),
  rename: (from, to) => renameAsync(from, to),
  syncDir: (path) => fsyncDirAsync(path),
};

/** Writes all of `data` at `position`, retrying short writes. */
export async function writeFully(io: LogIo, fd: number, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const written = await io.write(fd, data.subarray(done), position + done);
    if (!(written > 0)) throw new Error(`write made no progress at offset ${position + done}`);
    done += written;
  }
}

/** Zeros written at a time when the log grows its room. */
const ZERO_CHUNK = new Uint8Array(1 << 20);

/**
 * Writes zeros into the file from `from` up to `to` (synchronously: it runs while a change is
 * admitted, before anything is applied); returns `to`. On an error the file may have grown part
 * of the way.
 */
export function extendWithZeros(fd: number, from: number, to: number): number {
  let at = from;
  while (at < to) {
    const written = fs.writeSync(fd, ZERO_CHUNK, 0, Math.min(ZERO_CHUNK.length, to - at), at);
    if (!(written > 0)) throw new Error(`write made no progress at offset ${at}`);
    at += written;
  }
  return to;
}

/** Whether `err` (or an error it was caused by) says the file system is full. */
export function isNoSpace(err: unknown): boolean {
  for (let e = err; e instanceof Error; e = e.cause) {
    if ((e as NodeJS.ErrnoException).code === "ENOSPC") return true;
  }
  return false;
}

/** Bytes an unprivileged writer may still use on the file system holding `path`, if it says. */
export function freeBytesOn(path: string): number | null {
  try {
    const stats = fs.statfsSync(dirname(path));
    return stats.bavail * stats.bsize;
  } catch {
    return null;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** fsync the directory holding `path`, making a create or rename in it durable. */
export function fsyncDirSync(path: string): void {
  const fd = fs.openSync(dirname(path), "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export async function fsyncDirAsync(path: string): Promise<void> {
  const fd = await openAsync(dirname(path), "r");
  try {
    await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
  } finally {
    closeQuietly(fd);
  }
}

export function openAsync(path: string, flags: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
}

export function renameAsync(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => fs.rename(from, to, (err) => (err ? reject(err) : resolve())));
}

/** Closes an fd on a path where a close error cannot change the outcome. */
export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // Nothing useful to do: the fd is gone either way.
  }
}

/** Cuts a file back where the outcome is best effort (a failing disk may refuse that too). */
export function truncateQuietly(fd: number, length: number): void {
  try {
    fs.ftruncateSync(fd, length);
    fs.fdatasyncSync(fd);
  } catch {
    // The disk is failing already; recovery checks whatever is there.
  }
}

export function unlinkQuietly(path: string): void {
  try {
    fs.unlinkSync(path);
  } catch {
    // Best effort cleanup; a leftover is removed at the next open.
  }
}

/** Reads a whole file through an open fd. */
export function readWholeSync(fd: number): Uint8Array {
  const size = fs.fstatSync(fd).size;
  const image = new Uint8Array(size);
  let done = 0;
  while (done < size) {
    const read = fs.readSync(fd, image, done, size - done, done);
    if (read === 0) throw new Error(`file shrank while reading: ${done} of ${size} bytes`);
    done += read;
  }
  return image;
}
