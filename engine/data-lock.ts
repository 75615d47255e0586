// One controller per data directory (R19). Two controllers on one directory would allocate from
// the same containers and append to the same log, and one's disks would vanish at the next start.
// So a controller holds an exclusive advisory lock (flock, as etcd does) on DATA/controller.lock
// for its whole life; the kernel drops it when the process ends however it ends, so a crash leaves
// no stale lock. The file also names the holder's pid, for the error a second process prints.
import { dlopen, FFIType, read } from "bun:ffi";
import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";

export const LOCK_FILE = "controller.lock";

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

/** libc's flock and errno, loaded on first use (only the controller needs them). */
let libc: ReturnType<typeof loadLibc> | null = null;

function loadLibc() {
  return dlopen("libc.so.6", {
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
}

export interface DataLock {
  /** Gives the lock up (the controller stops). */
  release(): void;
}

/** Takes the data directory's lock, or throws naming the process that holds it. */
export function lockDataDir(dataDir: string): DataLock {
  const path = join(dataDir, LOCK_FILE);
  libc ??= loadLibc();
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
  if (libc.flock(fd, LOCK_EX | LOCK_NB) !== 0) {
    const errno = read.i32(libc.__errno_location()!);
    closeSync(fd);
    if (errno !== EWOULDBLOCK) throw new Error(`Cannot lock data directory ${dataDir}: flock on ${path} failed with errno ${errno}`);
    throw new Error(`Cannot use data directory ${dataDir}: another controller (${holder(path)}) is using it`);
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `${process.pid}\n`, 0);
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      closeSync(fd);
    },
  };
}

/** Who holds the lock, as its file says (it may not have written its pid yet). */
function holder(path: string): string {
  const pid = readFileSync(path, "utf8").trim();
  return /^\d+$/.test(pid) ? `pid ${pid}` : "pid unknown";
}
