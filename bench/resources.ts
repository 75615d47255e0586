#!/usr/bin/env bun
// Resources of our processes, run apart (`ctl controller`, `ctl agent`) so /proc tells them apart:
//  - CPU per I/O: utime + stime of each process (agent worker threads included) around a fio run of
//    4k randread QD32 and 4k randwrite QD32 on a fully written disk, and 4k randwrite QD32 of first
//    writes on a fresh thin disk of 64 KiB segments; `nbdkit file` on the same jobs as a reference;
//  - resident memory: the idle agent (no disk, then one small disk), and what creating a 64 TiB disk
//    adds to each process (default and 64 KiB segments).
// Writes DIR/resources-{latest,smoke}.{json,md}.
//
//   bun bench/resources.ts [--quick | --smoke] [--results DIR] [--keep] [--verbose]
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { FILL_JOB, type FioJob, type FioResult, JOBS, type Timing, runFio } from "./fio-jobs.ts";
import { type BenchMode, inTempDir, log, parseBenchArgs, runScript, settle } from "./harness.ts";
import { type CpuTicks, clockTicksPerSecond, readCpuTicks, settledMemory } from "./proc-stats.ts";
import {
  type CpuRun,
  type Creation,
  formatMb,
  formatSignedMb,
  type Plan,
  type ProcessCpu,
  type ProcessMemory,
  type ResourceResults,
  markdownReport,
  missingNumbers,
  resourceTargets,
  summaryTables,
} from "./resources-report.ts";
import { finishPart, resultsDir } from "./result-files.ts";
import { SERVERS, ctl } from "./servers.ts";
import { type SplitInstance, startSplit } from "./split-servers.ts";
import { GIB, KIB, MIB, TIB } from "./units.ts";
import { DEFAULT_SEGMENT_BYTES } from "../engine/disk-operations.ts";
import { formatSize } from "../engine/util/size.ts";

const IO_BYTES = 4 * KIB;
const FIRST_WRITE_SEGMENT_BYTES = 64 * KIB;
const BIG_DISK_BYTES = 64 * TIB;
/** Room in the pool beyond the two disks that get written. */
const POOL_SLACK_BYTES = GIB;
/** Resident-set readings: every SETTLE_INTERVAL_MS until two agree, at most SETTLE_READINGS. */
const SETTLE_INTERVAL_MS = 100;
const SETTLE_READINGS = 30;

const PLANS: Record<BenchMode, Plan> = {
  full: { runtimeSec: 5, writtenBytes: GIB, thinBytes: GIB, creationReps: 5 },
  quick: { runtimeSec: 2, writtenBytes: GIB, thinBytes: 256 * MIB, creationReps: 3 },
  // Only checks that every number comes out.
  smoke: { runtimeSec: 1, writtenBytes: 64 * MIB, thinBytes: 64 * MIB, creationReps: 1 },
};

const USAGE = `usage: bun bench/resources.ts [--quick | --smoke] [--results DIR] [--keep] [--verbose]
  --quick        ${PLANS.quick.runtimeSec} s per fio run (default ${PLANS.full.runtimeSec} s), a smaller first-write disk
  --smoke        as short as possible; exits 1 unless every number is there
  --results DIR  where resources-latest.{json,md} (resources-smoke.* with --smoke) go (default bench/results)
  --keep         keep the temp directory (server data, fio output)
  --verbose      echo every server's output`;

const WRITTEN_DISK = "written";
const THIN_DISK = "thin";

function jobById(id: string): FioJob {
  const job = JOBS.find((candidate) => candidate.id === id);
  if (!job) throw new Error(`no fio job ${id}`);
  return job;
}

const RANDOM_JOBS = [jobById("randread-4k-qd32"), jobById("randwrite-4k-qd32")];

/**
 * One 4 KiB write at a random offset inside each 64 KiB segment (fio's strided zones: a zone per segment,
 * one write per zone), so on a fresh thin disk every write is the first one to its segment and the
 * controller allocates a segment for each. The segments come in ascending order: fio's random map cannot
 * pick each segment once in random order (`blockalign` turns the map off), and a replay log drops the
 * writes still in flight at its end, cutting the connection under them.
 */
function firstWriteJob(segments: number): FioJob {
  return {
    ...jobById("randwrite-4k-qd32"),
    id: "first-write-randwrite-4k-qd32",
    label: "4k randwrite QD32, first write to every 64 KiB segment of a fresh thin disk",
    extraArgs: ["--zonemode=strided", `--zonerange=${FIRST_WRITE_SEGMENT_BYTES}`, `--zonesize=${IO_BYTES}`, `--number_ios=${segments}`],
  };
}

interface DiskKind {
  id: string;
  label: string;
  sizeBytes: number;
  /** `--segment-size`; absent: the controller's default. */
  segmentBytes?: number;
  /** Whether the size goal applies. */
  big: boolean;
}

