// Test-only faults, set through the environment; unset, they cost a string compare.
// Crash points: when TABLEDISK_FAILPOINT names a point, the process kills itself with SIGKILL on
// reaching it, so tests can crash the controller in the middle of a multi-step process and check
// what recovery makes of it.
// A failing log disk: while the file named by TABLEDISK_LOG_SYNC_FAILS_WHEN exists, every
// fdatasync of the log fails with EIO, so tests can fail it at the moment they choose.
import { existsSync } from "node:fs";
import type { LogIo } from "./log/log-io.ts";

const armed = process.env.TABLEDISK_FAILPOINT ?? "";
const logSyncFailsWhen = process.env.TABLEDISK_LOG_SYNC_FAILS_WHEN ?? "";

export function failpoint(name: string): void {
  if (armed !== name) return;
  process.stderr.write(`failpoint ${name}: killing the process\n`);
  process.kill(process.pid, "SIGKILL");
}

/** `io` itself, or, under TABLEDISK_LOG_SYNC_FAILS_WHEN, `io` with fdatasync failing on demand. */
export function logIoWithFaults(io: LogIo): LogIo {
  if (logSyncFailsWhen === "") return io;
  return {
    ...io,
    datasync: async (fd) => {
      if (!existsSync(logSyncFailsWhen)) return io.datasync(fd);
      throw Object.assign(new Error("EIO: i/o error, fdatasync (injected)"), { code: "EIO" });
    },
  };
}
