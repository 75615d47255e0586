#!/usr/bin/env bun
// Snapshot benchmark, end to end on one `ctl up` (controller + agent, NBD on a unix socket):
//   1. snapshot creation latency for disks of 1 GiB, 1 TiB and 64 TiB, mostly empty and mapped, through
//      the controller client and through the `ctl` command (a spawned process, wall time);
//   2. a group snapshot of 10 disks;
//   3. the longest write stall a QD1 4k random writer (fio) sees while snapshots are taken;
//   4. 4k randwrite QD32 on a fresh snapshot's origin (every write a first, copy-on-write write), forward
//      and reverse delta, against the same disk without a snapshot and against qemu-nbd serving a qcow2
//      overlay (64 KiB clusters) over a written raw base.
// Writes a Markdown report and the raw numbers to bench/results/snapshot-latest.{md,json}.
//
//   bun bench/snapshot.ts [--quick | --smoke] [--keep] [--verbose]
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ControllerClient } from "../ctl/client.ts";
import { readSecret } from "../engine/secret.ts";
import type { ArgsOf, ControllerRequests, ResultOf } from "../engine/wire/messages.ts";
import { FILL_JOB, type FioJob, type FioResult, JOBS, runFio } from "./fio-jobs.ts";
import { isUsageError, log, makeTempDir, onInterrupt, parseBenchArgs, settle } from "./harness.ts";
import { type MachineInfo, formatMachineInfo, machineInfo } from "./machine-info.ts";
import { delay, reapAll } from "./processes.ts";
import { markdownRow, median } from "./report.ts";
import {
  CTL,
  type OursInstance,
  QEMU_OVERLAY_CLUSTER_BYTES,
  REPO,
  SERVERS,
  type StartOptions,
  ctl,
  qemuNbdImage,
  startOursInstance,
  startQemuNbdOverlay,
} from "./servers.ts";

const KIB = 2 ** 10;
const MIB = 2 ** 20;
const GIB = 2 ** 30;
const TIB = 2 ** 40;
const RESULTS_DIR = join(REPO, "bench/results");
/** One storage container: ext4 files stop at 16 TiB - 4 KiB, so the pool is several of these, all sparse. */
const LUN_BYTES = 15 * TIB;
/** Pool headroom beyond what the plan maps: snapshots' copies, heads, allocator rounding. */
const POOL_SLACK_BYTES = 64 * GIB;
/** Bound on one controller request. */
const REQUEST_TIMEOUT_MS = 120_000;
/** Segment size of the 1 GiB disks used for fills, the stall and copy-on-write runs (and qemu's cluster size). */
const SMALL_SEGMENT_BYTES = 64 * KIB;
const WRITE_BYTES = 4 * KIB;
const GROUP_DISKS = 10;
/** The stall run starts taking snapshots this long after fio was started, and stops this long before it ends. */
const STALL_MARGIN_MS = 500;
/** A QD1 write slower than this counts as stalled ... */
const SLOW_WRITE_MS = 5;
/** ... and stalled writes completing closer together than this are one stall episode. */
const EPISODE_GAP_MS = 50;
/** Throughput the no-snapshot replay log is sized for (so it outlasts the run). */
const BASELINE_MAX_IOPS = 200_000;
const TARGET_US_PER_ENTRY = 1;
const TARGET_CTL_EMPTY_64T_MS = 20;
const TARGET_STALL_MS = 20;
const NS_PER_MS = 1e6;
const NS_PER_US = 1e3;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

type Mode = "full" | "quick" | "smoke";

/** How a disk is written before its snapshots are timed. */
type Fill =
  | { kind: "head"; bytes: number }
  | { kind: "whole" }
  | { kind: "stride"; stride: number; count: number };

interface CreationCase {
  id: string;
  sizeBytes: number;
  segmentBytes: number;
  fill: Fill;
  /** Which target this row is judged against. */
  target: "per-entry" | "ctl-empty" | null;
}

interface Plan {
  mode: Mode;
  /** The "1 GiB" disks: fills, group members, stall and copy-on-write runs. */
  smallBytes: number;
  headBytes: number;
  clientReps: number;
  ctlReps: number;
  groupReps: number;
  stallRuntimeSec: number;
  stallIntervalMs: number;
  cowRuntimeSec: number;
  cowReps: number;
  /** 1 TiB disk, mapped: segment size and a 4 KiB write every `stride`. */
  map1T: { segmentBytes: number; stride: number };
  /** 64 TiB disk, mapped: segment size and a 4 KiB write every `stride`. */
  map64T: { segmentBytes: number; stride: number };
}

const PLANS: Record<Mode, Plan> = {
  full: {
    mode: "full",
    smallBytes: GIB,
    headBytes: 4 * MIB,
    clientReps: 7,
    ctlReps: 7,
    groupReps: 5,
    stallRuntimeSec: 5,
    stallIntervalMs: 250,
    cowRuntimeSec: 4,
    cowReps: 3,
    map1T: { segmentBytes: 256 * MIB, stride: 256 * MIB },
    map64T: { segmentBytes: GIB, stride: GIB },
  },
  quick: {
    mode: "quick",
    smallBytes: GIB,
    headBytes: 4 * MIB,
    clientReps: 5,
    ctlReps: 5,
    groupReps: 3,
    stallRuntimeSec: 3,
    stallIntervalMs: 250,
    cowRuntimeSec: 2.5,
    cowReps: 1,
    map1T: { segmentBytes: 256 * MIB, stride: 256 * MIB },
    map64T: { segmentBytes: GIB, stride: 4 * GIB },
  },
  // Only checks that every number comes out: small disks, few mapped entries, sub-second runs.
  smoke: {
    mode: "smoke",
    smallBytes: 64 * MIB,
    headBytes: 4 * MIB,
    clientReps: 3,
    ctlReps: 3,
    groupReps: 2,
    stallRuntimeSec: 1.5,
    stallIntervalMs: 200,
    cowRuntimeSec: 0.5,
    cowReps: 1,
    map1T: { segmentBytes: 256 * MIB, stride: 16 * GIB },
    map64T: { segmentBytes: GIB, stride: TIB },
  },
};

