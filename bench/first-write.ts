#!/usr/bin/env bun
// First-write benchmark, end to end on one `ctl up` (controller + agent, NBD on a unix socket): fio 4k
// randwrite QD32 replaying a log in which every write is the first one to its segment, so each measured
// write allocates (fresh thin disk) or copies (origin of a fresh forward or reverse snapshot), at 64 KiB
// and 1 MiB segments; against the same kind of log on an allocated disk and on a fresh qemu-nbd qcow2
// overlay (64 KiB clusters) over a written base. Cases and targets: bench/first-write-report.ts.
//
//   bun bench/first-write.ts [--quick | --smoke] [--results DIR] [--keep] [--verbose]
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { type Fill, WRITE_BYTES, everySegment } from "./disk-fills.ts";
import { FILL_JOB, type FioJob, type FioResult, JOBS, runFio } from "./fio-jobs.ts";
import {
  FIRST_WRITE_CASES,
  type FirstWriteCase,
  type FirstWriteRun,
  caseIops,
  firstWriteTable,
  firstWriteTargets,
} from "./first-write-report.ts";
import { type BenchMode, inTempDir, log, parseBenchArgs, runScript, settle } from "./harness.ts";
import { writeReplayLog } from "./iolog.ts";
import { type MachineInfo, formatMachineInfo } from "./machine-info.ts";
import { OursSession, timed } from "./ours-session.ts";
import { finishPart, resultsDir, targetsTable } from "./result-files.ts";
import { QEMU_OVERLAY_CLUSTER_BYTES, SERVERS, type StartOptions, qemuNbdImage, startQemuNbdOverlay } from "./servers.ts";
import type { TargetResult } from "./targets.ts";
import { GIB, MIB, TIB, formatBytes, formatCount } from "./units.ts";

/** The one sparse container: far more than every case maps (thin disks' allocations stay sparse). */
const LUN_BYTES = 4 * TIB;
/** Throughput the allocated disk's replay log is sized for (so it outlasts the run). */
const ALLOCATED_MAX_IOPS = 200_000;
const JOB_ID = "first-write";

interface Plan {
  mode: BenchMode;
  runtimeSec: number;
  reps: number;
  /** 64 KiB-segment origins, the allocated disk and qemu's base: this size, written whole. */
  smallBytes: number;
  /** 1 MiB-segment origins: this many segments, each mapped by one 4 KiB write. */
  largeOriginSegments: number;
  /** Fresh thin disks: this many segments, nothing written. */
  thinSegments: number;
}

const PLANS: Record<BenchMode, Plan> = {
  full: { mode: "full", runtimeSec: 4, reps: 3, smallBytes: GIB, largeOriginSegments: 4096, thinSegments: 262_144 },
  quick: { mode: "quick", runtimeSec: 2.5, reps: 1, smallBytes: GIB, largeOriginSegments: 4096, thinSegments: 262_144 },
  // Only checks that every number comes out: small disks, sub-second runs.
  smoke: { mode: "smoke", runtimeSec: 0.5, reps: 1, smallBytes: 64 * MIB, largeOriginSegments: 64, thinSegments: 1024 },
};

const QD32_WRITE = JOBS.find((job) => job.id === "randwrite-4k-qd32")!;

/** The disk a case writes in repetition `rep` (thin disks and origins are new every repetition). */
function diskName(c: FirstWriteCase, rep: number): string {
  return c.kind === "allocated" ? c.id : `${c.id}-r${rep}`;
}

/** Segments the case's log covers: the whole disk it writes. */
function caseSegments(plan: Plan, c: FirstWriteCase): number {
  if (c.kind === "thin") return plan.thinSegments;
  if (c.segmentBytes === MIB) return plan.largeOriginSegments;
  return plan.smallBytes / c.segmentBytes;
}

