// What bench/resources.ts measured, its targets, and its Markdown tables.
import { formatSize } from "../engine/util/size.ts";
import { type MachineInfo, formatMachineInfo } from "./machine-info.ts";
import type { BenchMode } from "./harness.ts";
import type { SettledMemory } from "./proc-stats.ts";
import { median } from "./report.ts";
import { formatMeasured, markdownTable, targetsTable } from "./result-files.ts";
import { type TargetResult, target } from "./targets.ts";

/** The "MB": 10^6 bytes (the kernel reports KiB; the tables show MB to match the goals). */
const BYTES_PER_MB = 1e6;
const IDLE_AGENT_TARGET_MB = 100;
const DISK_CREATION_TARGET_MB = 1;
const MEMORY_GROUP = "Resident memory";
const OURS = "ours";
const REFERENCE = "nbdkit-file";

export interface Plan {
  runtimeSec: number;
  /** The disk that is filled, then read and written at random (default segments). */
  writtenBytes: number;
  /** The fresh thin disk of 64 KiB segments that gets one first write per segment. */
  thinBytes: number;
  /** Disks created of each kind, for the memory each one adds. */
  creationReps: number;
}

export interface ProcessMemory {
  agent: SettledMemory;
  controller: SettledMemory;
}

export interface MemoryPoint extends ProcessMemory {
  id: string;
  label: string;
}

export interface Creation {
  /** The kind of disk; `rep` tells its creations apart. */
  id: string;
  rep: number;
  label: string;
  sizeBytes: number;
  segmentBytes: number;
  entries: number;
  /** Whether the size goal applies (the 64 TiB disks). */
  big: boolean;
  /** `ctl disk create` until the controller lists the disk as the agent's. */
  ctlMs: number;
  before: ProcessMemory;
  after: ProcessMemory;
}

export interface ProcessCpu {
  name: string;
  pid: number;
  utimeTicks: number;
  stimeTicks: number;
  cpuSec: number;
  usPerIo: number;
  /** One clock tick spread over the run's I/Os: the smallest nonzero usPerIo. */
  resolutionUsPerIo: number;
}

export interface CpuRun {
  server: string;
  job: string;
  label: string;
  iops: number;
  ios: number;
  runtimeMs: number;
  processes: ProcessCpu[];
}

export type CpuOutcome = CpuRun | { server: string; job: string; label: string; error: string };

export interface ResourceResults {
  plan: Plan;
  ticksPerSecond: number;
  memory: MemoryPoint[];
  creations: Creation[];
  fills: { server: string; bandwidthMiBs: number }[];
  cpu: CpuOutcome[];
}

const mb = (bytes: number) => bytes / BYTES_PER_MB;

export function formatMb(bytes: number): string {
  return formatMeasured(mb(bytes));
}

export function formatSignedMb(bytes: number): string {
  return signed(mb(bytes));
}

function memoryTarget(point: MemoryPoint | undefined, id: string, label: string): TargetResult {
  const rss = point?.agent.vmRss ?? Number.NaN;
  return target({
    id: `resources/agent-rss/${id}`,
    group: MEMORY_GROUP,
    label,
    measured: mb(rss),
    unit: "MB",
    goal: { op: "<=", value: IDLE_AGENT_TARGET_MB },
    detail: point ? `VmRSS ${formatMeasured(mb(rss))} MB (anon ${formatMeasured(mb(point.agent.rssAnon))}, file ${formatMeasured(mb(point.agent.rssFile))})` : "not measured",
  });
}

