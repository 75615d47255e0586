// The suite's summary (bench/run.ts): the parts it runs, what each part's results file must hold,
// and one table (Markdown and JSON) of every target, met or not, with the key numbers behind them.
import { relative } from "node:path";
import { FILL_JOB, JOBS } from "./fio-jobs.ts";
import { fioTargetIds } from "./fio-targets.ts";
import { FIRST_WRITE_CASES, type FirstWriteRun, caseIops, firstWriteTable, firstWriteTargetIds } from "./first-write-report.ts";
import type { BenchMode } from "./harness.ts";
import { type MachineInfo, formatMachineInfo } from "./machine-info.ts";
import { type BenchConfig, type RunRecord, median, resultsTable, summarize } from "./report.ts";
import { targetsTable } from "./result-files.ts";
import { REPO, SERVER_IDS, TRANSPORTS } from "./servers.ts";
import { snapshotTargetIds } from "./snapshot-targets.ts";
import type { TargetResult } from "./targets.ts";
import { formatBytes } from "./units.ts";

export type PartId = "fio" | "first-write" | "snapshot" | "micro" | "resources";

export interface Part {
  id: PartId;
  /** The script, relative to the repository; it writes `DIR/<id>-<smoke|latest>.{json,md}`. */
  script: string;
  about: string;
}

export const PARTS: readonly Part[] = [
  { id: "fio", script: "bench/fio.ts", about: "fio over NBD: allocated disk vs nbdkit file, qemu-nbd, nbdkit memory, nbdkit null; unix socket and TCP" },
  { id: "first-write", script: "bench/first-write.ts", about: "first writes: fresh thin disk, fresh forward and reverse snapshots, 64 KiB and 1 MiB segments, vs qemu-nbd qcow2 overlay" },
  { id: "snapshot", script: "bench/snapshot.ts", about: "snapshot creation latency, group snapshot, QD1 write stall during snapshots" },
  { id: "micro", script: "bench/micro.bench.ts", about: "microbenchmarks (tinybench)" },
  { id: "resources", script: "bench/resources.ts", about: "agent and controller CPU per I/O, resident memory" },
];

/** One number the summary reports besides the targets: a median with its spread. */
export interface CaseValue {
  id: string;
  label: string;
  unit: string;
  median: number;
  min: number;
  max: number;
  samples: number;
}

export interface PartOutcome {
  id: PartId;
  ok: boolean;
  /** "exit code 0", "signal SIGKILL", ... */
  exit: string;
  seconds: number;
  targets: number;
  error?: string;
}

export interface SuiteSummary {
  mode: BenchMode;
  startedAt: string;
  finishedAt: string;
  wallSeconds: number;
  machine: MachineInfo;
  parts: PartOutcome[];
  targets: TargetResult[];
  cases: CaseValue[];
  /** Expected targets or cases without a finite number, and parts without any target. */
  missing: string[];
}

/** What a part's results file holds that the summary reads (the rest is the part's own detail). */
export interface PartResults {
  targets: TargetResult[];
  /** fio: the configuration and every run. */
  config?: BenchConfig;
  runs?: unknown[];
  fills?: unknown[];
}

export function resultsFileName(part: PartId, mode: BenchMode, extension: "json" | "md"): string {
  return `${part}-${mode === "smoke" ? "smoke" : "latest"}.${extension}`;
}

/** JSON turns NaN into null: a target read back without a number gets NaN again. */
export function readTargets(value: unknown): TargetResult[] {
  if (!Array.isArray(value)) throw new Error("no targets array");
  return value.map((raw) => {
    const t = raw as Partial<TargetResult> & { measured?: number | null };
    if (typeof t.id !== "string" || typeof t.group !== "string" || typeof t.label !== "string" || !t.goal) throw new Error(`malformed target ${JSON.stringify(raw)}`);
    return { ...(t as TargetResult), measured: typeof t.measured === "number" ? t.measured : Number.NaN, met: t.met === true };
  });
}

/** Targets that parts in `partIds` must produce, by id. */
export function expectedTargetIds(partIds: readonly PartId[]): string[] {
  const ids: string[] = [];
  if (partIds.includes("fio")) ids.push(...fioTargetIds(TRANSPORTS));
  if (partIds.includes("first-write")) ids.push(...firstWriteTargetIds());
  if (partIds.includes("snapshot")) ids.push(...snapshotTargetIds());
  return ids;
}

/** Cases that parts in `partIds` must produce a number for, by id. */
export function expectedCaseIds(partIds: readonly PartId[]): string[] {
  const ids: string[] = [];
  if (partIds.includes("fio")) {
    for (const transport of TRANSPORTS) for (const server of SERVER_IDS) for (const job of [...JOBS, FILL_JOB]) ids.push(`fio/${transport}/${server}/${job.id}`);
  }
  if (partIds.includes("first-write")) ids.push(...FIRST_WRITE_CASES.map((c) => `first-write/${c.id}`));
  return ids;
}

