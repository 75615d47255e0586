// How the controller's commands change one table's entries (R6): runs of words, and states over a
// range. Shared by the agent and by the simulator's agent, so both apply commands alike.
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