/** Section 1's disks. Segments of 256 MiB or more for the sparse mappings: see the report's notes. */
function creationCases(plan: Plan): CreationCase[] {
  const head: Fill = { kind: "head", bytes: plan.headBytes };
  const stride = (size: number, step: number): Fill => ({ kind: "stride", stride: step, count: Math.floor(size / step) });
  return [
    { id: "c1g-head", sizeBytes: plan.smallBytes, segmentBytes: SMALL_SEGMENT_BYTES, fill: head, target: null },
    { id: "c1g-full", sizeBytes: plan.smallBytes, segmentBytes: SMALL_SEGMENT_BYTES, fill: { kind: "whole" }, target: "per-entry" },
    { id: "c1t-head", sizeBytes: TIB, segmentBytes: MIB, fill: head, target: null },
    { id: "c1t-map", sizeBytes: TIB, segmentBytes: plan.map1T.segmentBytes, fill: stride(TIB, plan.map1T.stride), target: "per-entry" },
    { id: "c64t-head", sizeBytes: 64 * TIB, segmentBytes: MIB, fill: head, target: "ctl-empty" },
    { id: "c64t-64k-head", sizeBytes: 64 * TIB, segmentBytes: 64 * KIB, fill: head, target: "ctl-empty" },
    { id: "c64t-map", sizeBytes: 64 * TIB, segmentBytes: plan.map64T.segmentBytes, fill: stride(64 * TIB, plan.map64T.stride), target: "per-entry" },
  ];
}

/** The 1 GiB disk of section 1 that is written whole doubles as the forward-delta origin of section 4. */
const COW_FORWARD_DISK = "c1g-full";
const COW_REVERSE_DISK = "cow-rev";
const NO_SNAPSHOT_DISK = "nosnap";
const STALL_DISK = "stall";
const groupDisk = (i: number) => `g${i}`;

// ---------------------------------------------------------------------------------------------
// Results

interface CreationResult {
  id: string;
  sizeBytes: number;
  segmentBytes: number;
  entries: number;
  mapped: number;
  how: string;
  target: CreationCase["target"];
  clientMs: number[];
  ctlMs: number[];
}

type CowTarget = "forward" | "reverse" | "no-snapshot" | "qemu-overlay";
const COW_TARGETS: readonly CowTarget[] = ["forward", "reverse", "no-snapshot", "qemu-overlay"];

interface SlowWrites {
  writes: number;
  episodes: number;
}

interface CowRun {
  target: CowTarget;
  rep: number;
  result?: FioResult;
  /** Latency of the snapshot taken just before the run (ours, copy-on-write runs). */
  snapshotMs?: number;
  error?: string;
}

interface Results {
  creation: CreationResult[];
  /** `ctl disk info` wall time: what any ctl command costs before the controller does anything. */
  ctlFloorMs: number[];
  group: { disks: number; diskBytes: number; headBytes: number; clientMs: number[]; ctlMs: number[] } | null;
  stall: {
    runtimeSec: number;
    intervalMs: number;
    baseline?: FioResult;
    during?: FioResult;
    /** From fio's per-write latency log: writes slower than SLOW_WRITE_MS, and how many episodes they form. */
    slowBaseline?: SlowWrites;
    slowDuring?: SlowWrites;
    snapshotMs: number[];
  } | null;
  cow: CowRun[];
  fills: { disk: string; job: string; seconds: number; mapped: number; bandwidthMiBs: number }[];
  /** Everything that failed, in order. */
  errors: string[];
}

// ---------------------------------------------------------------------------------------------
// Small helpers