const DEFAULT_SEGMENTS = `${formatSize(DEFAULT_SEGMENT_BYTES)} segments (default)`;

/** The disks whose creation is measured: the 64 TiB ones, and a small one as the noise floor. */
const CREATIONS: readonly DiskKind[] = [
  { id: "1g-default", label: `1 GiB, ${DEFAULT_SEGMENTS}: reference, a small table`, sizeBytes: GIB, big: false },
  { id: "64t-default", label: `64 TiB, ${DEFAULT_SEGMENTS}`, sizeBytes: BIG_DISK_BYTES, big: true },
  { id: "64t-64k", label: "64 TiB, 64 KiB segments", sizeBytes: BIG_DISK_BYTES, segmentBytes: 64 * KIB, big: true },
];

interface Watched {
  name: string;
  pid: number;
}

class ResourceBench {
  readonly results: ResourceResults;
  private readonly timing: Timing;

  constructor(
    private readonly plan: Plan,
    private readonly dir: string,
    private readonly verbose: boolean,
    ticksPerSecond: number,
  ) {
    this.results = { plan, ticksPerSecond, memory: [], creations: [], fills: [], cpu: [] };
    this.timing = { runtimeSec: plan.runtimeSec, rampSec: 0 }; // no ramp: every I/O fio counts is one the CPU time covers
  }

  private async memoryOf(ours: SplitInstance): Promise<ProcessMemory> {
    const [agent, controller] = await Promise.all([
      settledMemory(ours.agent.pid, SETTLE_INTERVAL_MS, SETTLE_READINGS),
      settledMemory(ours.controller.pid, SETTLE_INTERVAL_MS, SETTLE_READINGS),
    ]);
    return { agent, controller };
  }

  private async remember(ours: SplitInstance, id: string, label: string): Promise<void> {
    const point = { id, label, ...(await this.memoryOf(ours)) };
    this.results.memory.push(point);
    log(`${label}: agent ${formatMb(point.agent.vmRss)} MB, controller ${formatMb(point.controller.vmRss)} MB`);
  }

  /** `ctl disk create`, then waits until the agent serves the disk; returns the ms that took. */
  private async createDisk(ours: SplitInstance, name: string, sizeBytes: number, segmentBytes?: number): Promise<number> {
    const started = performance.now();
    const segmentOption = segmentBytes === undefined ? [] : ["--segment-size", String(segmentBytes)];
    await ctl(ours, ["disk", "create", name, "--size", String(sizeBytes), ...segmentOption]);
    await ours.agentServes(name);
    return performance.now() - started;
  }

  async measureOurs(): Promise<void> {
    const serverDir = join(this.dir, "ours");
    mkdirSync(serverDir);
    const lunBytes = this.plan.writtenBytes + this.plan.thinBytes + POOL_SLACK_BYTES;
    const ours = await startSplit({ dir: serverDir, lunBytes, verbose: this.verbose });
    log(`ours: controller pid ${ours.controller.pid}, agent pid ${ours.agent.pid}`);
    try {
      await this.remember(ours, "idle", "agent registered, no disk");
      await this.createDisk(ours, WRITTEN_DISK, this.plan.writtenBytes);
      await this.remember(ours, "one-disk", `one ${formatSize(this.plan.writtenBytes)} disk exported, no I/O yet`);
      await this.measureCreations(ours);
      const processes = [
        { name: "agent", pid: ours.agent.pid },
        { name: "controller", pid: ours.controller.pid },
      ];
      await this.fill("ours", ours.uri(WRITTEN_DISK));
      for (const job of RANDOM_JOBS) await this.cpuRun("ours", ours.uri(WRITTEN_DISK), job, this.timing, processes);
      await this.createDisk(ours, THIN_DISK, this.plan.thinBytes, FIRST_WRITE_SEGMENT_BYTES);
      await this.firstWrites("ours", ours.uri(THIN_DISK), processes);
      await this.remember(ours, "after-io", "after the fio runs");
    } finally {
      await ours.stop();
    }
  }

  /**
   * Each disk's creation against readings taken just before it, kinds interleaved, `creationReps`
   * times; then the disks go again.
   */
  private async measureCreations(ours: SplitInstance): Promise<void> {
    const created: string[] = [];
    for (let rep = 1; rep <= this.plan.creationReps; rep++) {
      for (const kind of CREATIONS) {
        const name = `${kind.id}-${rep}`;
        const before = await this.memoryOf(ours);
        const ctlMs = await this.createDisk(ours, name, kind.sizeBytes, kind.segmentBytes);
        created.push(name);
        const after = await this.memoryOf(ours);
        const segmentBytes = kind.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
        const creation: Creation = { ...kind, segmentBytes, rep, entries: Math.ceil(kind.sizeBytes / segmentBytes), ctlMs, before, after };
        this.results.creations.push(creation);
        const delta = (process: keyof ProcessMemory) => formatSignedMb(after[process].vmRss - before[process].vmRss);
        log(`create ${kind.label} #${rep}: agent ${delta("agent")} MB, controller ${delta("controller")} MB`);
      }
    }
    for (const name of created) await ctl(ours, ["disk", "delete", name]);
  }

