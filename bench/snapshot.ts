#!/usr/bin/env bun
// Snapshot benchmark, end to end on one `ctl up` (controller + agent, NBD on a unix socket):
//   1. snapshot creation latency for disks of 1 GiB, 1 TiB and 64 TiB, mostly empty and mapped, through
//      the controller client and through the `ctl` command (a spawned process, wall time);
//   2. a group snapshot of 10 disks;
//   3. the longest write stall a QD1 4k random writer (fio) sees while snapshots are taken, single
//      snapshots of its disk or group snapshots of its disk and 9 others.
// Copy-on-write throughput is bench/first-write.ts. Targets: bench/snapshot-targets.ts.
//
//   bun bench/snapshot.ts [--quick | --smoke] [--results DIR] [--keep] [--verbose]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type Fill, describeFill } from "./disk-fills.ts";
import { type FioJob, type FioResult, JOBS, runFio } from "./fio-jobs.ts";
import { type BenchMode, inTempDir, log, parseBenchArgs, runScript, settle } from "./harness.ts";
import { type MachineInfo, formatMachineInfo } from "./machine-info.ts";
import { OursSession, timed } from "./ours-session.ts";
import { delay } from "./processes.ts";
import { markdownRow, median } from "./report.ts";
import { finishPart, resultsDir, targetsTable } from "./result-files.ts";
import { ctl } from "./servers.ts";
import {
  CREATION_TARGETS,
  type CreationMeasurement,
  type CreationTarget,
  STALL_KINDS,
  type StallKind,
  TARGET_CTL_EMPTY_64T_MS,
  TARGET_STALL_MS,
  TARGET_US_PER_ENTRY,
  snapshotTargets,
  usPerMappedEntry,
} from "./snapshot-targets.ts";
import type { TargetResult } from "./targets.ts";
import { GIB, KIB, MIB, TIB, formatBytes, formatCount, formatMs, msCell } from "./units.ts";

/** One storage container: ext4 files stop at 16 TiB - 4 KiB, so the pool is several of these, all sparse. */
const LUN_BYTES = 15 * TIB;
/** Pool headroom beyond what the plan maps: snapshots' copies, heads, allocator rounding. */
const POOL_SLACK_BYTES = 64 * GIB;
/** Segment size of the small disks: fills, group members and the stall runs. */
const SMALL_SEGMENT_BYTES = 64 * KIB;
const GROUP_DISKS = 10;
/** The stall runs start taking snapshots this long after fio was started, and stop this long before it ends. */
const STALL_MARGIN_MS = 500;
/** A QD1 write slower than this counts as stalled ... */
const SLOW_WRITE_MS = 5;
/** ... and stalled writes completing closer together than this are one stall episode. */
const EPISODE_GAP_MS = 50;
const NS_PER_MS = 1e6;
const NS_PER_US = 1e3;

interface CreationCase {
  id: string;
  sizeBytes: number;
  segmentBytes: number;
  fill: Fill;
}

interface Plan {
  mode: BenchMode;
  /** The "1 GiB" disks: fills, group members and the stall runs. */
  smallBytes: number;
  headBytes: number;
  clientReps: number;
  ctlReps: number;
  groupReps: number;
  stallRuntimeSec: number;
  stallIntervalMs: number;
  /** 1 TiB disk, mapped: segment size and a 4 KiB write every `stride`. */
  map1T: { segmentBytes: number; stride: number };
  /** 64 TiB disk, mapped: segment size and a 4 KiB write every `stride`. */
  map64T: { segmentBytes: number; stride: number };
}

const PLANS: Record<BenchMode, Plan> = {
  full: {
    mode: "full",
    smallBytes: GIB,
    headBytes: 4 * MIB,
    clientReps: 7,
    ctlReps: 7,
    groupReps: 5,
    stallRuntimeSec: 5,
    stallIntervalMs: 250,
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
    map1T: { segmentBytes: 256 * MIB, stride: 256 * MIB },
    map64T: { segmentBytes: GIB, stride: 4 * GIB },
  },
  // Only checks that every number comes out: small disks, few mapped entries, short runs.
  smoke: {
    mode: "smoke",
    smallBytes: 64 * MIB,
    headBytes: 4 * MIB,
    clientReps: 3,
    ctlReps: 3,
    groupReps: 2,
    stallRuntimeSec: 1.5,
    stallIntervalMs: 200,
    map1T: { segmentBytes: 256 * MIB, stride: 16 * GIB },
    map64T: { segmentBytes: GIB, stride: TIB },
  },
};

