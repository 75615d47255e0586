// The fio jobs the benchmark runs, and running one of them with fio's nbd engine (libnbd) against an NBD
// URI, reading fio's JSON output.
import { readFileSync, rmSync } from "node:fs";
import { runCommand } from "./processes.ts";

/** fio's own start-up and shut-down on top of the job's run time, before it is considered hung. */
const FIO_SLACK_MS = 60_000;
/** A fill (untimed, whole device) must finish within this. */
const FILL_TIMEOUT_MS = 300_000;
const MS_PER_S = 1_000;
const P99_KEY = "99.000000";
const P999_KEY = "99.900000";

export type Metric = "iops" | "bandwidth";
export type Direction = "read" | "write";
/** fio's `rw`; sequential ones may carry a skip after each I/O (`write:1020k`). */
export type FioRw = "randread" | "randwrite" | "read" | "write" | `${"read" | "write"}:${string}`;

export interface FioJob {
  id: string;
  label: string;
  rw: FioRw;
  blockSize: string;
  iodepth: number;
  direction: Direction;
  /** What the table shows for this job (the other follows from the block size). */
  metric: Metric;
  /** More fio options, after the ones above (`--number_ios=N`, `--read_iolog=PATH`, ...). */
  extraArgs?: readonly string[];
}

export const JOBS: readonly FioJob[] = [
  { id: "randread-4k-qd1", label: "4k randread QD1", rw: "randread", blockSize: "4k", iodepth: 1, direction: "read", metric: "iops" },
  { id: "randread-4k-qd32", label: "4k randread QD32", rw: "randread", blockSize: "4k", iodepth: 32, direction: "read", metric: "iops" },
  { id: "randwrite-4k-qd1", label: "4k randwrite QD1", rw: "randwrite", blockSize: "4k", iodepth: 1, direction: "write", metric: "iops" },
  { id: "randwrite-4k-qd32", label: "4k randwrite QD32", rw: "randwrite", blockSize: "4k", iodepth: 32, direction: "write", metric: "iops" },
  { id: "read-1m-qd8", label: "1M seq read QD8", rw: "read", blockSize: "1M", iodepth: 8, direction: "read", metric: "bandwidth" },
  { id: "write-1m-qd8", label: "1M seq write QD8", rw: "write", blockSize: "1M", iodepth: 8, direction: "write", metric: "bandwidth" },
];

/** The preparation pass: one sequential write over the whole export, so every byte is written once. */
export const FILL_JOB: FioJob = { id: "fill", label: "fill: 1M seq write QD8, whole disk, first write", rw: "write", blockSize: "1M", iodepth: 8, direction: "write", metric: "bandwidth" };

export interface FioResult {
  iops: number;
  bandwidthBytes: number;
  ioBytes: number;
  runtimeMs: number;
  clatMeanNs: number;
  clatP99Ns: number | null;
  clatP999Ns: number | null;
  clatMaxNs: number;
}

export interface Timing {
  /** Seconds measured; null runs the job once over the whole export instead (a fill). */
  runtimeSec: number | null;
  rampSec: number;
}

interface FioSide {
  io_bytes: number;
  bw_bytes: number;
  iops: number;
  runtime: number;
  clat_ns?: { mean?: number; max?: number; percentile?: Record<string, number> };
}

interface FioJobOutput {
  jobname: string;
  error: number;
  read: FioSide;
  write: FioSide;
}

function toMs(seconds: number): number {
  return Math.round(seconds * MS_PER_S);
}

function fioArgs(uri: string, job: FioJob, timing: Timing, outputPath: string): string[] {
  const args = ["fio", `--name=${job.id}`, "--ioengine=nbd", `--uri=${uri}`, `--rw=${job.rw}`, `--bs=${job.blockSize}`];
  args.push(`--iodepth=${job.iodepth}`, "--numjobs=1", "--output-format=json", `--output=${outputPath}`);
  if (timing.runtimeSec !== null) args.push("--time_based", `--runtime=${toMs(timing.runtimeSec)}ms`, `--ramp_time=${toMs(timing.rampSec)}ms`);
  args.push(...(job.extraArgs ?? []));
  return args;
}

function isFioSide(value: unknown): value is FioSide {
  const side = value as Partial<FioSide> | null;
  return typeof side === "object" && side !== null && typeof side.iops === "number" && typeof side.bw_bytes === "number" && typeof side.io_bytes === "number";
}

/** The one job of a fio JSON report; throws when the report is not what fio writes. */
function parseFioJson(text: string): FioJobOutput {
  // fio may print notices (libnbd's "connected to NBD server") before the JSON document.
  const start = text.indexOf("{");
  if (start < 0) throw new Error(`fio wrote no JSON: ${text.slice(0, 200)}`);
  const report = JSON.parse(text.slice(start)) as { jobs?: unknown[] };
  const job = report.jobs?.[0] as Partial<FioJobOutput> | undefined;
  if (!job || typeof job.error !== "number" || !isFioSide(job.read) || !isFioSide(job.write)) {
    throw new Error("fio JSON has no job with read and write results");
  }
  return job as FioJobOutput;
}

function toResult(side: FioSide): FioResult {
  return {
    iops: side.iops,
    bandwidthBytes: side.bw_bytes,
    ioBytes: side.io_bytes,
    runtimeMs: side.runtime,
    clatMeanNs: side.clat_ns?.mean ?? 0,
    clatP99Ns: side.clat_ns?.percentile?.[P99_KEY] ?? null,
    clatP999Ns: side.clat_ns?.percentile?.[P999_KEY] ?? null,
    clatMaxNs: side.clat_ns?.max ?? 0,
  };
}

/** Runs `job` against `uri`; throws (with fio's own words) unless it moved data without errors. */
export async function runFio(uri: string, job: FioJob, timing: Timing, outputPath: string): Promise<FioResult> {
  const timeoutMs = timing.runtimeSec === null ? FILL_TIMEOUT_MS : (timing.runtimeSec + timing.rampSec) * MS_PER_S + FIO_SLACK_MS;
  rmSync(outputPath, { force: true });
  const run = await runCommand(fioArgs(uri, job, timing, outputPath), { timeoutMs });
  const said = `${run.stderr}\n${run.stdout}`.trim().split("\n").slice(-5).join(" | ");
  if (run.timedOut) throw new Error(`fio ${job.id} hung: killed after ${timeoutMs} ms (${said})`);
  if (run.code !== 0) throw new Error(`fio ${job.id} failed with exit code ${run.code}: ${said}`);
  const output = parseFioJson(readFileSync(outputPath, "utf8"));
  if (output.error !== 0) throw new Error(`fio ${job.id} reported error ${output.error}: ${said}`);
  const result = toResult(output[job.direction]);
  if (result.ioBytes <= 0) throw new Error(`fio ${job.id} moved no data`);
  return result;
}