/** How a snapshot origin is written before its snapshot: whole at 64 KiB, one 4 KiB write per segment at 1 MiB. */
function originFill(plan: Plan, c: FirstWriteCase): Fill {
  return c.segmentBytes === MIB ? everySegment(c.segmentBytes, plan.largeOriginSegments) : { kind: "whole" };
}

/** Passes over every segment the allocated disk's log needs to outlast its run. */
function allocatedPasses(plan: Plan): number {
  const segments = plan.smallBytes / QEMU_OVERLAY_CLUSTER_BYTES;
  return Math.max(1, Math.ceil((ALLOCATED_MAX_IOPS * plan.runtimeSec) / segments));
}

class FirstWriteBench {
  readonly runs: FirstWriteRun[] = [];
  private baseImage = "";

  constructor(
    readonly plan: Plan,
    readonly session: OursSession,
    readonly verbose: boolean,
  ) {}

  private get dir(): string {
    return this.session.dir;
  }

  /** Every origin of every repetition, the allocated disk and qemu's base, written before anything is measured. */
  async prepare(): Promise<void> {
    const { plan, session } = this;
    const allocated = FIRST_WRITE_CASES.find((c) => c.kind === "allocated")!;
    await session.createDisk(allocated.id, plan.smallBytes, allocated.segmentBytes);
    await session.fill(allocated.id, { kind: "whole" });
    for (let rep = 1; rep <= plan.reps; rep++) {
      for (const c of FIRST_WRITE_CASES) {
        if (c.kind !== "forward" && c.kind !== "reverse") continue;
        const name = diskName(c, rep);
        await session.createDisk(name, caseSegments(plan, c) * c.segmentBytes, c.segmentBytes, c.kind);
        await session.fill(name, originFill(plan, c));
      }
    }
    await this.prepareQemuBase();
  }

  /** A raw image of the small disks' size, written whole through qemu-nbd like our disks. */
  private async prepareQemuBase(): Promise<void> {
    const baseDir = join(this.dir, "qemu-base");
    mkdirSync(baseDir, { recursive: true });
    const server = await SERVERS["qemu-nbd"].start({ dir: baseDir, transport: "unix", diskBytes: this.plan.smallBytes, verbose: this.verbose });
    try {
      const start = performance.now();
      const result = await runFio(server.uri, FILL_JOB, { runtimeSec: null, rampSec: 0 }, join(baseDir, "fill.json"));
      const seconds = (performance.now() - start) / 1000;
      this.session.fills.push({ disk: "qemu base.img", job: FILL_JOB.id, seconds, mapped: 0, bandwidthMiBs: result.bandwidthBytes / MIB });
      log(`qemu base: ${FILL_JOB.label}: ${seconds.toFixed(1)} s`);
    } finally {
      await server.stop();
    }
    this.baseImage = qemuNbdImage(baseDir);
  }

  /** Repetitions outermost, cases innermost, every run on freshly synced pages. */
  async measure(): Promise<void> {
    for (let rep = 1; rep <= this.plan.reps; rep++) {
      for (const c of FIRST_WRITE_CASES) {
        const run: FirstWriteRun = { caseId: c.id, rep };
        this.runs.push(run);
        try {
          run.result = await this.runCase(c, rep, run);
          log(`#${rep} ${c.id}: ${Math.round(run.result.iops)} IOPS, ${formatCount(run.result.ioBytes / WRITE_BYTES)} writes in ${run.result.runtimeMs} ms`);
        } catch (error) {
          run.error = (error as Error).message;
          this.session.fail(`#${rep} ${c.id}`, error);
        }
      }
    }
  }

  /** The case's replay log for this repetition (same seed for every case of a repetition). */
  private job(c: FirstWriteCase, rep: number): FioJob {
    const path = join(this.dir, `${c.id}-r${rep}.iolog`);
    const passes = c.kind === "allocated" ? allocatedPasses(this.plan) : 1;
    writeReplayLog(path, JOB_ID, { segments: caseSegments(this.plan, c), segmentBytes: c.segmentBytes, passes, seed: rep });
    return { ...QD32_WRITE, id: JOB_ID, extraArgs: [`--read_iolog=${path}`, `--runtime=${Math.round(this.plan.runtimeSec * 1000)}ms`] };
  }