function formatBytes(bytes: number): string {
  for (const [unit, size] of [["TiB", TIB], ["GiB", GIB], ["MiB", MIB], ["KiB", KIB]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} B`;
}

function formatCount(value: number): string {
  return value.toLocaleString("en-US");
}

function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return "—";
  if (ms < 10) return ms.toFixed(2);
  if (ms < 100) return ms.toFixed(1);
  return ms.toFixed(0);
}

/** `**median** (min–max)` of samples in ms, or a dash when there are none. */
function msCell(samples: number[]): string {
  if (samples.length === 0) return "—";
  const cell = `**${formatMs(median(samples))}**`;
  return samples.length > 1 ? `${cell} (${formatMs(Math.min(...samples))}–${formatMs(Math.max(...samples))})` : cell;
}

function verdict(met: boolean): string {
  return met ? "met" : "**missed**";
}

async function withTimeout<T>(what: string, work: Promise<T>, timeoutMs = REQUEST_TIMEOUT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Wall time of `work` in ms. */
async function timed(work: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await work();
  return performance.now() - start;
}

/** A small seeded PRNG (mulberry32), so every target of one repetition replays the same offsets. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * A fio version 2 iolog for job `jobId`: `passes` passes over every segment of the disk, each pass in
 * its own random order, one 4 KiB write at a random 4 KiB-aligned offset inside each segment. Within one
 * pass no two writes share a segment, so after a snapshot every write of the first pass is the first
 * write to its segment.
 */
function writeReplayLog(path: string, jobId: string, diskBytes: number, passes: number, seed: number): number {
  const file = `${jobId}.0.0`;
  const segments = Math.floor(diskBytes / SMALL_SEGMENT_BYTES);
  const blocksPerSegment = SMALL_SEGMENT_BYTES / WRITE_BYTES;
  const next = random(seed);
  const order = Array.from({ length: segments }, (_, i) => i);
  const lines = ["fio version 2 iolog", `${file} add`, `${file} open`];
  for (let pass = 0; pass < passes; pass++) {
    for (let i = segments - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (const segment of order) {
      const offset = segment * SMALL_SEGMENT_BYTES + Math.floor(next() * blocksPerSegment) * WRITE_BYTES;
      lines.push(`${file} write ${offset} ${WRITE_BYTES}`);
    }
  }
  lines.push(`${file} close`);
  writeFileSync(path, `${lines.join("\n")}\n`);
  return segments * passes;
}

/** Counts slow writes in a fio latency log (`time ms, latency ns, ddir, bs, offset...` per write). */
function slowWrites(logPath: string): SlowWrites {
  const times: number[] = [];
  for (const line of readFileSync(logPath, "utf8").split("\n")) {
    const [time, latency] = line.split(",").map((field) => Number(field.trim()));
    if (time !== undefined && latency !== undefined && Number.isFinite(time) && latency > SLOW_WRITE_MS * NS_PER_MS) times.push(time);
  }
  times.sort((a, b) => a - b);
  let episodes = 0;
  times.forEach((time, i) => {
    if (i === 0 || time - times[i - 1]! > EPISODE_GAP_MS) episodes++;
  });
  return { writes: times.length, episodes };
}

/** fio's job for the stall runs: 4k randwrite QD1, logging every write's completion latency under `prefix`. */
function stallJob(prefix: string): FioJob {
  return { ...QD1_WRITE, extraArgs: [`--write_lat_log=${prefix}`, "--log_avg_msec=0"] };
}

/** Passes over every segment that the no-snapshot log needs to outlast its run. */
function baselinePasses(plan: Plan): number {
  const segments = Math.floor(plan.smallBytes / SMALL_SEGMENT_BYTES);
  return Math.max(1, Math.ceil((BASELINE_MAX_IOPS * plan.cowRuntimeSec) / segments));
}

function jobById(id: string): FioJob {
  const job = JOBS.find((candidate) => candidate.id === id);
  if (!job) throw new Error(`no fio job ${id}`);
  return job;
}

const QD1_WRITE = jobById("randwrite-4k-qd1");
const QD32_WRITE = jobById("randwrite-4k-qd32");

function fillJob(fill: Fill): FioJob {
  switch (fill.kind) {
    case "whole":
      return FILL_JOB;
    case "head":
      return { ...FILL_JOB, id: "fill-head", label: `fill: first ${formatBytes(fill.bytes)}`, extraArgs: [`--size=${fill.bytes}`] };
    case "stride":
      return {
        id: "map-stride",
        label: `map: 4 KiB every ${formatBytes(fill.stride)}`,
        rw: `write:${fill.stride - WRITE_BYTES}`,
        blockSize: "4k",
        iodepth: 32,
        direction: "write",
        metric: "iops",
        extraArgs: [`--number_ios=${fill.count}`],
      };
  }
}

function describeFill(fill: Fill, segmentBytes: number): string {
  switch (fill.kind) {
    case "whole":
      return "whole disk written through NBD (1 MiB sequential writes)";
    case "head":
      return `first ${formatBytes(fill.bytes)} written through NBD`;
    case "stride": {
      const every = fill.stride === segmentBytes ? "every segment" : `every ${fill.stride / segmentBytes}th segment`;
      return `4 KiB written at the start of ${every} (one per ${formatBytes(fill.stride)}, ${formatCount(fill.count)} writes through NBD)`;
    }
  }
}

/** Bytes of pool the plan maps (disks written, snapshots' copies), rounded up to whole containers. */
function containersNeeded(plan: Plan, cases: CreationCase[]): number {
  let bytes = POOL_SLACK_BYTES;
  for (const c of cases) {
    if (c.fill.kind === "whole") bytes += c.sizeBytes;
    else if (c.fill.kind === "head") bytes += Math.max(c.fill.bytes, c.segmentBytes);
    else bytes += c.fill.count * c.segmentBytes;
  }
  // The other written disks (reverse origin, no-snapshot, stall), their copies, and the group disks' heads.
  bytes += 3 * plan.smallBytes + 3 * plan.smallBytes + GROUP_DISKS * plan.headBytes;
  return Math.ceil(bytes / LUN_BYTES);
}

// ---------------------------------------------------------------------------------------------
// The benchmark

class Bench {
  readonly results: Results = { creation: [], ctlFloorMs: [], group: null, stall: null, cow: [], fills: [], errors: [] };
  private readonly uris = new Map<string, string>();
  private baseImage = "";

  constructor(
    readonly plan: Plan,
    readonly dir: string,
    readonly verbose: boolean,
    private readonly ours: OursInstance,
    private readonly client: ControllerClient,
  ) {}

  private request<K extends keyof ControllerRequests & string>(op: K, args: ArgsOf<ControllerRequests, K>): Promise<ResultOf<ControllerRequests, K>> {
    return withTimeout(`controller ${op}`, this.client.request(op, args));
  }

  private uri(disk: string): string {
    const uri = this.uris.get(disk);
    if (!uri) throw new Error(`disk ${disk} was not created`);
    return uri;
  }

  private fail(what: string, error: unknown): void {
    const message = `${what}: ${(error as Error).message}`;
    this.results.errors.push(message);
    log(`FAILED ${message}`);
  }

  /** Runs one part of the benchmark; a failure is recorded and the rest goes on. */
  async section(name: string, work: () => Promise<void>): Promise<void> {
    const start = performance.now();
    try {
      await work();
    } catch (error) {
      this.fail(name, error);
      if (!this.ours.process.running) throw new Error(`ctl up exited (${this.ours.process.exitDescription}): ${this.ours.process.tail(10)}`);
    }
    log(`bench: ${name} took ${((performance.now() - start) / 1000).toFixed(1)} s`);
  }

  async addContainers(count: number): Promise<void> {
    for (let i = 1; i < count; i++) {
      await this.request("lun.add", { path: join(this.dir, `lun${i}.img`), size: LUN_BYTES });
    }
  }

  async createDisk(name: string, size: number, segmentSize: number, mode?: "forward" | "reverse"): Promise<void> {
    const before = this.ours.process.lineCount;
    await this.request("disk.create", { name, size, segmentSize, mode });
    this.uris.set(name, await this.ours.announced(name, before));
  }

  private async mappedEntries(name: string): Promise<number> {
    const info = await this.request("disk.info", { name });
    return info.allocatedBytes / info.segmentSize;
  }

  async fill(name: string, fill: Fill): Promise<void> {
    const job = fillJob(fill);
    const start = performance.now();
    const result = await runFio(this.uri(name), job, { runtimeSec: null, rampSec: 0 }, join(this.dir, `fill-${name}.json`));
    const seconds = (performance.now() - start) / 1000;
    const mapped = await this.mappedEntries(name);
    this.results.fills.push({ disk: name, job: job.id, seconds, mapped, bandwidthMiBs: result.bandwidthBytes / MIB });
    log(`${name}: ${job.label}: ${seconds.toFixed(1)} s, ${formatCount(mapped)} entries mapped`);
  }

  /** Every disk of every section, written as each needs, and qemu's base image. */
  async prepare(cases: CreationCase[]): Promise<void> {
    const { plan } = this;
    for (const c of cases) await this.createDisk(c.id, c.sizeBytes, c.segmentBytes);
    await this.createDisk(COW_REVERSE_DISK, plan.smallBytes, SMALL_SEGMENT_BYTES, "reverse");
    await this.createDisk(NO_SNAPSHOT_DISK, plan.smallBytes, SMALL_SEGMENT_BYTES);
    await this.createDisk(STALL_DISK, plan.smallBytes, SMALL_SEGMENT_BYTES);
    for (let i = 0; i < GROUP_DISKS; i++) await this.createDisk(groupDisk(i), plan.smallBytes, SMALL_SEGMENT_BYTES);
    // The sparse mappings first, while no freed block can be handed out again (see the notes on zeroing).
    const order = [...cases].sort((a, b) => Number(b.fill.kind === "stride") - Number(a.fill.kind === "stride"));
    for (const c of order) await this.fill(c.id, c.fill);
    for (const name of [COW_REVERSE_DISK, NO_SNAPSHOT_DISK, STALL_DISK]) await this.fill(name, { kind: "whole" });
    // A few MiB each: fio's start-up dominates, so these go in parallel.
    await Promise.all(Array.from({ length: GROUP_DISKS }, (_, i) => this.fill(groupDisk(i), { kind: "head", bytes: plan.headBytes })));
    await this.prepareQemuBase();
  }

  /** A raw image of the small disk's size, written whole through qemu-nbd like our disks. */
  private async prepareQemuBase(): Promise<void> {
    const baseDir = join(this.dir, "qemu-base");
    mkdirSync(baseDir, { recursive: true });
    const server = await SERVERS["qemu-nbd"].start({ dir: baseDir, transport: "unix", diskBytes: this.plan.smallBytes, verbose: this.verbose });
    try {
      const start = performance.now();
      const result = await runFio(server.uri, FILL_JOB, { runtimeSec: null, rampSec: 0 }, join(baseDir, "fill.json"));
      const seconds = (performance.now() - start) / 1000;
      this.results.fills.push({ disk: "qemu base.img", job: FILL_JOB.id, seconds, mapped: 0, bandwidthMiBs: result.bandwidthBytes / MIB });
      log(`qemu base: ${FILL_JOB.label}: ${seconds.toFixed(1)} s`);
    } finally {
      await server.stop();
    }
    this.baseImage = qemuNbdImage(baseDir);
  }

  private async deleteDisk(name: string): Promise<void> {
    await this.request("disk.delete", { name });
  }

  /** Section 1: snapshots of each disk through the client, then through ctl; each deleted before the next. */
  async creation(cases: CreationCase[]): Promise<void> {
    const { plan } = this;
    for (let rep = 1; rep <= plan.ctlReps; rep++) {
      this.results.ctlFloorMs.push(await timed(() => ctl(this.ours, ["disk", "info", cases[0]!.id])));
    }
    for (const c of cases) {
      const result: CreationResult = {
        id: c.id,
        sizeBytes: c.sizeBytes,
        segmentBytes: c.segmentBytes,
        entries: Math.ceil(c.sizeBytes / c.segmentBytes),
        mapped: await this.mappedEntries(c.id),
        how: describeFill(c.fill, c.segmentBytes),
        target: c.target,
        clientMs: [],
        ctlMs: [],
      };
      this.results.creation.push(result);
      for (let rep = 1; rep <= plan.clientReps; rep++) {
        const name = `${c.id}-s${rep}`;
        result.clientMs.push(await timed(() => this.request("snapshot.create", { source: c.id, name })));
        await this.deleteDisk(name);
      }
      for (let rep = 1; rep <= plan.ctlReps; rep++) {
        const name = `${c.id}-c${rep}`;
        result.ctlMs.push(await timed(() => ctl(this.ours, ["snapshot", "create", c.id, name])));
        await this.deleteDisk(name);
      }
      log(`${c.id}: ${formatCount(result.mapped)} of ${formatCount(result.entries)} entries mapped; snapshot ${formatMs(median(result.clientMs))} ms (client), ${formatMs(median(result.ctlMs))} ms (ctl)`);
    }
  }

  /** Section 2: `snapshot.group` of the 10 group disks, through the client and through ctl. */
  async group(): Promise<void> {
    const { plan } = this;
    const group = { disks: GROUP_DISKS, diskBytes: plan.smallBytes, headBytes: plan.headBytes, clientMs: [] as number[], ctlMs: [] as number[] };
    this.results.group = group;
    const pairs = (suffix: string) => Array.from({ length: GROUP_DISKS }, (_, i) => ({ source: groupDisk(i), name: `${groupDisk(i)}-${suffix}` }));
    const deleteAll = async (suffix: string) => {
      for (const pair of pairs(suffix)) await this.deleteDisk(pair.name);
    };
    for (let rep = 1; rep <= plan.groupReps; rep++) {
      group.clientMs.push(await timed(() => this.request("snapshot.group", { pairs: pairs(`s${rep}`) })));
      await deleteAll(`s${rep}`);
    }
    for (let rep = 1; rep <= plan.groupReps; rep++) {
      const args = pairs(`c${rep}`).map((pair) => `${pair.source}=${pair.name}`);
      group.ctlMs.push(await timed(() => ctl(this.ours, ["snapshot", "group", ...args])));
      await deleteAll(`c${rep}`);
    }
    log(`group of ${GROUP_DISKS}: ${formatMs(median(group.clientMs))} ms (client), ${formatMs(median(group.ctlMs))} ms (ctl)`);
  }

  /**
   * Section 3: fio 4k randwrite QD1 on the stall disk without snapshots, then again while a snapshot of
   * it is taken every interval (they are kept until the run ends, then deleted).
   */
  async stall(): Promise<void> {
    const { plan } = this;
    const timing = { runtimeSec: plan.stallRuntimeSec, rampSec: 0 };
    const stall: NonNullable<Results["stall"]> = { runtimeSec: plan.stallRuntimeSec, intervalMs: plan.stallIntervalMs, snapshotMs: [] };
    this.results.stall = stall;
    await settle(this.dir);
    const baselinePrefix = join(this.dir, "stall-baseline");
    stall.baseline = await runFio(this.uri(STALL_DISK), stallJob(baselinePrefix), timing, `${baselinePrefix}.json`);
    stall.slowBaseline = slowWrites(`${baselinePrefix}_clat.1.log`);
    log(`stall baseline: max ${formatMs(stall.baseline.clatMaxNs / NS_PER_MS)} ms, p99 ${formatMs((stall.baseline.clatP99Ns ?? Number.NaN) / NS_PER_MS)} ms`);
    await settle(this.dir);
    let fioDone = false;
    const duringPrefix = join(this.dir, "stall-during");
    const fio = runFio(this.uri(STALL_DISK), stallJob(duringPrefix), timing, `${duringPrefix}.json`).finally(() => {
      fioDone = true;
    });
    fio.catch(() => {}); // awaited below; this only keeps an early failure from being unhandled meanwhile
    const names: string[] = [];
    try {
      await delay(STALL_MARGIN_MS);
      const stopAt = performance.now() + plan.stallRuntimeSec * 1000 - 2 * STALL_MARGIN_MS;
      while (!fioDone && performance.now() < stopAt) {
        const name = `${STALL_DISK}-s${names.length + 1}`;
        const ms = await timed(() => this.request("snapshot.create", { source: STALL_DISK, name }));
        names.push(name);
        stall.snapshotMs.push(ms);
        await delay(Math.max(0, plan.stallIntervalMs - ms));
      }
      stall.during = await fio;
      stall.slowDuring = slowWrites(`${duringPrefix}_clat.1.log`);
    } finally {
      await fio.catch(() => undefined);
      for (const name of names) await this.deleteDisk(name);
    }
    log(`stall with ${names.length} snapshots: max ${formatMs(stall.during.clatMaxNs / NS_PER_MS)} ms, p99 ${formatMs((stall.during.clatP99Ns ?? Number.NaN) / NS_PER_MS)} ms`);
  }

  /** Section 4: repetitions outermost, targets innermost, every run on freshly synced pages. */
  async cow(): Promise<void> {
    const { plan } = this;
    const runtimeMs = Math.round(plan.cowRuntimeSec * 1000);
    const passes = baselinePasses(plan);
    for (let rep = 1; rep <= plan.cowReps; rep++) {
      const cowLog = join(this.dir, `cow-${rep}.iolog`);
      const baselineLog = join(this.dir, `baseline-${rep}.iolog`);
      const cowJob: FioJob = { ...QD32_WRITE, id: "cow-randwrite-4k-qd32", extraArgs: [`--read_iolog=${cowLog}`, `--runtime=${runtimeMs}ms`] };
      const baselineJob: FioJob = { ...cowJob, extraArgs: [`--read_iolog=${baselineLog}`, `--runtime=${runtimeMs}ms`] };
      writeReplayLog(cowLog, cowJob.id, plan.smallBytes, 1, rep);
      writeReplayLog(baselineLog, baselineJob.id, plan.smallBytes, passes, rep);
      for (const target of COW_TARGETS) {
        const run: CowRun = { target, rep };
        this.results.cow.push(run);
        try {
          if (target === "forward" || target === "reverse") {
            const disk = target === "forward" ? COW_FORWARD_DISK : COW_REVERSE_DISK;
            const name = `${disk}-cow${rep}`;
            await settle(this.dir);
            run.snapshotMs = await timed(() => this.request("snapshot.create", { source: disk, name }));
            try {
              run.result = await runFio(this.uri(disk), cowJob, { runtimeSec: null, rampSec: 0 }, join(this.dir, `cow-${target}.json`));
            } finally {
              await this.deleteDisk(name);
            }
          } else if (target === "no-snapshot") {
            await settle(this.dir);
            run.result = await runFio(this.uri(NO_SNAPSHOT_DISK), baselineJob, { runtimeSec: null, rampSec: 0 }, join(this.dir, "cow-baseline.json"));
          } else {
            run.result = await this.qemuOverlayRun(rep, cowJob);
          }
          log(`cow #${rep} ${target}: ${Math.round(run.result.iops)} IOPS, ${formatCount(run.result.ioBytes / WRITE_BYTES)} writes in ${run.result.runtimeMs} ms`);
        } catch (error) {
          run.error = (error as Error).message;
          this.fail(`cow #${rep} ${target}`, error);
        }
      }
    }
  }

  private async qemuOverlayRun(rep: number, job: FioJob): Promise<FioResult> {
    const overlayDir = join(this.dir, `qemu-overlay-${rep}`);
    mkdirSync(overlayDir, { recursive: true });
    const options: StartOptions = { dir: overlayDir, transport: "unix", diskBytes: this.plan.smallBytes, verbose: this.verbose };
    const server = await startQemuNbdOverlay(options, this.baseImage);
    try {
      await settle(this.dir);
      return await runFio(server.uri, job, { runtimeSec: null, rampSec: 0 }, join(overlayDir, "cow.json"));
    } finally {
      await server.stop();
      rmSync(overlayDir, { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function fioMs(ns: number | null | undefined): number {
  return ns === null || ns === undefined ? Number.NaN : ns / NS_PER_MS;
}

function creationTable(results: Results): string[] {
  const header = ["disk", "segment", "entries", "mapped", "how it was written", "client, ms", "ctl end to end, ms", "µs per mapped entry", "target"];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  for (const r of results.creation) {
    const usPerEntry = r.mapped > 0 && r.clientMs.length > 0 ? (median(r.clientMs) * 1000) / r.mapped : Number.NaN;
    let target = "—";
    if (r.target === "per-entry" && Number.isFinite(usPerEntry)) target = `≤ ${TARGET_US_PER_ENTRY} µs/entry: ${verdict(usPerEntry <= TARGET_US_PER_ENTRY)}`;
    if (r.target === "ctl-empty" && r.ctlMs.length > 0) target = `≤ ${TARGET_CTL_EMPTY_64T_MS} ms via ctl: ${verdict(median(r.ctlMs) <= TARGET_CTL_EMPTY_64T_MS)}`;
    lines.push(
      markdownRow([
        formatBytes(r.sizeBytes),
        formatBytes(r.segmentBytes),
        formatCount(r.entries),
        formatCount(r.mapped),
        r.how,
        msCell(r.clientMs),
        msCell(r.ctlMs),
        Number.isFinite(usPerEntry) ? usPerEntry.toFixed(3) : "—",
        target,
      ]),
    );
  }
  return lines;
}

/** (mapped − mostly empty) / Δentries for the two small disks of the same geometry. */
function marginalPerEntryUs(results: Results): number {
  const head = results.creation.find((r) => r.id === "c1g-head");
  const full = results.creation.find((r) => r.id === "c1g-full");
  if (!head || !full || head.clientMs.length === 0 || full.clientMs.length === 0 || full.mapped <= head.mapped) return Number.NaN;
  return ((median(full.clientMs) - median(head.clientMs)) * 1000) / (full.mapped - head.mapped);
}

function groupTable(results: Results): string[] {
  const group = results.group;
  const header = ["what", "client, ms", "ctl end to end, ms", "client per disk, ms"];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  if (!group) return [...lines, markdownRow(["group snapshot", "—", "—", "—"])];
  const perDisk = group.clientMs.length > 0 ? formatMs(median(group.clientMs) / group.disks) : "—";
  lines.push(markdownRow([`\`snapshot group\` of ${group.disks} disks (${formatBytes(group.diskBytes)}, 64 KiB segments, first ${formatBytes(group.headBytes)} written)`, msCell(group.clientMs), msCell(group.ctlMs), perDisk]));
  return lines;
}

function stallTable(results: Results): string[] {
  const stall = results.stall;
  const header = ["fio 4k randwrite QD1", "IOPS", "mean clat, µs", "p99, ms", "p99.9, ms", "max, ms", `writes > ${SLOW_WRITE_MS} ms (episodes)`, `target: max ≤ ${TARGET_STALL_MS} ms`];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  const row = (label: string, result: FioResult | undefined, slow: SlowWrites | undefined, judged: boolean) => {
    if (!result) return markdownRow([label, "—", "—", "—", "—", "—", "—", "—"]);
    const max = fioMs(result.clatMaxNs);
    return markdownRow([
      label,
      Math.round(result.iops).toLocaleString("en-US"),
      (result.clatMeanNs / NS_PER_US).toFixed(0),
      formatMs(fioMs(result.clatP99Ns)),
      formatMs(fioMs(result.clatP999Ns)),
      `**${formatMs(max)}**`,
      slow ? `${slow.writes} (${slow.episodes})` : "—",
      judged ? verdict(max <= TARGET_STALL_MS) : "—",
    ]);
  };
  lines.push(row("no snapshots", stall?.baseline, stall?.slowBaseline, false));
  const taken = stall ? `${stall.snapshotMs.length} snapshots, one every ${stall.intervalMs} ms` : "snapshots";
  lines.push(row(`during ${taken}`, stall?.during, stall?.slowDuring, true));
  return lines;
}

function cowSummary(results: Results, target: CowTarget): { iops: number[]; meanUs: number[]; writes: number[] } {
  const runs = results.cow.filter((run) => run.target === target && run.result);
  return {
    iops: runs.map((run) => run.result!.iops),
    meanUs: runs.map((run) => run.result!.clatMeanNs / NS_PER_US),
    writes: runs.map((run) => run.result!.ioBytes / WRITE_BYTES),
  };
}

const COW_LABELS: Record<CowTarget, string> = {
  forward: "ours, forward delta, fresh snapshot's origin (copy-on-write)",
  reverse: "ours, reverse delta, fresh snapshot's origin (copy-on-write)",
  "no-snapshot": "ours, no snapshot, every segment already allocated",
  "qemu-overlay": "qemu-nbd, new qcow2 overlay over the raw base (copy-on-write)",
};

function iopsCell(values: number[]): string {
  if (values.length === 0) return "—";
  const fmt = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0));
  const cell = `**${fmt(median(values))}**`;
  return values.length > 1 ? `${cell} (${fmt(Math.min(...values))}–${fmt(Math.max(...values))})` : cell;
}

function cowTables(results: Results): string[] {
  const header = ["4k randwrite QD32", "IOPS", "mean clat, µs", "writes per run"];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  const summaries = new Map(COW_TARGETS.map((target) => [target, cowSummary(results, target)]));
  for (const target of COW_TARGETS) {
    const s = summaries.get(target)!;
    const mean = s.meanUs.length > 0 ? median(s.meanUs).toFixed(0) : "—";
    const writes = s.writes.length > 0 ? formatCount(Math.round(median(s.writes))) : "—";
    lines.push(markdownRow([COW_LABELS[target], iopsCell(s.iops), mean, writes]));
  }
  const ratio = (a: CowTarget, b: CowTarget) => {
    const x = summaries.get(a)!.iops;
    const y = summaries.get(b)!.iops;
    return x.length > 0 && y.length > 0 && median(y) > 0 ? `**${(median(x) / median(y)).toFixed(2)}×**` : "—";
  };
  lines.push("", markdownRow(["ratio (IOPS, medians)", "value"]), markdownRow(["---", "---"]));
  lines.push(markdownRow(["ours forward / qemu overlay", ratio("forward", "qemu-overlay")]));
  lines.push(markdownRow(["ours reverse / qemu overlay", ratio("reverse", "qemu-overlay")]));
  lines.push(markdownRow(["forward copy-on-write / no snapshot", ratio("forward", "no-snapshot")]));
  lines.push(markdownRow(["reverse copy-on-write / no snapshot", ratio("reverse", "no-snapshot")]));
  return lines;
}

function tables(results: Results): string[] {
  const out: string[] = [];
  out.push("### 1. Snapshot creation latency", "", ...creationTable(results), "");
  const floor = results.ctlFloorMs.length > 0 ? `${formatMs(median(results.ctlFloorMs))} ms` : "—";
  out.push(`Floor of the ctl column: \`ctl disk info\` (spawn, connect, one request that does no work) takes ${floor} (median).`);
  const marginal = marginalPerEntryUs(results);
  if (Number.isFinite(marginal)) out.push(`Marginal cost on the ${formatBytes(results.creation[0]?.sizeBytes ?? 0)} disk, (whole − head) / Δentries: ${marginal.toFixed(3)} µs per mapped entry.`);
  out.push("", "### 2. Group snapshot", "", ...groupTable(results), "");
  out.push("### 3. Write stall of a QD1 writer during snapshots", "", ...stallTable(results), "");
  const stall = results.stall;
  if (stall && stall.snapshotMs.length > 0) {
    out.push(`Snapshot latency under that load (client): ${msCell(stall.snapshotMs)} ms.`, "");
  }
  out.push("### 4. Copy-on-write throughput", "", ...cowTables(results));
  return out;
}

function notes(plan: Plan): string[] {
  const segments = Math.floor(plan.smallBytes / SMALL_SEGMENT_BYTES);
  return [
    "How it was measured:",
    "",
    `- One \`ctl up\` (controller + agent, default workers), NBD and control on unix sockets; the pool is sparse files of ${formatBytes(LUN_BYTES)} (ext4 files stop at 16 TiB), as many as the mapped segments need.`,
    `- **1.** Each row: ${plan.clientReps} snapshots through \`ControllerClient.request("snapshot.create")\` on an open connection, then ${plan.ctlReps} through a spawned \`bun ctl/main.ts snapshot create\` (wall time of the process); median (min–max). Each snapshot is deleted before the next (not timed). ` +
      "µs per mapped entry = median client latency / mapped entries (fixed costs included). " +
      "Sparse mappings of the big disks use large segments (256 MiB, 1 GiB) so that every entry of the table is mapped with one 4 KiB write each, within the run time.",
    `- **2.** \`snapshot.group\` (client) and \`ctl snapshot group SRC=NAME ...\` (spawned), ${plan.groupReps} times each, every group deleted before the next.`,
    `- **3.** fio (nbd engine) 4k randwrite QD1, ${plan.stallRuntimeSec} s time-based, on a ${formatBytes(plan.smallBytes)} disk with 64 KiB segments written whole first: once without snapshots, once while a snapshot of it is taken every ${plan.stallIntervalMs} ms (client, from ${STALL_MARGIN_MS} ms after fio's start to ${STALL_MARGIN_MS} ms before its end; kept until the run ends). ` +
      "Completion latencies (clat) from fio's JSON; they include the copy-on-write faults every snapshot causes, not only the pause while the snapshot is taken. " +
      `Slow writes from fio's per-write latency log (\`--write_lat_log\`): writes over ${SLOW_WRITE_MS} ms, and the episodes they form (slow writes completing within ${EPISODE_GAP_MS} ms of each other are one); about one episode per snapshot means each snapshot stalls the writer once.`,
    `- **4.** fio 4k randwrite QD32 replaying an iolog: the ${formatCount(segments)} segments of a ${formatBytes(plan.smallBytes)} disk (64 KiB segments / clusters) in random order, one 4 KiB write at a random 4 KiB-aligned offset inside each, ` +
      `stopped after ${plan.cowRuntimeSec} s or when the list ends. So every write is the first one to its segment since the snapshot (or to its cluster since the overlay was made): ` +
      "each measured write is copy-on-write. Ours: a snapshot is taken (timed, in the JSON) just before the run and deleted after it; the origin was written whole before. " +
      `No snapshot: the same kind of log with ${baselinePasses(plan)} passes over all segments (so it outlasts the run), on a disk written whole and never snapshotted. ` +
      `qemu: \`qemu-img create -f qcow2 -b base.img -F raw -o cluster_size=${QEMU_OVERLAY_CLUSTER_BYTES}\` afresh each repetition over a raw base written whole through qemu-nbd, served by \`qemu-nbd -f qcow2 --cache=writeback --aio=threads\`. ` +
      `${plan.cowReps} repetition(s), targets interleaved; dirty pages written back (\`sync -f\`) before each run. ` +
      "Note: our copy-on-write fault is durable before the write is answered (copy fdatasync'ed, mapping in the fsync'ed log); qemu with writeback cache syncs nothing until a FLUSH. " +
      "A run that reaches the end of its log (qemu does) loses its last few writes: fio 3.33's replay at QD32 ends with some still unsent; IOPS counts completed writes over the run time, so it is not affected.",
  ];
}

function markdownReport(plan: Plan, machine: MachineInfo, results: Results, startedAt: Date): string {
  const out = [`# Snapshots: creation latency, group snapshots, write stalls, copy-on-write throughput (${plan.mode})`, "", `Run ${startedAt.toISOString()}.`, ""];
  out.push(...formatMachineInfo(machine), "", ...tables(results), "", ...notes(plan));
  if (results.errors.length > 0) out.push("", "## Failures", "", ...results.errors.map((error) => `- ${error}`));
  return `${out.join("\n")}\n`;
}

/** Every number the tables need, or what is missing (smoke mode fails on any). */
function missingNumbers(results: Results, cases: CreationCase[]): string[] {
  const missing: string[] = [];
  const finite = (value: number | null | undefined) => value !== null && value !== undefined && Number.isFinite(value) && value > 0;
  if (results.ctlFloorMs.length === 0) missing.push("ctl floor");
  for (const c of cases) {
    const r = results.creation.find((candidate) => candidate.id === c.id);
    if (!r || r.clientMs.length === 0 || r.ctlMs.length === 0 || r.mapped <= 0) missing.push(`creation ${c.id}`);
  }
  if (!results.group || results.group.clientMs.length === 0 || results.group.ctlMs.length === 0) missing.push("group snapshot");
  const stall = results.stall;
  for (const [name, result] of [["baseline", stall?.baseline], ["during", stall?.during]] as const) {
    if (!result || !finite(result.clatMaxNs) || !finite(result.clatP99Ns) || !finite(result.iops)) missing.push(`stall ${name}`);
  }
  if (!stall || stall.snapshotMs.length === 0) missing.push("stall: no snapshot taken");
  for (const target of COW_TARGETS) if (cowSummary(results, target).iops.filter((v) => v > 0).length === 0) missing.push(`cow ${target}`);
  return missing;
}

// ---------------------------------------------------------------------------------------------
// Main

const USAGE = `usage: bun bench/snapshot.ts [--quick | --smoke] [--keep] [--verbose]
  --quick     fewer repetitions, shorter runs, a 64 TiB disk mapped every 4th segment (about 2 minutes)
  --smoke     small disks, sub-second runs; exits 1 unless every number is there (seconds)
  --keep      keep the temp directory (server data, fio output) for inspection
  --verbose   echo every server's output`;

function parseOptions(argv: string[]): { plan: Plan; keep: boolean; verbose: boolean } | null {
  const args = parseBenchArgs(argv, []);
  return args && { plan: PLANS[args.mode], keep: args.keep, verbose: args.verbose };
}

function writeResults(plan: Plan, machine: MachineInfo, results: Results, markdown: string, startedAt: Date): string[] {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const base = join(RESULTS_DIR, plan.mode === "smoke" ? "snapshot-smoke" : "snapshot-latest");
  const raw = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), machine, plan, ctl: CTL, results };
  writeFileSync(`${base}.json`, `${JSON.stringify(raw, null, 2)}\n`);
  writeFileSync(`${base}.md`, markdown);
  return [`${base}.json`, `${base}.md`];
}