export function resourceTargets(results: ResourceResults): TargetResult[] {
  const point = (id: string) => results.memory.find((m) => m.id === id);
  const targets = [
    memoryTarget(point("idle"), "idle", "idle agent RSS (registered, no disk)"),
    memoryTarget(point("one-disk"), "one-disk", `idle agent RSS with one ${formatSize(results.plan.writtenBytes)} disk exported`),
  ];
  for (const kind of creationKinds(results).filter((k) => k.big)) {
    for (const process of ["controller", "agent"] as const) {
      const deltas = kind.deltas(process);
      targets.push(
        target({
          id: `resources/disk-create-rss/${kind.id}/${process}`,
          group: MEMORY_GROUP,
          label: `${process} RSS added by creating a disk of ${kind.label}`,
          measured: median(deltas),
          unit: "MB",
          goal: { op: "<=", value: DISK_CREATION_TARGET_MB },
          detail: `median of ${deltas.length} creation(s): ${deltas.map(signed).join(", ")} MB`,
        }),
      );
    }
  }
  return targets;
}

function rssCell(memory: SettledMemory): string {
  return `${formatMeasured(mb(memory.vmRss))} (${formatMeasured(mb(memory.rssAnon))} / ${formatMeasured(mb(memory.rssFile))} / ${formatMeasured(mb(memory.rssShmem))})`;
}

function settledCell(memory: ProcessMemory): string {
  const one = (m: SettledMemory) => (m.settled ? `${m.readings}` : `not settled after ${m.readings}`);
  return `${one(memory.agent)}, ${one(memory.controller)}`;
}

function memoryTable(results: ResourceResults): string {
  return markdownTable(
    ["state", "agent VmRSS, MB (anon / file / shmem)", "agent threads", "controller VmRSS, MB (anon / file / shmem)", "readings to settle (agent, controller)"],
    results.memory.map((m) => [m.label, rssCell(m.agent), String(m.agent.threads), rssCell(m.controller), settledCell(m)]),
  );
}

function signed(value: number): string {
  return `${value >= 0 ? "+" : ""}${formatMeasured(value)}`;
}

/** The creations grouped by kind of disk, in the order first made. */
function creationKinds(results: ResourceResults) {
  const ids = [...new Set(results.creations.map((c) => c.id))];
  return ids.map((id) => {
    const creations = results.creations.filter((c) => c.id === id);
    const first = creations[0]!;
    return {
      ...first,
      creations,
      /** VmRSS after − before of each creation, MB. */
      deltas: (process: "agent" | "controller") => creations.map((c) => mb(c.after[process].vmRss - c.before[process].vmRss)),
    };
  });
}

function creationTable(results: ResourceResults): string {
  return markdownTable(
    ["disk", "entries", "created", "create until the agent has it, ms (median)", "agent Δ, MB: median (each)", "controller Δ, MB: median (each)"],
    creationKinds(results).map((kind) => {
      const cell = (process: "agent" | "controller") => {
        const deltas = kind.deltas(process);
        return `**${signed(median(deltas))}** (${deltas.map(signed).join(", ")})`;
      };
      return [kind.label, kind.entries.toLocaleString("en-US"), String(kind.creations.length), formatMeasured(median(kind.creations.map((c) => c.ctlMs))), cell("agent"), cell("controller")];
    }),
  );
}

function isRun(outcome: CpuOutcome | undefined): outcome is CpuRun {
  return outcome !== undefined && !("error" in outcome);
}

function usPerIo(run: CpuRun, process: string): number {
  return run.processes.find((p) => p.name === process)?.usPerIo ?? Number.NaN;
}

function totalUsPerIo(run: CpuRun): number {
  return run.processes.reduce((sum, p) => sum + p.usPerIo, 0);
}