  /** Makes what the case writes (a thin disk, a snapshot, an overlay) on freshly synced pages, then runs it. */
  private async runCase(c: FirstWriteCase, rep: number, run: FirstWriteRun): Promise<FioResult> {
    const { session } = this;
    const job = this.job(c, rep);
    const untimed = { runtimeSec: null, rampSec: 0 };
    const name = diskName(c, rep);
    await settle(this.dir);
    switch (c.kind) {
      case "thin":
        await session.createDisk(name, caseSegments(this.plan, c) * c.segmentBytes, c.segmentBytes);
        break;
      case "forward":
      case "reverse":
        run.snapshotMs = await timed(() => session.request("snapshot.create", { source: name, name: `${name}-snap` }));
        break;
      case "allocated":
        break;
      case "qemu-overlay":
        return this.qemuOverlayRun(rep, job);
    }
    return runFio(session.uri(name), job, untimed, join(this.dir, `${c.id}.json`));
  }

  private async qemuOverlayRun(rep: number, job: FioJob): Promise<FioResult> {
    const overlayDir = join(this.dir, `qemu-overlay-${rep}`);
    mkdirSync(overlayDir, { recursive: true });
    const options: StartOptions = { dir: overlayDir, transport: "unix", diskBytes: this.plan.smallBytes, verbose: this.verbose };
    const server = await startQemuNbdOverlay(options, this.baseImage);
    try {
      return await runFio(server.uri, job, { runtimeSec: null, rampSec: 0 }, join(overlayDir, "run.json"));
    } finally {
      await server.stop();
      rmSync(overlayDir, { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function notes(plan: Plan): string[] {
  const small = plan.smallBytes / QEMU_OVERLAY_CLUSTER_BYTES;
  return [
    "How it was measured:",
    "",
    `- One \`ctl up\` (controller + agent, default workers), NBD and control on unix sockets, one sparse container of ${formatBytes(LUN_BYTES)}.`,
    `- Every run: fio (nbd engine) 4k randwrite QD32 replaying an iolog (\`--read_iolog\`) that visits every segment of the disk once in random order, one 4 KiB write at a random 4 KiB-aligned offset inside each, ` +
      `stopped after ${plan.runtimeSec} s or when the log ends. So every measured write is the first one to its segment: it allocates (thin disk) or copies the segment (snapshot's origin, qemu overlay). ` +
      "IOPS counts completed writes over the run time; a run that reaches the end of its log loses its last few writes (fio 3.33's replay at QD32 ends with some unsent), which does not change IOPS.",
    `- Fresh thin disk: created just before its run, ${formatCount(plan.thinSegments)} segments (${formatBytes(plan.thinSegments * 64 * 1024)} at 64 KiB, ${formatBytes(plan.thinSegments * MIB)} at 1 MiB), nothing written; each write's fault allocates a segment through the controller.`,
    `- Snapshots: a new origin per repetition and delta mode, written before anything is measured: at 64 KiB segments ${formatBytes(plan.smallBytes)} written whole (${formatCount(small)} segments); ` +
      `at 1 MiB segments ${formatCount(plan.largeOriginSegments)} segments, each mapped by one 4 KiB write (a whole write would take longer than the run it feeds; the copy moves the whole segment either way, the unwritten part read from the container as zeros). ` +
      "A snapshot is taken (timed, in the JSON) just before the run; every write then copies its segment (forward: the origin moves to the copy; reverse: the snapshot does).",
    `- Allocated disk: ${formatBytes(plan.smallBytes)}, 64 KiB segments, written whole and never snapshotted; its log makes ${allocatedPasses(plan)} passes over all segments so it outlasts the run.`,
    `- qemu: \`qemu-img create -f qcow2 -b base.img -F raw -o cluster_size=${QEMU_OVERLAY_CLUSTER_BYTES}\` afresh each repetition over a ${formatBytes(plan.smallBytes)} raw base written whole through qemu-nbd, served by \`qemu-nbd -f qcow2 --cache=writeback --aio=threads\`.`,
    "- Nothing written is deleted during the run, so every block the pool hands out is never-used container space and none needs zeroing (a freed block handed out again is zeroed first unless the write covers it, which costs more).",
    `- ${plan.reps} repetition(s), cases interleaved, the same random seed for every case of a repetition; dirty pages written back (\`sync -f\`) before each run. ` +
      "fio sends no FLUSH during a run: qemu (writeback cache) syncs nothing, and what our faults make durable before their write is answered is the engine's choice at the time of the run.",
  ];
}

function markdownReport(plan: Plan, machine: MachineInfo, runs: FirstWriteRun[], targets: TargetResult[], errors: string[], startedAt: Date): string {
  const out = [`# First writes: fresh thin disk, fresh snapshots, allocated disk, qemu overlay (${plan.mode})`, "", `Run ${startedAt.toISOString()}.`, ""];
  out.push(...formatMachineInfo(machine), "", ...firstWriteTable(runs), "", "## Targets", "", targetsTable(targets), "", ...notes(plan));
  if (errors.length > 0) out.push("", "## Failures", "", ...errors.map((error) => `- ${error}`));
  return `${out.join("\n")}\n`;
}

/** The cases without a positive IOPS number (smoke mode fails on any). */
function missingCases(runs: FirstWriteRun[]): string[] {
  return FIRST_WRITE_CASES.filter((c) => !caseIops(runs, c.id).some((iops) => iops > 0)).map((c) => c.id);
}

// ---------------------------------------------------------------------------------------------
// Main

const USAGE = `usage: bun bench/first-write.ts [--quick | --smoke] [--results DIR] [--keep] [--verbose]
  --quick        ${PLANS.quick.reps} repetition of ${PLANS.quick.runtimeSec} s per case (default ${PLANS.full.reps} of ${PLANS.full.runtimeSec} s)
  --smoke        small disks, sub-second runs; exits 1 unless every number is there
  --results DIR  where first-write-latest.{json,md} (first-write-smoke.* with --smoke) go (default bench/results)
  --keep         keep the temp directory (server data, fio output) for inspection
  --verbose      echo every server's output`;

async function run(plan: Plan, dir: string, verbose: boolean): Promise<{ runs: FirstWriteRun[]; session: OursSession }> {
  const session = await OursSession.start(dir, LUN_BYTES, verbose);
  try {
    const bench = new FirstWriteBench(plan, session, verbose);
    log(`bench: first writes, ${plan.mode}, in ${dir}`);
    await session.section("prepare", () => bench.prepare());
    await session.section("measure", () => bench.measure());
    return { runs: bench.runs, session };
  } finally {
    await session.stop();
  }
}

async function main(argv: string[]): Promise<number> {
  const args = parseBenchArgs(argv, ["results"]);
  const plan = PLANS[args.mode];
  const { result, machine, startedAt } = await inTempDir("tabledisk-first-write-", args.keep, (dir) => run(plan, dir, args.verbose));
  const { runs, session } = result;
  const targets = firstWriteTargets(runs);
  const markdown = markdownReport(plan, machine, runs, targets, session.errors, startedAt);
  console.log(`\n${firstWriteTable(runs).join("\n")}\n\n${targetsTable(targets)}`);
  const details = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), machine, plan, runs, fills: session.fills, errors: session.errors };
  return finishPart(resultsDir(args.values.results), "first-write", plan.mode, { targets, details, markdown }, { missing: missingCases(runs), failures: session.errors.length });
}

await runScript(USAGE, () => main(process.argv.slice(2)));
