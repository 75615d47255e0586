// What the controller reports about its disks, containers, agents and pool (ctl's list, info and
// status), read from the tables without changing anything.
import type { Disk } from "./catalog.ts";
import type { ControllerCore } from "./controller-core.ts";
import type { CreatedSnapshot } from "./snapshots.ts";
import { formatSize } from "./util/size.ts";
import { WARNING_LENGTH_MAX, type AgentSummary, type ControllerRequests, type DiskSummary, type LunSummary, type ResultOf } from "./wire/messages.ts";
import { entryContainer } from "../wasm/entry.ts";

export type PoolFigures = ResultOf<ControllerRequests, "status">["pool"];

export function diskSummary(core: ControllerCore, disk: Disk): DiskSummary {
  const segmentSize = 2 ** disk.segmentShift;
  let exclusive = 0;
  for (const [, word] of disk.table.locations()) if (core.catalog.references(word) === 1) exclusive += 1;
  return {
    id: disk.id,
    name: disk.name,
    size: disk.size,
    segmentSize,
    mode: disk.mode,
    parent: disk.deletedParent ?? (disk.parent === null ? undefined : core.catalog.disks.get(disk.parent)?.name),
    // (A log from before deleted parents were named knows only that the parent is gone.)
    parentDeleted: (disk.parent !== null && !core.catalog.disks.has(disk.parent)) || undefined,
    protected: disk.protected,
    exports: disk.exports ?? undefined,
    allocatedBytes: disk.table.locatedCount * segmentSize,
    exclusiveBytes: exclusive * segmentSize,
    sharedBytes: (disk.table.locatedCount - exclusive) * segmentSize,
  };
}

export function createdSummary(core: ControllerCore, { disk, notLoaded }: CreatedSnapshot): ResultOf<ControllerRequests, "snapshot.create"> {
  return { ...diskSummary(core, disk), warning: warningOf([notExportedWarning(disk, notLoaded)]) };
}

export function lunSummary(core: ControllerCore, id: number): LunSummary {
  const lun = core.catalog.luns.get(id)!;
  let errorEntries = 0;
  if (lun.failed !== null) for (const disk of core.catalog.disks.values()) errorEntries += segmentsOn(disk, id).length;
  return {
    id,
    path: lun.path,
    size: lun.size,
    usedBytes: core.pool.usedBytes(id),
    freeBytes: core.pool.freeBytes(id),
    failed: lun.failed ?? undefined,
    errorEntries,
  };
}

export function agentSummaries(core: ControllerCore): AgentSummary[] {
  return core.agents.all().map((agent) => ({
    id: agent.id,
    nbd: agent.nbd,
    connected: agent.connected,
    disks: [...agent.disks].flatMap((id) => core.catalog.disks.get(id)?.name ?? []),
  }));
}

export function statusOf(core: ControllerCore): ResultOf<ControllerRequests, "status"> {
  return {
    controller: { disks: core.catalog.disks.size, logBytes: core.tables.sizeBytes },
    agents: agentSummaries(core),
    pool: poolFigures(core),
    disks: [...core.catalog.disks.values()].map((disk) => diskSummary(core, disk)),
  };
}

export function poolFigures(core: ControllerCore): PoolFigures {
  const luns = [...core.catalog.luns.values()];
  const sizeBytes = luns.reduce((sum, lun) => sum + lun.size, 0);
  const usedBytes = luns.reduce((sum, lun) => sum + core.pool.usedBytes(lun.id), 0);
  const freeBytes = luns.reduce((sum, lun) => sum + (lun.failed === null ? core.pool.freeBytes(lun.id) : 0), 0);
  let provisionedBytes = 0;
  for (const disk of core.catalog.disks.values()) provisionedBytes += disk.size;
  return { sizeBytes, usedBytes, freeBytes, containers: luns.length, provisionedBytes, overcommit: overcommitRatio(provisionedBytes, sizeBytes) };
}

/** Thin disks may be larger than the pool (as LVM thin volumes may); a disk larger than the space
 *  still free is accepted with a warning, since writes fail with ENOSPC once the pool is full. */
export function overcommitWarning(core: ControllerCore, disk: Disk): string | undefined {
  const { freeBytes, provisionedBytes, sizeBytes } = poolFigures(core);
  if (disk.size <= freeBytes) return undefined;
  return (
    `disk ${disk.name} (${formatSize(disk.size)}) is larger than the pool's free space (${formatSize(freeBytes)}); ` +
    `the pool is overcommitted ${overcommitRatio(provisionedBytes, sizeBytes).toFixed(2)}x: writes fail with ENOSPC once it is full (add storage with ctl lun add)`
  );
}

/** A created disk exists whatever its agents say: the caller learns where it is not exported. */
export function notExportedWarning(disk: Disk, notLoaded: string[]): string | undefined {
  if (notLoaded.length === 0) return undefined;
  return `disk ${disk.name} was created, but ${notLoaded.join("; ")}: it is not exported there until that agent registers again`;
}

/** The warnings of a create as one, cut to what the wire carries. */
export function warningOf(parts: (string | undefined)[]): string | undefined {
  const warning = parts.filter((part) => part !== undefined).join("; ");
  if (warning === "") return undefined;
  return warning.length <= WARNING_LENGTH_MAX ? warning : `${warning.slice(0, WARNING_LENGTH_MAX - 3)}...`;
}

/** The segments of `disk` whose storage lies on container `lun`. */
export function segmentsOn(disk: Disk, lun: number): number[] {
  const segments: number[] = [];
  for (const [index, word] of disk.table.locations()) if (entryContainer(word) === lun) segments.push(index);
  return segments;
}

/** Disks provisioned per byte of pool. */
function overcommitRatio(provisionedBytes: number, poolBytes: number): number {
  return poolBytes === 0 ? 0 : provisionedBytes / poolBytes;
}