/** Section 1's disks. Segments of 256 MiB or more for the sparse mappings: see the report's notes. */
function creationCases(plan: Plan): CreationCase[] {
  const head: Fill = { kind: "head", bytes: plan.headBytes };
  const stride = (size: number, step: number): Fill => ({ kind: "stride", stride: step, count: Math.floor(size / step) });
  return [
    { id: "c1g-head", sizeBytes: plan.smallBytes, segmentBytes: SMALL_SEGMENT_BYTES, fill: head },
    { id: "c1g-full", sizeBytes: plan.smallBytes, segmentBytes: SMALL_SEGMENT_BYTES, fill: { kind: "whole" } },
    { id: "c1t-head", sizeBytes: TIB, segmentBytes: MIB, fill: head },
    { id: "c1t-map", sizeBytes: TIB, segmentBytes: plan.map1T.segmentBytes, fill: stride(TIB, plan.map1T.stride) },
    { id: "c64t-head", sizeBytes: 64 * TIB, segmentBytes: MIB, fill: head },
    { id: "c64t-64k-head", sizeBytes: 64 * TIB, segmentBytes: 64 * KIB, fill: head },
    { id: "c64t-map", sizeBytes: 64 * TIB, segmentBytes: plan.map64T.segmentBytes, fill: stride(64 * TIB, plan.map64T.stride) },
  ];
}

/** The disk each stall run writes: written whole, its own so one run's snapshots do not touch the next. */
const STALL_DISKS: Record<StallKind, string> = { single: "stall", group: "stall-group" };
const groupDisk = (i: number) => `g${i}`;

// ---------------------------------------------------------------------------------------------
// Results

interface CreationResult extends CreationMeasurement {
  entries: number;
  target: CreationTarget | null;
}

interface SlowWrites {
  writes: number;
  episodes: number;
}

/** One QD1 writer run while snapshots (single or group) are taken. */
interface StallRun {
  kind: StallKind;
  result?: FioResult;
  /** From fio's per-write latency log: writes slower than SLOW_WRITE_MS, and how many episodes they form. */
  slow?: SlowWrites;
  /** Latency of each snapshot (or group snapshot) taken during the run (client). */
  snapshotMs: number[];
}

interface Results {
  creation: CreationResult[];
  /** `ctl disk info` wall time: what any ctl command costs before the controller does anything. */
  ctlFloorMs: number[];
  group: { disks: number; diskBytes: number; headBytes: number; clientMs: number[]; ctlMs: number[] } | null;
  stall: { runtimeSec: number; intervalMs: number; baseline?: FioResult; slowBaseline?: SlowWrites; runs: StallRun[] } | null;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

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

const QD1_WRITE = JOBS.find((job) => job.id === "randwrite-4k-qd1")!;

/** fio's job for the stall runs: 4k randwrite QD1, logging every write's completion latency under `prefix`. */
function stallJob(prefix: string): FioJob {
  return { ...QD1_WRITE, extraArgs: [`--write_lat_log=${prefix}`, "--log_avg_msec=0"] };
}

/** Bytes of pool the plan maps (disks written, snapshots' copies), rounded up to whole containers. */
function containersNeeded(plan: Plan, cases: CreationCase[]): number {
  let bytes = POOL_SLACK_BYTES;
  for (const c of cases) {
    if (c.fill.kind === "whole") bytes += c.sizeBytes;
    else if (c.fill.kind === "head") bytes += Math.max(c.fill.bytes, c.segmentBytes);
    else bytes += c.fill.count * c.segmentBytes;
  }
  // The stall disks and their copies, and the group disks' heads.
  bytes += 2 * STALL_KINDS.length * plan.smallBytes + GROUP_DISKS * plan.headBytes;
  return Math.ceil(bytes / LUN_BYTES);
}

// ---------------------------------------------------------------------------------------------
// The benchmark

class SnapshotBench {
  readonly results: Results = { creation: [], ctlFloorMs: [], group: null, stall: null };

