// Mapping changes a controller restart lost, handed back by the agents that wrote through them.
//
// Faults answer with mapping changes that are not durable yet (a FLUSH commits them; see
// faults.ts): a controller that dies first loses them, though the agent may have acknowledged
// writes through them. The agent still knows them (its fault answers), so when it registers with
// the new controller it hands them back, as an NFS client re-sends unstable writes when the
// server's write verifier changes.
//
// Each answer says where in its run's records the disk's latest uncommitted change lies (`at`),
// and the log counts each run's records (the catalog's "run" record), so the new controller knows
// which of them reached the disk: an entry at or below that count is durable, and the tables,
// changed later or not, already say what is right. Above it, the entry was lost. Only the faulting
// disk's own entries are ever left uncommitted, and only while that agent alone holds the disk's
// table, so what was lost is a suffix of the log made of such entries, at most one per segment:
// applied to the recovered tables they are consistent, unless something changed those tables
// since. Nothing can have: after a restart the controller changes no table and hands out no block
// until every agent known from before has registered and handed back, or its lease has run out
// (AgentFleet keeps the agent's old link open until "restored"). A lost entry is restored when it
// still fits; the rest is lost for good, and the agent then fails its connections' FLUSHes.
import type { AgentFleet } from "./agent-fleet.ts";
import type { AgentLink } from "./agent-link.ts";
import type { Catalog, Disk, LogRecord } from "./catalog.ts";
import type { TableContext } from "./faults.ts";
import type { Pool } from "./pool.ts";
import type { ArgsOf, ControllerRequests, ResultOf } from "./wire/messages.ts";
import { ENTRY_ERROR, ENTRY_NO_WRITE, ENTRY_ZERO, entryContainer, entryLocation, entryOffsetBytes, entryState, hasLocation, ZERO_WORD } from "../wasm/entry.ts";

export interface Restorable {
  /** Map records (and high-water marks) that make the restored entries durable. */
  records: LogRecord[];
  /** The segments whose entry changes. */
  changed: number[];
  /** Entries that are restored (or were durable already). */
  restored: number;
  /** Entries that no longer fit the tables. */
  lost: number;
}

/** Whether an agent could have written through `word`: a location, no No-write, Zero or Error. */
export function isWritableWord(word: number): boolean {
  return hasLocation(word) && (entryState(word) & (ENTRY_NO_WRITE | ENTRY_ZERO | ENTRY_ERROR)) === 0;
}

/**
 * Which of `entries` ([segment, word, at] of `disk`, from controller run `run`, which has ended)
 * were lost and still fit the tables, and the records that restore them. The blocks they point at
 * are taken from the pool at once (synchronously, so no allocation comes between the check and
 * the records). Unknown how far the run got (too many runs ago), nothing can be restored.
 */
export function restorable(catalog: Catalog, pool: Pool, disk: Disk, run: number, entries: [segment: number, word: number, at: number][]): Restorable {
  const out: Restorable = { records: [], changed: [], restored: 0, lost: 0 };
  const durable = catalog.runs.get(run);
  const segmentBytes = 2 ** disk.segmentShift;
  const highWater = new Map<number, number>();
  for (const [segment, word, at] of entries) {
    const fits = durable !== undefined && segment < disk.table.entryCount && isWritableWord(word);
    const current = fits ? disk.table.get(segment) : ZERO_WORD;
    if (fits && (at <= durable || current === word)) {
      out.restored += 1;
      continue;
    }
    const lun = catalog.luns.get(entryContainer(word));
    const offset = entryOffsetBytes(word);
    // A No-write entry this disk alone still holds lost only its No-write clearance; a Zero entry
    // or one still shared (forward delta) lost its move to the new block, which nothing else may
    // use meanwhile.
    const clearsNoWrite = hasLocation(current) && entryLocation(current) === entryLocation(word) && catalog.references(current) === 1;
    const movesToFree =
      (current === ZERO_WORD || (hasLocation(current) && entryState(current) & ENTRY_NO_WRITE)) &&
      entryLocation(current) !== entryLocation(word) &&
      lun !== undefined &&
      lun.failed === null &&
      offset % segmentBytes === 0 &&
      offset + segmentBytes <= lun.size &&
      catalog.references(word) === 0;
    if (!fits || !(clearsNoWrite || (movesToFree && pool.claim(lun.id, offset, disk.segmentShift)))) {
      out.lost += 1;
      continue;
    }
    if (movesToFree) {
      const mark = pool.highWaterNeeded(lun!.id, offset + segmentBytes);
      if (mark !== null) highWater.set(lun!.id, Math.max(mark, highWater.get(lun!.id) ?? 0));
    }
    out.records.push({ t: "map", disk: disk.id, first: segment, runs: [[word, 1]] });
    out.changed.push(segment);
    out.restored += 1;
  }
  // The marks go first: recovery must not hand out a restored block as never used.
  out.records.unshift(...[...highWater].map(([lun, bytes]): LogRecord => ({ t: "hwm", lun, bytes })));
  return out;
}

/** Serves an agent's "restore": what fits is made durable at once and sent to the disk's other
 *  agents; the rest is counted lost. */
export async function restoreEntries(
  ctx: TableContext & { agents: AgentFleet; say(line: string): void },
  agent: AgentLink,
  args: ArgsOf<ControllerRequests, "restore">,
): Promise<ResultOf<ControllerRequests, "restore">> {
  // Entries of this run are in the tables already (a commit makes them durable).
  if (args.run === ctx.run) return { restored: args.entries.length, lost: 0 };
  const disk = ctx.catalog.disks.get(args.disk);
  // Those of an ended run fit only while nothing can have changed the tables since the restart:
  // the agent's link from before it is not over.
  if (!disk || !ctx.agents.mayRestore(agent)) {
    ctx.say(`agent ${agent.id}: ${args.entries.length} mapping entries of disk ${args.disk} from controller run ${args.run} are lost (${disk ? "handed back too late" : "no such disk"})`);
    return { restored: 0, lost: args.entries.length };
  }
  const { records, changed, restored, lost } = restorable(ctx.catalog, ctx.pool, disk, args.run, args.entries);
  // No family lock: a fault of the family may hold it while it waits for this agent to be done.
  ctx.release(await ctx.persist(records));
  if (changed.length > 0) await ctx.agents.dropRestored(disk, changed, agent);
  if (changed.length + lost > 0) ctx.say(
    `agent ${agent.id}: restored ${changed.length} mapping entries of disk ${disk.name} that controller run ${args.run} had not committed` +
      (lost > 0 ? `; ${lost} no longer fit and are lost` : ""),
  );
  return { restored, lost };
}