/** Medians of every fio job per transport and server (the fill included). */
export function fioCases(results: PartResults): CaseValue[] {
  const config = results.config;
  const runs = (results.runs ?? []) as RunRecord[];
  const fills = (results.fills ?? []) as RunRecord[];
  if (!config) return [];
  const cases: CaseValue[] = [];
  for (const transport of config.transports) {
    for (const server of config.servers) {
      for (const job of [...JOBS, FILL_JOB]) {
        const pool = (job === FILL_JOB ? fills : runs).filter((r) => r.transport === transport && r.server === server && r.job === job.id);
        const summary = summarize(job, pool);
        cases.push({
          id: `fio/${transport}/${server}/${job.id}`,
          label: `${job.label}, ${server}, ${transport}`,
          unit: job.metric === "iops" ? "IOPS" : "MiB/s",
          median: summary?.median ?? Number.NaN,
          min: summary?.min ?? Number.NaN,
          max: summary?.max ?? Number.NaN,
          samples: summary?.samples ?? 0,
        });
      }
    }
  }
  return cases;
}

export function firstWriteCases(results: PartResults): CaseValue[] {
  const runs = (results.runs ?? []) as FirstWriteRun[];
  return FIRST_WRITE_CASES.map((c) => {
    const iops = caseIops(runs, c.id);
    const none = iops.length === 0;
    return {
      id: `first-write/${c.id}`,
      label: `${c.label}, ${formatBytes(c.segmentBytes)} segments`,
      unit: "IOPS",
      median: median(iops),
      min: none ? Number.NaN : Math.min(...iops),
      max: none ? Number.NaN : Math.max(...iops),
      samples: iops.length,
    };
  });
}

/** What is expected and has no finite number. */
export function missingNumbers(summary: Pick<SuiteSummary, "parts" | "targets" | "cases">): string[] {
  const partIds = summary.parts.map((part) => part.id);
  const missing: string[] = [];
  for (const part of summary.parts) if (part.targets === 0) missing.push(`${part.id}: no targets`);
  const targets = new Map(summary.targets.map((t) => [t.id, t]));
  for (const id of expectedTargetIds(partIds)) if (!targets.has(id)) missing.push(`target ${id}`);
  for (const t of summary.targets) if (!Number.isFinite(t.measured)) missing.push(`target ${t.id}: no number`);
  const cases = new Map(summary.cases.map((c) => [c.id, c]));
  for (const id of expectedCaseIds(partIds)) if (!Number.isFinite(cases.get(id)?.median ?? Number.NaN)) missing.push(`case ${id}`);
  return missing;
}

function formatSeconds(seconds: number): string {
  const minutes = Math.floor(seconds / 60);
  return minutes > 0 ? `${minutes} min ${Math.round(seconds - minutes * 60)} s` : `${seconds.toFixed(0)} s`;
}

/** Tables of the parts' own numbers that the targets rest on: fio per transport, first writes. */
export interface DetailTables {
  fio?: PartResults;
  firstWrite?: PartResults;
}

function detailSections(details: DetailTables): string[] {
  const out: string[] = [];
  const fio = details.fio;
  if (fio?.config) {
    const runs = (fio.runs ?? []) as RunRecord[];
    const fills = (fio.fills ?? []) as RunRecord[];
    for (const transport of fio.config.transports) {
      out.push(`#### fio over NBD, ${transport === "unix" ? "unix socket" : "TCP loopback"} (ours: an allocated disk)`, "");
      out.push(resultsTable(transport, fio.config.servers, runs, fills), "");
    }
  }
  if (details.firstWrite?.runs) out.push("#### First writes", "", ...firstWriteTable(details.firstWrite.runs as FirstWriteRun[]), "");
  return out;
}

/**
 * The summary in Markdown. `linkDir` is where links start from: the results directory for the file
 * next to the results, the repository for the README fragment.
 */
export function summaryMarkdown(summary: SuiteSummary, details: DetailTables, resultsDir: string, linkDir: string): string {
  const link = (file: string) => relative(linkDir, `${resultsDir}/${file}`) || file;
  const met = summary.targets.filter((t) => t.met).length;
  const out = [`### Benchmark summary (${summary.mode} run, ${summary.startedAt.slice(0, 10)})`, ""];
  out.push(...formatMachineInfo(summary.machine));
  const times = summary.parts.map((part) => `${part.id} ${formatSeconds(part.seconds)}${part.ok ? "" : " (**failed**)"}`);
  out.push(`- \`bun bench/run.ts${summary.mode === "full" ? "" : ` --${summary.mode}`}\`: ${formatSeconds(summary.wallSeconds)} in all (${times.join(", ")})`, "");
  out.push(`Targets met: **${met} of ${summary.targets.length}**.`, "", `![every target: measured relative to its goal](${link(`summary-${summary.mode === "smoke" ? "smoke" : "latest"}.svg`)})`, "");
  for (const group of [...new Set(summary.targets.map((t) => t.group))]) {
    out.push(`#### ${group}`, "", targetsTable(summary.targets.filter((t) => t.group === group)), "");
  }
  out.push(...detailSections(details));
  out.push("Each part's report, with its method: " + summary.parts.map((part) => `[${part.id}](${link(resultsFileName(part.id, summary.mode, "md"))})`).join(", ") + ".");
  const failed = summary.parts.filter((part) => !part.ok);
  if (failed.length > 0 || summary.missing.length > 0) {
    out.push("", "#### Problems", "");
    for (const part of failed) out.push(`- ${part.id}: ${part.error ?? part.exit}`);
    for (const what of summary.missing) out.push(`- missing: ${what}`);
  }
  return `${out.join("\n")}\n`;
}

/** The README fragment links from the repository root when the results are inside it. */
export function readmeLinkDir(resultsDir: string): string {
  return relative(REPO, resultsDir).startsWith("..") ? resultsDir : REPO;
}