  constructor(
    readonly plan: Plan,
    readonly session: OursSession,
  ) {}

  /** Every disk of every section, written as each needs. */
  async prepare(cases: CreationCase[]): Promise<void> {
    const { plan, session } = this;
    for (const c of cases) await session.createDisk(c.id, c.sizeBytes, c.segmentBytes);
    for (const kind of STALL_KINDS) await session.createDisk(STALL_DISKS[kind], plan.smallBytes, SMALL_SEGMENT_BYTES);
    for (let i = 0; i < GROUP_DISKS; i++) await session.createDisk(groupDisk(i), plan.smallBytes, SMALL_SEGMENT_BYTES);
    // The sparse mappings first, while no freed block can be handed out again (a reused block is zeroed).
    const order = [...cases].sort((a, b) => Number(b.fill.kind === "stride") - Number(a.fill.kind === "stride"));
    for (const c of order) await session.fill(c.id, c.fill);
    for (const kind of STALL_KINDS) await session.fill(STALL_DISKS[kind], { kind: "whole" });
    // A few MiB each: fio's start-up dominates, so these go in parallel.
    await Promise.all(Array.from({ length: GROUP_DISKS }, (_, i) => session.fill(groupDisk(i), { kind: "head", bytes: plan.headBytes })));
  }

  /** Section 1: snapshots of each disk through the client, then through ctl; each deleted before the next. */
  async creation(cases: CreationCase[]): Promise<void> {
    const { plan, session } = this;
    for (let rep = 1; rep <= plan.ctlReps; rep++) {
      this.results.ctlFloorMs.push(await timed(() => ctl(session.ours, ["disk", "info", cases[0]!.id])));
    }
    for (const c of cases) {
      const result: CreationResult = {
        id: c.id,
        sizeBytes: c.sizeBytes,
        segmentBytes: c.segmentBytes,
        entries: Math.ceil(c.sizeBytes / c.segmentBytes),
        mapped: await session.mappedEntries(c.id),
        how: describeFill(c.fill, c.segmentBytes),
        target: CREATION_TARGETS[c.id] ?? null,
        clientMs: [],
        ctlMs: [],
      };
      this.results.creation.push(result);
      for (let rep = 1; rep <= plan.clientReps; rep++) {
        const name = `${c.id}-s${rep}`;
        result.clientMs.push(await timed(() => session.request("snapshot.create", { source: c.id, name })));
        await session.deleteDisk(name);
      }
      for (let rep = 1; rep <= plan.ctlReps; rep++) {
        const name = `${c.id}-c${rep}`;
        result.ctlMs.push(await timed(() => ctl(session.ours, ["snapshot", "create", c.id, name])));
        await session.deleteDisk(name);
      }
      log(`${c.id}: ${formatCount(result.mapped)} of ${formatCount(result.entries)} entries mapped; snapshot ${formatMs(median(result.clientMs))} ms (client), ${formatMs(median(result.ctlMs))} ms (ctl)`);
    }
  }

  /** A snapshot of each of `disks`, named after it with `suffix`. */
  private groupPairs(disks: string[], suffix: string): { source: string; name: string }[] {
    return disks.map((disk) => ({ source: disk, name: `${disk}-${suffix}` }));
  }

  /** Section 2: `snapshot.group` of the 10 group disks, through the client and through ctl. */
  async group(): Promise<void> {
    const { plan, session } = this;
    const group = { disks: GROUP_DISKS, diskBytes: plan.smallBytes, headBytes: plan.headBytes, clientMs: [] as number[], ctlMs: [] as number[] };
    this.results.group = group;
    const members = Array.from({ length: GROUP_DISKS }, (_, i) => groupDisk(i));
    const deleteAll = async (suffix: string) => {
      for (const pair of this.groupPairs(members, suffix)) await session.deleteDisk(pair.name);
    };
    for (let rep = 1; rep <= plan.groupReps; rep++) {
      group.clientMs.push(await timed(() => session.request("snapshot.group", { pairs: this.groupPairs(members, `s${rep}`) })));
      await deleteAll(`s${rep}`);
    }
    for (let rep = 1; rep <= plan.groupReps; rep++) {
      const args = this.groupPairs(members, `c${rep}`).map((pair) => `${pair.source}=${pair.name}`);
      group.ctlMs.push(await timed(() => ctl(session.ours, ["snapshot", "group", ...args])));
      await deleteAll(`c${rep}`);
    }
    log(`group of ${GROUP_DISKS}: ${formatMs(median(group.clientMs))} ms (client), ${formatMs(median(group.ctlMs))} ms (ctl)`);
  }