  private async fill(server: string, uri: string): Promise<void> {
    await settle(this.dir);
    const result = await runFio(uri, FILL_JOB, { runtimeSec: null, rampSec: 0 }, join(this.dir, `fill-${server}.json`));
    this.results.fills.push({ server, bandwidthMiBs: result.bandwidthBytes / MIB });
  }

  private async firstWrites(server: string, uri: string, processes: Watched[]): Promise<void> {
    const job = firstWriteJob(this.plan.thinBytes / FIRST_WRITE_SEGMENT_BYTES);
    await this.cpuRun(server, uri, job, { runtimeSec: null, rampSec: 0 }, processes);
  }

  /** One fio run with the CPU time of `processes` read before and after; a failure is recorded, not thrown. */
  private async cpuRun(server: string, uri: string, job: FioJob, timing: Timing, processes: Watched[]): Promise<void> {
    await settle(this.dir);
    const before = processes.map((p) => readCpuTicks(p.pid));
    let result: FioResult;
    try {
      result = await runFio(uri, job, timing, join(this.dir, `run-${server}-${job.id}.json`));
    } catch (error) {
      const message = (error as Error).message;
      this.results.cpu.push({ server, job: job.id, label: job.label, error: message });
      log(`${server} ${job.label}: FAILED: ${message}`);
      return;
    }
    const after = processes.map((p) => readCpuTicks(p.pid));
    const ios = result.ioBytes / IO_BYTES;
    const run: CpuRun = {
      server,
      job: job.id,
      label: job.label,
      iops: result.iops,
      ios,
      runtimeMs: result.runtimeMs,
      processes: processes.map((p, i) => ({ ...p, ...cpuUse(before[i]!, after[i]!, this.results.ticksPerSecond, ios) })),
    };
    this.results.cpu.push(run);
    log(`${server} ${job.label}: ${Math.round(run.iops)} IOPS, ${run.processes.map((p) => `${p.name} ${p.usPerIo.toFixed(2)} µs/I/O`).join(", ")}`);
  }

  /** `nbdkit file` on the same jobs: a fully written file, then a fresh sparse one for the first writes. */
  async measureNbdkit(): Promise<void> {
    const spec = SERVERS["nbdkit-file"];
    const writtenDir = join(this.dir, "nbdkit-written");
    mkdirSync(writtenDir);
    const written = await spec.start({ dir: writtenDir, transport: "unix", diskBytes: this.plan.writtenBytes, verbose: this.verbose });
    try {
      const processes = [{ name: "nbdkit", pid: written.process.pid }];
      await this.fill("nbdkit-file", written.uri);
      for (const job of RANDOM_JOBS) await this.cpuRun("nbdkit-file", written.uri, job, this.timing, processes);
    } finally {
      await written.stop();
    }
    const freshDir = join(this.dir, "nbdkit-fresh");
    mkdirSync(freshDir);
    const fresh = await spec.start({ dir: freshDir, transport: "unix", diskBytes: this.plan.thinBytes, verbose: this.verbose });
    try {
      await this.firstWrites("nbdkit-file", fresh.uri, [{ name: "nbdkit", pid: fresh.process.pid }]);
    } finally {
      await fresh.stop();
    }
  }
}

function cpuUse(before: CpuTicks, after: CpuTicks, ticksPerSecond: number, ios: number): Omit<ProcessCpu, "name" | "pid"> {
  const utime = after.utime - before.utime;
  const stime = after.stime - before.stime;
  const cpuSec = (utime + stime) / ticksPerSecond;
  return { utimeTicks: utime, stimeTicks: stime, cpuSec, usPerIo: (cpuSec * 1e6) / ios, resolutionUsPerIo: 1e6 / ticksPerSecond / ios };
}

async function main(argv: string[]): Promise<number> {
  const args = parseBenchArgs(argv, ["results"]);
  const plan = PLANS[args.mode];
  const { result: bench, machine, startedAt } = await inTempDir("tabledisk-resources-", args.keep, async (dir) => {
    const bench = new ResourceBench(plan, dir, args.verbose, await clockTicksPerSecond());
    log(`bench: resources, ${args.mode}, in ${dir}`);
    await bench.measureOurs();
    await bench.measureNbdkit();
    return bench;
  });
  const { results } = bench;
  const targets = resourceTargets(results);
  const body = summaryTables(results, targets);
  console.log(body.join("\n"));
  const details = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), mode: args.mode, machine, ...results };
  const markdown = markdownReport(args.mode, machine, startedAt, body);
  return finishPart(resultsDir(args.values.results), "resources", args.mode, { targets, details, markdown }, { missing: missingNumbers(results, targets), failures: 0 });
}

await runScript(USAGE, () => main(process.argv.slice(2)));
