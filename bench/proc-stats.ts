// A process's CPU time and resident memory from /proc (Linux). /proc/PID/stat's utime and stime count
// every thread of the process (worker threads included, and threads that have ended); /proc/PID/status
// gives the resident set in KiB.
import { readFileSync } from "node:fs";
import { delay, runCommand } from "./processes.ts";

const GETCONF_TIMEOUT_MS = 10_000;
/** Fields of /proc/PID/stat after the command name: field 3 (state) is index 0, so utime (14) is 11. */
const UTIME_INDEX = 11;
const STIME_INDEX = 12;
const BYTES_PER_KIB = 1024;

export interface CpuTicks {
  utime: number;
  stime: number;
}

/** Clock ticks per second, the unit of /proc/PID/stat's times. */
export async function clockTicksPerSecond(): Promise<number> {
  const result = await runCommand(["getconf", "CLK_TCK"], { timeoutMs: GETCONF_TIMEOUT_MS });
  const ticks = Number(result.stdout.trim());
  if (result.code !== 0 || !Number.isInteger(ticks) || ticks <= 0) throw new Error(`getconf CLK_TCK failed: ${result.stderr.trim() || result.stdout.trim()}`);
  return ticks;
}

export function readCpuTicks(pid: number): CpuTicks {
  const text = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
  const fields = text.slice(text.lastIndexOf(")") + 2).trim().split(" ");
  const utime = Number(fields[UTIME_INDEX]);
  const stime = Number(fields[STIME_INDEX]);
  if (!Number.isInteger(utime) || !Number.isInteger(stime)) throw new Error(`/proc/${pid}/stat: cannot read utime and stime`);
  return { utime, stime };
}

/** The resident set of a process and its parts, in bytes (the kernel counts them in KiB). */
export interface Memory {
  vmRss: number;
  rssAnon: number;
  rssFile: number;
  rssShmem: number;
  /** Peak resident set. */
  vmHwm: number;
  threads: number;
}

export function readMemory(pid: number): Memory {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text);
    if (!match) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(match[1]);
  };
  return {
    vmRss: field("VmRSS") * BYTES_PER_KIB,
    rssAnon: field("RssAnon") * BYTES_PER_KIB,
    rssFile: field("RssFile") * BYTES_PER_KIB,
    rssShmem: field("RssShmem") * BYTES_PER_KIB,
    vmHwm: field("VmHWM") * BYTES_PER_KIB,
    threads: field("Threads"),
  };
}

export interface SettledMemory extends Memory {
  /** Whether two consecutive readings agreed before the bound. */
  settled: boolean;
  readings: number;
}

/**
 * Reads the resident set until two consecutive readings `intervalMs` apart are equal, at most
 * `maxReadings` times; returns the last reading (and whether it settled) either way.
 */
export async function settledMemory(pid: number, intervalMs: number, maxReadings: number): Promise<SettledMemory> {
  let previous = readMemory(pid);
  for (let readings = 2; readings <= maxReadings; readings++) {
    await delay(intervalMs);
    const current = readMemory(pid);
    if (current.vmRss === previous.vmRss) return { ...current, settled: true, readings };
    previous = current;
  }
  return { ...previous, settled: false, readings: maxReadings };
}
