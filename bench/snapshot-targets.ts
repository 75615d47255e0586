// The goals for snapshots (bench/snapshot.ts): creation cost per mapped entry, an empty 64 TiB
// disk's snapshot end to end through `ctl`, and the longest write a QD1 writer sees while snapshots
// (single or group) are taken.
import { median } from "./report.ts";
import { type TargetResult, target } from "./targets.ts";
import { formatBytes, formatCount, formatMs } from "./units.ts";

export const TARGET_US_PER_ENTRY = 1;
export const TARGET_CTL_EMPTY_64T_MS = 20;
export const TARGET_STALL_MS = 20;

export type CreationTarget = "per-entry" | "ctl-empty";

/** Which creation cases (by id) are judged, and against what. */
export const CREATION_TARGETS: Readonly<Record<string, CreationTarget>> = {
  "c1g-full": "per-entry",
  "c1t-map": "per-entry",
  "c64t-map": "per-entry",
  "c64t-head": "ctl-empty",
  "c64t-64k-head": "ctl-empty",
};

export type StallKind = "single" | "group";
export const STALL_KINDS: readonly StallKind[] = ["single", "group"];

/** What section 1 measured for one disk. */
export interface CreationMeasurement {
  id: string;
  sizeBytes: number;
  segmentBytes: number;
  mapped: number;
  how: string;
  clientMs: number[];
  ctlMs: number[];
}

/** The longest QD1 write during one stall run, and how the snapshots were taken. */
export interface StallMeasurement {
  kind: StallKind;
  maxMs: number;
  snapshots: number;
  intervalMs: number;
}

function creationTargetId(id: string, kind: CreationTarget): string {
  return kind === "per-entry" ? `snapshot-create-per-entry/${id}` : `snapshot-create-ctl-empty/${id}`;
}

function stallTargetId(kind: StallKind): string {
  return `snapshot-stall/${kind}`;
}

export function snapshotTargetIds(): string[] {
  return [...Object.entries(CREATION_TARGETS).map(([id, kind]) => creationTargetId(id, kind)), ...STALL_KINDS.map(stallTargetId)];
}

/** µs of the median client latency per mapped entry (fixed costs included). */
export function usPerMappedEntry(m: CreationMeasurement): number {
  return m.mapped > 0 && m.clientMs.length > 0 ? (median(m.clientMs) * 1000) / m.mapped : Number.NaN;
}

function creationTarget(m: CreationMeasurement, kind: CreationTarget): TargetResult {
  const entries = m.segmentBytes > 0 ? Math.ceil(m.sizeBytes / m.segmentBytes) : 0;
  const disk = `${formatBytes(m.sizeBytes)} disk, ${formatBytes(m.segmentBytes)} segments, ${formatCount(m.mapped)} of ${formatCount(entries)} entries mapped`;
  if (kind === "per-entry") {
    return target({
      id: creationTargetId(m.id, kind),
      group: "Snapshot creation",
      label: `per mapped entry: ${disk}`,
      measured: usPerMappedEntry(m),
      unit: "µs",
      goal: { op: "<=", value: TARGET_US_PER_ENTRY },
      detail: `client ${formatMs(median(m.clientMs))} ms / ${formatCount(m.mapped)} mapped entries; ${m.how}`,
    });
  }
  return target({
    id: creationTargetId(m.id, kind),
    group: "Snapshot creation",
    label: `ctl snapshot create, end to end: ${disk}`,
    measured: m.ctlMs.length > 0 ? median(m.ctlMs) : Number.NaN,
    unit: "ms",
    goal: { op: "<=", value: TARGET_CTL_EMPTY_64T_MS },
    detail: `client ${formatMs(median(m.clientMs))} ms; ${m.how}; median of ${m.ctlMs.length} ctl runs`,
  });
}

export function snapshotTargets(creation: CreationMeasurement[], stalls: StallMeasurement[]): TargetResult[] {
  const targets: TargetResult[] = [];
  for (const [id, kind] of Object.entries(CREATION_TARGETS)) {
    const m = creation.find((candidate) => candidate.id === id);
    const empty: CreationMeasurement = { id, sizeBytes: 0, segmentBytes: 0, mapped: 0, how: "not measured", clientMs: [], ctlMs: [] };
    targets.push(creationTarget(m ?? empty, kind));
  }
  for (const kind of STALL_KINDS) {
    const stall = stalls.find((candidate) => candidate.kind === kind);
    const what = kind === "single" ? "snapshot" : "group snapshot";
    targets.push(
      target({
        id: stallTargetId(kind),
        group: "Write stall during snapshots",
        label: `longest 4k randwrite QD1 write while a ${what} is taken every ${stall?.intervalMs ?? "?"} ms`,
        measured: stall?.maxMs ?? Number.NaN,
        unit: "ms",
        goal: { op: "<=", value: TARGET_STALL_MS },
        detail: stall ? `${stall.snapshots} ${what}s during the run` : "not measured",
      }),
    );
  }
  return targets;
}