async function run(plan: Plan, dir: string, verbose: boolean): Promise<Results> {
  const cases = creationCases(plan);
  const ours = await startOursInstance({ dir, transport: "unix", diskBytes: LUN_BYTES, verbose }, LUN_BYTES);
  let client: ControllerClient | null = null;
  try {
    client = await withTimeout("connecting to the controller", ControllerClient.open(ours.control, readSecret(ours.secretFile)));
    const bench = new Bench(plan, dir, verbose, ours, client);
    const containers = containersNeeded(plan, cases);
    log(`bench: ${plan.mode}, ${containers} container(s) of ${formatBytes(LUN_BYTES)}, in ${dir}`);
    await bench.addContainers(containers);
    await bench.section("prepare", () => bench.prepare(cases));
    await settle(dir);
    await bench.section("1. creation", () => bench.creation(cases));
    await bench.section("2. group", () => bench.group());
    await bench.section("3. stall", () => bench.stall());
    await bench.section("4. copy-on-write", () => bench.cow());
    return bench.results;
  } finally {
    client?.close();
    await ours.stop();
  }
}

async function main(argv: string[]): Promise<number> {
  const options = parseOptions(argv);
  if (!options) {
    console.log(USAGE);
    return 0;
  }
  const { plan } = options;
  const dir = makeTempDir("tabledisk-snapshot-");
  const cleanUp = () => (options.keep ? log(`bench: kept ${dir}`) : rmSync(dir, { recursive: true, force: true }));
  onInterrupt(cleanUp);
  const startedAt = new Date();
  let machine: MachineInfo;
  let results: Results;
  try {
    machine = await machineInfo(dir);
    console.log(formatMachineInfo(machine).join("\n"));
    results = await run(plan, dir, options.verbose);
  } finally {
    await reapAll();
    cleanUp();
  }
  const markdown = markdownReport(plan, machine, results, startedAt);
  console.log(`\n${tables(results).join("\n")}`);
  for (const path of writeResults(plan, machine, results, markdown, startedAt)) log(`bench: wrote ${path}`);
  const missing = missingNumbers(results, creationCases(plan));
  if (plan.mode === "smoke") for (const what of missing) log(`smoke: missing ${what}`);
  if (results.errors.length > 0) log(`bench: ${results.errors.length} failure(s); see the Failures section of the report`);
  const elapsed = (Date.now() - startedAt.getTime()) / 1000;
  log(`bench: done in ${elapsed.toFixed(0)} s`);
  return results.errors.length > 0 || (plan.mode === "smoke" && missing.length > 0) ? EXIT_FAILED : 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  const usage = isUsageError(error);
  log(`bench: ${(error as Error).message}${usage ? `\n${USAGE}` : ""}`);
  process.exitCode = usage ? EXIT_USAGE : EXIT_FAILED;
}