function cpuTable(results: ResourceResults): string {
  const jobs = [...new Set(results.cpu.map((c) => c.job))];
  return markdownTable(
    ["job", "ours IOPS", "agent, µs CPU per I/O", "controller, µs CPU per I/O", "ours total", "nbdkit-file IOPS", "nbdkit-file, µs CPU per I/O", "ours / nbdkit-file, CPU per I/O", "I/Os (ours, nbdkit-file)", "1 tick, µs per I/O (ours)"],
    jobs.map((job) => {
      const of = (server: string) => results.cpu.find((c) => c.job === job && c.server === server);
      const ours = of(OURS);
      const reference = of(REFERENCE);
      const label = (ours ?? reference)!.label;
      const failed = (outcome: CpuOutcome | undefined) => (outcome ? "**failed**" : "—");
      const oursCells = isRun(ours)
        ? [formatMeasured(ours.iops), formatMeasured(usPerIo(ours, "agent")), formatMeasured(usPerIo(ours, "controller")), `**${formatMeasured(totalUsPerIo(ours))}**`]
        : [failed(ours), "", "", ""];
      const referenceCells = isRun(reference) ? [formatMeasured(reference.iops), `**${formatMeasured(totalUsPerIo(reference))}**`] : [failed(reference), ""];
      const ratio = isRun(ours) && isRun(reference) ? `${(totalUsPerIo(ours) / totalUsPerIo(reference)).toFixed(2)}×` : "—";
      const ios = [ours, reference].map((o) => (isRun(o) ? o.ios.toLocaleString("en-US") : "—")).join(", ");
      const tick = isRun(ours) ? formatMeasured(ours.processes[0]!.resolutionUsPerIo) : "—";
      return [label, ...oursCells, ...referenceCells, ratio, ios, tick];
    }),
  );
}

export function summaryTables(results: ResourceResults, targets: TargetResult[]): string[] {
  const failures = results.cpu.filter((c): c is Extract<CpuOutcome, { error: string }> => "error" in c);
  return [
    "## CPU per I/O",
    "",
    `utime + stime from /proc/PID/stat (every thread of the process) before and after each fio run (\`--ioengine=nbd\`, one connection, ` +
      `unix socket, no ramp; ${results.plan.runtimeSec} s, or until every segment has had its write for the first writes), divided by the I/Os ` +
      `fio completed. Random jobs: a ${formatSize(results.plan.writtenBytes)} disk (default segments) fully written by a first fill, and \`nbdkit file\` on a ` +
      `file of that size, filled the same way. First writes: one 4 KiB write at a random offset inside every segment of a fresh ` +
      `${formatSize(results.plan.thinBytes)} thin disk of 64 KiB segments, segments in ascending order (fio \`--zonemode=strided\`, a 64 KiB ` +
      `zone per segment; every write makes the controller allocate a segment), and the same writes to a fresh sparse file under \`nbdkit file\`. Clock tick: 1/${results.ticksPerSecond} s.`,
    "",
    cpuTable(results),
    ...(failures.length > 0 ? ["", ...failures.map((f) => `- ${f.server} ${f.label}: **failed**: ${f.error}`)] : []),
    "",
    "## Resident memory",
    "",
    "VmRSS (and its anonymous / file / shared parts) of `ctl agent` and `ctl controller` from /proc/PID/status, read every 100 ms " +
      "until two readings agree (bounded); MB = 10^6 bytes.",
    "",
    memoryTable(results),
    "",
    "### Creating a disk",
    "",
    "Readings just before `ctl disk create` and after the controller lists the new disk as served by the agent (the agent has " +
      "its table and its workers the export), for each disk created; kinds interleaved. The 1 GiB disk (a small table) shows " +
      "what the request itself and the garbage-collected heaps add or give back.",
    "",
    creationTable(results),
    "",
    "## Targets",
    "",
    targetsTable(targets),
  ];
}

export function markdownReport(mode: BenchMode, machine: MachineInfo, startedAt: Date, body: string[]): string {
  return [`# Resources: CPU per I/O and resident memory (${mode})`, "", `Run ${startedAt.toISOString()}.`, "", ...formatMachineInfo(machine), "", ...body, ""].join("\n");
}

/** What a run must have produced: every target's number, every CPU run's. */
export function missingNumbers(results: ResourceResults, targets: TargetResult[]): string[] {
  const missing = targets.filter((t) => !Number.isFinite(t.measured)).map((t) => t.id);
  for (const outcome of results.cpu) {
    if (!isRun(outcome) || !outcome.processes.every((p) => Number.isFinite(p.usPerIo))) missing.push(`${outcome.server} ${outcome.job}`);
  }
  return missing;
}
