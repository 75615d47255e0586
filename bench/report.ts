// Turning fio results into medians and a Markdown report.
import { type FioJob, type FioResult, FILL_JOB, JOBS } from "./fio-jobs.ts";
import type { BenchMode } from "./harness.ts";
import { type MachineInfo, formatMachineInfo } from "./machine-info.ts";
import { type ServerId, type Transport, SERVERS } from "./servers.ts";

const BYTES_PER_MIB = 2 ** 20;
const THOUSAND = 1_000;
const WIDE_MIB_S = 100;
const OURS: ServerId = "ours";

export interface RunRecord {
  transport: Transport;
  server: ServerId;
  job: string;
  rep: number;
  result?: FioResult;
  error?: string;
}

export interface BenchConfig {
  mode: BenchMode;
  runtimeSec: number;
  rampSec: number;
  reps: number;
  diskBytes: number;
  transports: Transport[];
  servers: ServerId[];
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  samples: number;
  failures: number;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  if (sorted.length % 2 === 1) return sorted[middle] ?? Number.NaN;
  return ((sorted[middle - 1] ?? Number.NaN) + (sorted[middle] ?? Number.NaN)) / 2;
}

/** The value a job is judged by: IOPS, or bandwidth in MiB/s. */
export function metricValue(job: FioJob, result: FioResult): number {
  return job.metric === "iops" ? result.iops : result.bandwidthBytes / BYTES_PER_MIB;
}

export function summarize(job: FioJob, records: RunRecord[]): Summary | null {
  const values = records.flatMap((record) => (record.result ? [metricValue(job, record.result)] : []));
  const failures = records.length - values.length;
  if (values.length === 0) return failures > 0 ? { median: Number.NaN, min: Number.NaN, max: Number.NaN, samples: 0, failures } : null;
  return { median: median(values), min: Math.min(...values), max: Math.max(...values), samples: values.length, failures };
}

function formatValue(job: FioJob, value: number): string {
  if (!Number.isFinite(value)) return "—";
  if (job.metric === "iops") return formatIops(value);
  return value >= WIDE_MIB_S ? value.toFixed(0) : value.toFixed(1);
}

/** IOPS as `153.9k`, or whole under a thousand. */
export function formatIops(value: number): string {
  if (!Number.isFinite(value)) return "—";
  return value >= THOUSAND ? `${(value / THOUSAND).toFixed(1)}k` : value.toFixed(0);
}

/** A job's value with its unit, e.g. `153.9k IOPS`. */
export function formatMetric(job: FioJob, value: number): string {
  return `${formatValue(job, value)} ${metricName(job)}`;
}

function formatCell(job: FioJob, summary: Summary | null): string {
  if (!summary) return "—";
  if (summary.samples === 0) return `**failed** (${summary.failures}×)`;
  let cell = `**${formatValue(job, summary.median)}**`;
  if (summary.samples > 1) cell += ` (${formatValue(job, summary.min)}–${formatValue(job, summary.max)})`;
  if (summary.failures > 0) cell += `, ${summary.failures} failed`;
  return cell;
}

function formatRatio(ours: Summary | null, reference: Summary | null): string {
  if (!ours?.samples || !reference?.samples || reference.median === 0) return "—";
  return `${(ours.median / reference.median).toFixed(2)}×`;
}

function metricName(job: FioJob): string {
  return job.metric === "iops" ? "IOPS" : "MiB/s";
}

export function markdownRow(cells: string[]): string {
  return `| ${cells.join(" | ")} |`;
}

/** One table for one transport: a row per job, a column per server, then ours/reference ratios. */
export function resultsTable(transport: Transport, servers: ServerId[], records: RunRecord[], fills: RunRecord[]): string {
  const references = servers.filter((server) => server !== OURS);
  const withOurs = servers.includes(OURS);
  const header = ["job", "metric", ...servers, ...(withOurs ? references.map((reference) => `ours / ${reference}`) : [])];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  const rows: [FioJob, RunRecord[]][] = [...JOBS.map((job): [FioJob, RunRecord[]] => [job, records]), [FILL_JOB, fills]];
  for (const [job, pool] of rows) {
    const of = (server: ServerId) => summarize(job, pool.filter((r) => r.transport === transport && r.server === server && r.job === job.id));
    const cells = [job.label, metricName(job), ...servers.map((server) => formatCell(job, of(server)))];
    if (withOurs) cells.push(...references.map((reference) => formatRatio(of(OURS), of(reference))));
    lines.push(markdownRow(cells));
  }
  return lines.join("\n");
}

function formatBytes(bytes: number): string {
  return bytes >= 2 ** 30 ? `${bytes / 2 ** 30} GiB` : `${bytes / BYTES_PER_MIB} MiB`;
}

export function markdownReport(options: {
  machine: MachineInfo;
  config: BenchConfig;
  records: RunRecord[];
  fills: RunRecord[];
  startedAt: Date;
}): string {
  const { machine, config } = options;
  const out = [`# fio over NBD: ours vs reference servers (${config.mode})`, "", `Run ${options.startedAt.toISOString()}.`, ""];
  out.push(...formatMachineInfo(machine), "");
  const repetitions = config.reps === 1 ? "1 repetition" : `${config.reps} repetitions, median (min–max)`;
  out.push(
    `Each job: fio \`--ioengine=nbd\`, one connection, ${config.runtimeSec} s time-based after ${config.rampSec} s ramp, ${repetitions}; ` +
      `repetitions, jobs and servers interleaved. Export size ${formatBytes(config.diskBytes)}; every backing file starts sparse and is ` +
      `filled once through NBD (last row, a single first-write pass) before measuring, so all are fully written and in the page cache; ` +
        `dirty pages are written back (\`sync -f\`) before every run.`,
    "",
  );
  for (const server of config.servers) out.push(`- **${server}**: ${SERVERS[server].setup}`);
  for (const transport of config.transports) {
    out.push("", `## ${transport === "unix" ? "Unix socket" : "TCP loopback"}`, "");
    out.push(resultsTable(transport, config.servers, options.records, options.fills));
  }
  const failures = [...options.fills, ...options.records].filter((record) => record.error);
  if (failures.length > 0) {
    out.push("", "## Failures", "");
    for (const record of failures) out.push(`- ${record.transport} ${record.server} ${record.job} #${record.rep}: ${record.error}`);
  }
  return `${out.join("\n")}\n`;
}