  /**
   * Section 3: fio 4k randwrite QD1 on the single-stall disk without snapshots; then, on each stall
   * disk, again while a snapshot (of it alone, or a group snapshot of it and GROUP_DISKS - 1 group
   * disks) is taken every interval. Snapshots are kept until the run ends, then deleted.
   */
  async stall(): Promise<void> {
    const { plan } = this;
    const stall: NonNullable<Results["stall"]> = { runtimeSec: plan.stallRuntimeSec, intervalMs: plan.stallIntervalMs, runs: [] };
    this.results.stall = stall;
    await settle(this.session.dir);
    const baselinePrefix = join(this.session.dir, "stall-baseline");
    stall.baseline = await runFio(this.session.uri(STALL_DISKS.single), stallJob(baselinePrefix), { runtimeSec: plan.stallRuntimeSec, rampSec: 0 }, `${baselinePrefix}.json`);
    stall.slowBaseline = slowWrites(`${baselinePrefix}_clat.1.log`);
    log(`stall baseline: max ${formatMs(stall.baseline.clatMaxNs / NS_PER_MS)} ms, p99 ${formatMs(fioMs(stall.baseline.clatP99Ns))} ms`);
    for (const kind of STALL_KINDS) {
      const run: StallRun = { kind, snapshotMs: [] };
      stall.runs.push(run);
      await this.stallRun(run);
    }
  }

  /** Pairs of one snapshot round `n` of `kind`: the stall disk alone, or it and the first group disks. */
  private stallPairs(kind: StallKind, n: number): { source: string; name: string }[] {
    const disk = STALL_DISKS[kind];
    if (kind === "single") return [{ source: disk, name: `${disk}-s${n}` }];
    const others = Array.from({ length: GROUP_DISKS - 1 }, (_, i) => groupDisk(i));
    return this.groupPairs([disk, ...others], `gs${n}`);
  }

