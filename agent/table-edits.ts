// How the controller's commands change one table's entries (R6): runs of words, and states over a
// range, each change applied only in the order the controller numbered it. Shared by the agent and
// by the simulator's agent, so both apply commands alike.
import type { Runs, SettableState } from "../engine/wire/messages.ts";
import { RequestError } from "../engine/wire/peer.ts";
import { assert } from "../engine/util/assert.ts";
import { ENTRY_NO_WRITE, ERROR_WORD, INVALID_WORD, ZERO_WORD } from "../wasm/entry.ts";
import type { SharedTables } from "../wasm/tables.ts";

/** A table as the commands address it: its slot in the shared tables and its length. */
export interface TableSlot {
  slot: number;
  entryCount: number;
}

/** A table with the order of its changes. */
export interface OrderedTable extends TableSlot {
  changes: ChangeOrder;
}

export function checkRange(table: TableSlot, first: number, count: number): void {
  if (first + count > table.entryCount) {
    throw new RequestError("EINVAL", `entries ${first}..${first + count - 1} are outside the table of ${table.entryCount}`);
  }
}

/** Writes runs of [word, count] from `first` on. */
export function writeRuns(shared: SharedTables, table: TableSlot, first: number, runs: Runs): void {
  checkRange(table, first, runs.reduce((sum, [, count]) => sum + count, 0));
  let index = first;
  for (const [word, count] of runs) {
    assert(Number.isSafeInteger(word), "entry word must be a safe integer");
    if (count === 1) shared.setEntry(table.slot, index, word);
    else shared.fillEntries(table.slot, index, count, word);
    index += count;
  }
}

/**
 * Invalid, Z and E void the location, so setting one of them replaces the whole entry (the
 * strongest wins: Invalid, then E, then Z). Nw keeps the location and is set or cleared in place.
 */
export function setStates(shared: SharedTables, table: TableSlot, first: number, count: number, set: SettableState[], clearNoWrite: boolean): void {
  checkRange(table, first, count);
  const voiding = set.includes("invalid") ? INVALID_WORD : set.includes("error") ? ERROR_WORD : set.includes("zero") ? ZERO_WORD : null;
  if (voiding !== null) {
    shared.fillEntries(table.slot, first, count, voiding);
    return;
  }
  if (set.includes("nw")) shared.updateStates(table.slot, first, count, ENTRY_NO_WRITE, 0);
  else if (clearNoWrite) shared.updateStates(table.slot, first, count, 0, ENTRY_NO_WRITE);
}

/** set_entry or a fault's answer: runs from `first` on, numbered `change`. Returns false, changing
 *  nothing, when a change applied to any of the same entries is newer. */
export function writeChange(shared: SharedTables, table: OrderedTable, first: number, runs: Runs, change: number): boolean {
  const count = runs.reduce((sum, [, length]) => sum + length, 0);
  checkRange(table, first, count);
  if (!table.changes.admits(first, count, change)) return false;
  writeRuns(shared, table, first, runs);
  table.changes.applied(first, count, change);
  return true;
}

/** set_entry_state numbered `change`; returns false as writeChange does. */
export function stateChange(shared: SharedTables, table: OrderedTable, first: number, count: number, set: SettableState[], clearNoWrite: boolean, change: number): boolean {
  checkRange(table, first, count);
  if (!table.changes.admits(first, count, change)) return false;
  setStates(shared, table, first, count, set, clearNoWrite);
  table.changes.applied(first, count, change);
  return true;
}

/** Commands arrive in the order the controller numbered them (one connection): one older than a
 *  change already applied to its entries is the controller's error. */
export function commandInOrder(applied: boolean, change: number): void {
  if (!applied) throw new RequestError("ESTALE", `change ${change} is older than one already applied to the same entries`);
}

/** How many changes a table remembers, to tell whether a late change overlaps a newer one. */
export const CHANGES_REMEMBERED = 64;

interface AppliedChange {
  first: number;
  /** One past the last entry. */
  end: number;
  change: number;
}

/**
 * The order of one table's changes: the controller numbers every change it sends (a command, a
 * fault's answer) in the order it read the entries, and a change older than one applied to any of
 * the same entries must not be applied (it would bring back a state the controller has left, say
 * a writable entry over a snapshot's No-write). Commands arrive in their order (one connection),
 * but a fault's answer can arrive after later commands. An older change to other entries still
 * applies; one older than what the table remembers is refused, which for an answer only means the
 * request faults again.
 */
export class ChangeOrder {
  private readonly recent: AppliedChange[] = [];
  private newest: number;
  /** Every applied change numbered above this is in `recent`. */
  private knownAbove: number;

  /** A table that starts at change `start` (new_table's number). */
  constructor(start: number) {
    this.newest = start;
    this.knownAbove = start;
  }

  /** Whether change `change` to entries [first, first+count) is not older than any applied there. */
  admits(first: number, count: number, change: number): boolean {
    if (change >= this.newest) return true;
    if (change < this.knownAbove) return false;
    const end = first + count;
    return !this.recent.some((applied) => applied.change > change && applied.first < end && first < applied.end);
  }

  /** Notes that change `change` to entries [first, first+count) was applied. */
  applied(first: number, count: number, change: number): void {
    assert(this.admits(first, count, change), `change ${change} to entries ${first}..${first + count - 1} applied after a newer one`);
    this.recent.push({ first, end: first + count, change });
    if (this.recent.length > CHANGES_REMEMBERED) this.knownAbove = Math.max(this.knownAbove, this.recent.shift()!.change);
    this.newest = Math.max(this.newest, change);
  }
}
