// What the benchmark ran on: CPUs, kernel, memory, file system and tool versions.
import { readFileSync } from "node:fs";
import { availableParallelism, release, totalmem } from "node:os";
import { dirname } from "node:path";
import { runCommand } from "./processes.ts";

const VERSION_TIMEOUT_MS = 10_000;
const BYTES_PER_GIB = 2 ** 30;

export interface MachineInfo {
  nproc: number;
  cpuModel: string;
  kernel: string;
  memoryGiB: number;
  fileSystem: string;
  fio: string;
  nbdkit: string;
  qemuNbd: string;
  bun: string;
}

function cpuModel(): string {
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    return match?.[1]?.trim() ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** The first line `command` prints, or why it could not be had. */
async function firstLine(command: string[]): Promise<string> {
  try {
    const result = await runCommand(command, { timeoutMs: VERSION_TIMEOUT_MS });
    const line = `${result.stdout}\n${result.stderr}`.trim().split("\n")[0]?.trim();
    return result.code === 0 && line ? line : `unavailable (${command[0]} exit ${result.code})`;
  } catch (error) {
    return `unavailable (${(error as Error).message})`;
  }
}

export async function machineInfo(dir: string): Promise<MachineInfo> {
  const [fio, nbdkit, qemuNbd, fsType] = await Promise.all([
    firstLine(["fio", "--version"]),
    firstLine(["nbdkit", "--version"]),
    firstLine(["qemu-nbd", "--version"]),
    firstLine(["stat", "-f", "-c", "%T", dir]),
  ]);
  return {
    nproc: availableParallelism(),
    cpuModel: cpuModel(),
    kernel: release(),
    memoryGiB: Math.round((totalmem() / BYTES_PER_GIB) * 10) / 10,
    // The directory's parent: the temp directory's own name is random and says nothing.
    fileSystem: `${fsType} (${dirname(dir)})`,
    fio,
    nbdkit,
    qemuNbd,
    bun: Bun.version,
  };
}

export function formatMachineInfo(info: MachineInfo): string[] {
  return [
    `- CPUs: ${info.nproc} × ${info.cpuModel}`,
    `- kernel: ${info.kernel}; memory: ${info.memoryGiB} GiB`,
    `- backing files on: ${info.fileSystem}`,
    `- ${info.fio}; ${info.nbdkit}; ${info.qemuNbd}; bun ${info.bun}`,
  ];
}