  private async stallRun(run: StallRun): Promise<void> {
    const { plan, session } = this;
    const disk = STALL_DISKS[run.kind];
    await settle(session.dir);
    let fioDone = false;
    const prefix = join(session.dir, `stall-${run.kind}`);
    const fio = runFio(session.uri(disk), stallJob(prefix), { runtimeSec: plan.stallRuntimeSec, rampSec: 0 }, `${prefix}.json`).finally(() => {
      fioDone = true;
    });
    fio.catch(() => {}); // awaited below; this only keeps an early failure from being unhandled meanwhile
    const taken: string[] = [];
    try {
      await delay(STALL_MARGIN_MS);
      const stopAt = performance.now() + plan.stallRuntimeSec * 1000 - 2 * STALL_MARGIN_MS;
      while (!fioDone && performance.now() < stopAt) {
        const pairs = this.stallPairs(run.kind, run.snapshotMs.length + 1);
        const ms = await timed(() =>
          run.kind === "single" ? session.request("snapshot.create", { source: pairs[0]!.source, name: pairs[0]!.name }) : session.request("snapshot.group", { pairs }),
        );
        taken.push(...pairs.map((pair) => pair.name));
        run.snapshotMs.push(ms);
        await delay(Math.max(0, plan.stallIntervalMs - ms));
      }
      run.result = await fio;
      run.slow = slowWrites(`${prefix}_clat.1.log`);
    } finally {
      await fio.catch(() => undefined);
      for (const name of taken) await session.deleteDisk(name);
    }
    log(`stall (${run.kind}) with ${run.snapshotMs.length} snapshots: max ${formatMs(run.result.clatMaxNs / NS_PER_MS)} ms, p99 ${formatMs(fioMs(run.result.clatP99Ns))} ms`);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function fioMs(ns: number | null | undefined): number {
  return ns === null || ns === undefined ? Number.NaN : ns / NS_PER_MS;
}

function verdict(met: boolean): string {
  return met ? "met" : "**missed**";
}

function creationTable(results: Results): string[] {
  const header = ["disk", "segment", "entries", "mapped", "how it was written", "client, ms", "ctl end to end, ms", "µs per mapped entry", "target"];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  for (const r of results.creation) {
    const usPerEntry = usPerMappedEntry(r);
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
  const header = ["fio 4k randwrite QD1", "IOPS", "mean clat, µs", "p99, ms", "p99.9, ms", "max, ms", `writes > ${SLOW_WRITE_MS} ms (episodes)`, "snapshot latency (client), ms", `target: max ≤ ${TARGET_STALL_MS} ms`];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  const row = (label: string, result: FioResult | undefined, slow: SlowWrites | undefined, snapshotMs: number[] | null) => {
    if (!result) return markdownRow([label, ...header.slice(1).map(() => "—")]);
    const max = fioMs(result.clatMaxNs);
    return markdownRow([
      label,
      formatCount(Math.round(result.iops)),
      (result.clatMeanNs / NS_PER_US).toFixed(0),
      formatMs(fioMs(result.clatP99Ns)),
      formatMs(fioMs(result.clatP999Ns)),
      `**${formatMs(max)}**`,
      slow ? `${slow.writes} (${slow.episodes})` : "—",
      snapshotMs ? msCell(snapshotMs) : "—",
      snapshotMs ? verdict(max <= TARGET_STALL_MS) : "—",
    ]);
  };
  lines.push(row("no snapshots", stall?.baseline, stall?.slowBaseline, null));
  for (const run of stall?.runs ?? []) {
    const what = run.kind === "single" ? "snapshots of its disk" : `group snapshots of its disk and ${GROUP_DISKS - 1} others`;
    lines.push(row(`during ${run.snapshotMs.length} ${what}, one every ${stall!.intervalMs} ms`, run.result, run.slow, run.snapshotMs));
  }
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
  out.push("### 3. Write stall of a QD1 writer during snapshots", "", ...stallTable(results));
  return out;
}

function notes(plan: Plan): string[] {
  return [
    "How it was measured:",
    "",
    `- One \`ctl up\` (controller + agent, default workers), NBD and control on unix sockets; the pool is sparse files of ${formatBytes(LUN_BYTES)} (ext4 files stop at 16 TiB), as many as the mapped segments need.`,
    `- **1.** Each row: ${plan.clientReps} snapshots through \`ControllerClient.request("snapshot.create")\` on an open connection, then ${plan.ctlReps} through a spawned \`bun ctl/main.ts snapshot create\` (wall time of the process); median (min–max). Each snapshot is deleted before the next (not timed). ` +
      "µs per mapped entry = median client latency / mapped entries (fixed costs included). " +
      "Sparse mappings of the big disks use large segments (256 MiB, 1 GiB) so that every entry of the table is mapped with one 4 KiB write each, within the run time.",
    `- **2.** \`snapshot.group\` (client) and \`ctl snapshot group SRC=NAME ...\` (spawned), ${plan.groupReps} times each, every group deleted before the next.`,
    `- **3.** fio (nbd engine) 4k randwrite QD1, ${plan.stallRuntimeSec} s time-based, on a ${formatBytes(plan.smallBytes)} disk with 64 KiB segments written whole first (one disk per kind of run): once without snapshots, ` +
      `once while a snapshot of it is taken every ${plan.stallIntervalMs} ms, and once while a group snapshot of it and ${GROUP_DISKS - 1} group disks is (client, from ${STALL_MARGIN_MS} ms after fio's start to ${STALL_MARGIN_MS} ms before its end; kept until the run ends). ` +
      "Completion latencies (clat) from fio's JSON; they include the copy-on-write faults every snapshot causes, not only the pause while the snapshot is taken. " +
      `Slow writes from fio's per-write latency log (\`--write_lat_log\`): writes over ${SLOW_WRITE_MS} ms, and the episodes they form (slow writes completing within ${EPISODE_GAP_MS} ms of each other are one); about one episode per snapshot means each snapshot stalls the writer once.`,
  ];
}

function markdownReport(plan: Plan, machine: MachineInfo, results: Results, targets: TargetResult[], errors: string[], startedAt: Date): string {
  const out = [`# Snapshots: creation latency, group snapshots, write stalls (${plan.mode})`, "", `Run ${startedAt.toISOString()}.`, ""];
  out.push(...formatMachineInfo(machine), "", ...tables(results), "", "## Targets", "", targetsTable(targets), "", ...notes(plan));
  if (errors.length > 0) out.push("", "## Failures", "", ...errors.map((error) => `- ${error}`));
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
  const runs: [string, FioResult | undefined][] = [["baseline", stall?.baseline], ...STALL_KINDS.map((kind): [string, FioResult | undefined] => [kind, stall?.runs.find((run) => run.kind === kind)?.result])];
  for (const [name, result] of runs) {
    if (!result || !finite(result.clatMaxNs) || !finite(result.clatP99Ns) || !finite(result.iops)) missing.push(`stall ${name}`);
  }
  for (const kind of STALL_KINDS) if (!stall?.runs.find((run) => run.kind === kind)?.snapshotMs.length) missing.push(`stall ${kind}: no snapshot taken`);
  return missing;
}

function targetsOf(results: Results): TargetResult[] {
  const stalls = (results.stall?.runs ?? []).flatMap((run) =>
    run.result ? [{ kind: run.kind, maxMs: fioMs(run.result.clatMaxNs), snapshots: run.snapshotMs.length, intervalMs: results.stall!.intervalMs }] : [],
  );
  return snapshotTargets(results.creation, stalls);
}

// ---------------------------------------------------------------------------------------------
// Main

const USAGE = `usage: bun bench/snapshot.ts [--quick | --smoke] [--results DIR] [--keep] [--verbose]
  --quick        fewer repetitions, shorter runs, a 64 TiB disk mapped every 4th segment (about 2 minutes)
  --smoke        small disks, short runs; exits 1 unless every number is there (seconds)
  --results DIR  where snapshot-latest.{json,md} (snapshot-smoke.* with --smoke) go (default bench/results)
  --keep         keep the temp directory (server data, fio output) for inspection
  --verbose      echo every server's output`;

async function run(plan: Plan, dir: string, verbose: boolean): Promise<{ results: Results; session: OursSession }> {
  const cases = creationCases(plan);
  const session = await OursSession.start(dir, LUN_BYTES, verbose);
  try {
    const bench = new SnapshotBench(plan, session);
    const containers = containersNeeded(plan, cases);
    log(`bench: ${plan.mode}, ${containers} container(s) of ${formatBytes(LUN_BYTES)}, in ${dir}`);
    await session.addContainers(containers, LUN_BYTES);
    await session.section("prepare", () => bench.prepare(cases));
    await settle(dir);
    await session.section("1. creation", () => bench.creation(cases));
    await session.section("2. group", () => bench.group());
    await session.section("3. stall", () => bench.stall());
    return { results: bench.results, session };
  } finally {
    await session.stop();
  }
}

async function main(argv: string[]): Promise<number> {
  const args = parseBenchArgs(argv, ["results"]);
  const plan = PLANS[args.mode];
  const { result, machine, startedAt } = await inTempDir("tabledisk-snapshot-", args.keep, (dir) => run(plan, dir, args.verbose));
  const { results, session } = result;
  const { errors } = session;
  const targets = targetsOf(results);
  const markdown = markdownReport(plan, machine, results, targets, errors, startedAt);
  console.log(`\n${tables(results).join("\n")}\n\n${targetsTable(targets)}`);
  const details = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), machine, plan, results, fills: session.fills, errors };
  log(`bench: done in ${((Date.now() - startedAt.getTime()) / 1000).toFixed(0)} s`);
  return finishPart(resultsDir(args.values.results), "snapshot", plan.mode, { targets, details, markdown }, { missing: missingNumbers(results, creationCases(plan)), failures: errors.length });
}

await runScript(USAGE, () => main(process.argv.slice(2)));
