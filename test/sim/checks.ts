// Invariants of the controller's state, checked when it is quiet and after every restart:
// reference counts, tables and allocator agree (the real checkConsistency); a segment shared by
// several entries is No-write in every one of them (else a write through one would show in the
// others); and the live state is exactly what recovering the durable log gives.
import { Catalog, parseRecord } from "../../engine/catalog.ts";
import { checkConsistency } from "../../engine/check.ts";
import type { Pool } from "../../engine/pool.ts";
import { ENTRY_NO_WRITE, entryContainer, entryOffsetBytes, entryState } from "../../wasm/entry.ts";

/** Everything wrong with the state of `catalog` and `pool`. */
export function stateProblems(catalog: Catalog, pool: Pool): string[] {
  return [...checkConsistency(catalog, pool).problems, ...writableSharedSegments(catalog)];
}

function writableSharedSegments(catalog: Catalog): string[] {
  const problems: string[] = [];
  for (const disk of catalog.disks.values()) {
    for (const [index, word] of disk.table.locations()) {
      if (catalog.references(word) > 1 && (entryState(word) & ENTRY_NO_WRITE) === 0) {
        problems.push(`disk ${disk.name} entry ${index}: segment ${entryContainer(word)}:${entryOffsetBytes(word)} is shared but writable`);
      }
    }
  }
  return problems;
}

/** Where the live catalog differs from the one the durable log recovers to. */
export function recoveryProblems(live: Catalog, durableRecords: object[]): string[] {
  const recovered = new Catalog();
  for (const record of durableRecords) recovered.apply(parseRecord(record));
  const problems: string[] = [];
  const describe = (catalog: Catalog) =>
    JSON.stringify({
      luns: [...catalog.luns.values()],
      agents: [...catalog.agents].sort(),
      disks: [...catalog.disks.values()]
        .sort((a, b) => a.id - b.id)
        .map(({ table, ...disk }) => ({ ...disk, entries: [...table.nonZero()] })),
    });
  const [a, b] = [describe(live), describe(recovered)];
  if (a !== b) problems.push(`the live state differs from what the durable log recovers to:\n  live:      ${a}\n  recovered: ${b}`);
  return problems;
}
