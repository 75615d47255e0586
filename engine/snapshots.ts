// Snapshots as table copies (R9, process 300), rollback and table diffs (R17): all of it works on
// tables only; no data moves.
import type { Disk, DiskMode } from "./catalog.ts";
import type { TableContext } from "./faults.ts";
import type { SettableState } from "./wire/messages.ts";
import { entryLocation } from "../wasm/entry.ts";
import { assert } from "./util/assert.ts";

export interface SnapshotContext extends TableContext {
  /** Sets states on a disk's whole table at every agent mapping it (step 320/325). */
  pushStates(disk: Disk, set: SettableState[], blocking: boolean): Promise<void>;
  /** Makes every agent serve a new disk (new_table); says which agents could not load it. */
  exportDisk(disk: Disk): Promise<string[]>;
  newDiskId(): number;
}

export interface SnapshotRequest {
  source: Disk;
  name: string;
  mode: DiskMode;
  /** Step 325: Invalid instead of Nw at the agents (reads fault too, until reloaded). */
  invalidate: boolean;
  /** The snapshot is protected from its creation on (read-only, cannot be deleted). */
  protect: boolean;
}

/** A snapshot made, and the agents that could not load its table (see AgentFleet.exportDisk). */
export interface CreatedSnapshot {
  disk: Disk;
  notLoaded: string[];
}

/**
 * Process 300 for one or more disks at once (a consistency group has quiesced them before): Nw in
 * the persistent tables (310), pushed to every agent with the blocking flag so writes in flight
 * finish first (320/325), then the table copies (330). Each step is one log record, so a crash
 * leaves either no snapshot or a whole one (Nw without a snapshot is cleared by the next write:
 * the segment is not shared). The caller holds the family locks.
 */
export async function createSnapshots(ctx: SnapshotContext, requests: SnapshotRequest[]): Promise<CreatedSnapshot[]> {
  await ctx.persist([{ t: "nw", disks: requests.map((request) => request.source.id) }]);
  ctx.failpoint("snapshot-after-nw");
  await Promise.all(requests.map((request) => ctx.pushStates(request.source, [request.invalidate ? "invalid" : "nw"], true)));
  ctx.failpoint("snapshot-after-push");
  const firstId = ctx.newDiskId();
  const disks = requests.map((request, i) => ({
    source: request.source.id,
    id: firstId + i,
    name: request.name,
    mode: request.mode,
    protected: request.protect || undefined,
  }));
  await ctx.persist([{ t: "clone", disks }]);
  ctx.failpoint("snapshot-after-clone");
  // The snapshots exist from here on, whatever an agent says.
  const created = disks.map((disk) => ctx.catalog.disk(disk.id));
  return Promise.all(created.map(async (disk) => ({ disk, notLoaded: await ctx.exportDisk(disk) })));
}

/**
 * Rollback: `disk` becomes a copy of `snapshot`'s table. The snapshot's segments are shared from
 * then on, so they get Nw first (and its agents finish writing); the disk's agents drop their
 * entries (Invalid, blocking) before its old segments can be freed.
 */
export async function rollback(ctx: SnapshotContext, disk: Disk, snapshot: Disk): Promise<void> {
  assert(disk.family === snapshot.family && disk.table.entryCount === snapshot.table.entryCount, "rollback between unrelated disks");
  await ctx.persist([{ t: "nw", disks: [snapshot.id] }]);
  await ctx.pushStates(snapshot, ["nw"], true);
  await ctx.pushStates(disk, ["invalid"], true);
  ctx.release(await ctx.persist([{ t: "rollback", disk: disk.id, from: snapshot.id }]));
}

/** Byte ranges where two disks' tables point at different data (Nw aside): for incremental backup. */
export function diff(a: Disk, b: Disk): { offset: number; length: number }[] {
  assert(a.segmentShift === b.segmentShift && a.size === b.size, "diff of disks of different geometry");
  const segmentSize = 2 ** a.segmentShift;
  const ranges: { offset: number; length: number }[] = [];
  const indexes = new Set<number>();
  for (const [index] of a.table.nonZero()) indexes.add(index);
  for (const [index] of b.table.nonZero()) indexes.add(index);
  for (const index of [...indexes].sort((x, y) => x - y)) {
    const wordA = a.table.get(index);
    const wordB = b.table.get(index);
    const same = entryLocation(wordA) === entryLocation(wordB) && (entryLocation(wordA) !== -1 || wordA === wordB);
    if (same) continue;
    const offset = index * segmentSize;
    const length = Math.min(segmentSize, a.size - offset);
    const last = ranges[ranges.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else ranges.push({ offset, length });
  }
  return ranges;
}
