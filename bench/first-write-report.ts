// The first-write benchmark's cases (bench/first-write.ts), its table and its targets: 4k randwrite
// QD32 where every write is the first one to its segment, on a fresh thin disk (it allocates), on the
// origin of a fresh forward or reverse snapshot (it copies), at 64 KiB and 1 MiB segments; against the
// same writes on an allocated disk and on a fresh qemu-nbd qcow2 overlay.
import type { FioResult } from "./fio-jobs.ts";
import { WRITE_BYTES } from "./disk-fills.ts";
import { formatIops, markdownRow, median } from "./report.ts";
import { type TargetResult, target } from "./targets.ts";
import { KIB, MIB, formatBytes, formatCount, iopsCell } from "./units.ts";

export type FirstWriteKind = "thin" | "forward" | "reverse" | "allocated" | "qemu-overlay";

export interface FirstWriteCase {
  id: string;
  kind: FirstWriteKind;
  segmentBytes: number;
  label: string;
}

const SMALL = 64 * KIB;
const LARGE = MIB;

export const FIRST_WRITE_CASES: readonly FirstWriteCase[] = [
  { id: "thin-64k", kind: "thin", segmentBytes: SMALL, label: "ours, fresh thin disk (allocates)" },
  { id: "thin-1m", kind: "thin", segmentBytes: LARGE, label: "ours, fresh thin disk (allocates)" },
  { id: "forward-64k", kind: "forward", segmentBytes: SMALL, label: "ours, forward delta, fresh snapshot's origin (copy-on-write)" },
  { id: "forward-1m", kind: "forward", segmentBytes: LARGE, label: "ours, forward delta, fresh snapshot's origin (copy-on-write)" },
  { id: "reverse-64k", kind: "reverse", segmentBytes: SMALL, label: "ours, reverse delta, fresh snapshot's origin (copy-on-write)" },
  { id: "reverse-1m", kind: "reverse", segmentBytes: LARGE, label: "ours, reverse delta, fresh snapshot's origin (copy-on-write)" },
  { id: "allocated-64k", kind: "allocated", segmentBytes: SMALL, label: "ours, allocated disk (no allocation, no copy)" },
  { id: "qemu-overlay-64k", kind: "qemu-overlay", segmentBytes: SMALL, label: "qemu-nbd, fresh qcow2 overlay over a written raw base (copy-on-write)" },
];

export interface FirstWriteRun {
  caseId: string;
  rep: number;
  result?: FioResult;
  /** Latency of the snapshot taken just before the run (forward and reverse cases), ms. */
  snapshotMs?: number;
  error?: string;
}

const ALLOCATED = "allocated-64k";
const QEMU_OVERLAY = "qemu-overlay-64k";

interface FirstWriteGoal {
  id: string;
  group: string;
  label: string;
  caseId: string;
  referenceId: string;
  ratio: number;
}

const GOALS: readonly FirstWriteGoal[] = [
  {
    id: "thin-vs-allocated/64k/randwrite-4k-qd32",
    group: "Fresh thin disk vs allocated disk",
    label: "4k randwrite QD32, every write allocates, 64 KiB segments",
    caseId: "thin-64k",
    referenceId: ALLOCATED,
    ratio: 0.5,
  },
  {
    id: "forward-snapshot-vs-qemu-overlay/64k/randwrite-4k-qd32",
    group: "Fresh snapshot vs qemu-nbd qcow2 overlay",
    label: "4k randwrite QD32, every write copies, forward delta, 64 KiB segments / clusters",
    caseId: "forward-64k",
    referenceId: QEMU_OVERLAY,
    ratio: 2,
  },
];

/** IOPS of every successful run of a case. */
export function caseIops(runs: readonly FirstWriteRun[], caseId: string): number[] {
  return runs.flatMap((run) => (run.caseId === caseId && run.result ? [run.result.iops] : []));
}

function medianIops(runs: readonly FirstWriteRun[], caseId: string): number {
  const iops = caseIops(runs, caseId);
  return iops.length > 0 ? median(iops) : Number.NaN;
}

export function firstWriteTargetIds(): string[] {
  return GOALS.map((goal) => goal.id);
}

export function firstWriteTargets(runs: readonly FirstWriteRun[]): TargetResult[] {
  return GOALS.map((goal) => {
    const ours = medianIops(runs, goal.caseId);
    const reference = medianIops(runs, goal.referenceId);
    return target({
      id: goal.id,
      group: goal.group,
      label: goal.label,
      measured: ours / reference,
      unit: "x",
      goal: { op: ">=", value: goal.ratio },
      detail: `${goal.caseId} ${formatIops(ours)} IOPS / ${goal.referenceId} ${formatIops(reference)} IOPS`,
    });
  });
}

function ratioCell(runs: readonly FirstWriteRun[], caseId: string, referenceId: string): string {
  const ratio = medianIops(runs, caseId) / medianIops(runs, referenceId);
  return Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : "—";
}

/** One row per case: IOPS median (min–max), mean latency, writes per run, and ratios to the references. */
export function firstWriteTable(runs: readonly FirstWriteRun[]): string[] {
  const header = ["4k randwrite QD32, first writes", "segment", "IOPS", "mean clat, µs", "writes per run", "/ allocated disk", "/ qemu overlay"];
  const lines = [markdownRow(header), markdownRow(header.map(() => "---"))];
  for (const c of FIRST_WRITE_CASES) {
    const results = runs.flatMap((run) => (run.caseId === c.id && run.result ? [run.result] : []));
    const mean = results.length > 0 ? median(results.map((r) => r.clatMeanNs / 1000)).toFixed(0) : "—";
    const writes = results.length > 0 ? formatCount(Math.round(median(results.map((r) => r.ioBytes / WRITE_BYTES)))) : "—";
    const cells = [c.label, formatBytes(c.segmentBytes), iopsCell(caseIops(runs, c.id)), mean, writes];
    cells.push(c.id === ALLOCATED ? "—" : ratioCell(runs, c.id, ALLOCATED), c.id === QEMU_OVERLAY ? "—" : ratioCell(runs, c.id, QEMU_OVERLAY));
    lines.push(markdownRow(cells));
  }
  return lines;
}
