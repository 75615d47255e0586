// The slot numbers of an agent's tables in the shared memory (wasm/tables.ts). A slot is taken
// when a table is created and given back once the table's pages are freed. There is no limit
// below TABLE_SLOTS_MAX: a slot costs memory (a 64-byte record) only once it has been used, and
// a freed slot is used again before a new one, so the records stay as many as the most tables
// held at once.
import { assert } from "../engine/util/assert.ts";
import { TABLE_SLOTS_MAX } from "../wasm/tables-api.ts";

export class TableSlots {
  private readonly freed: number[] = [];
  private readonly taken = new Set<number>();
  private next = 0;

  /** A free slot, or null when all TABLE_SLOTS_MAX are taken. */
  take(): number | null {
    const slot = this.freed.pop() ?? (this.next < TABLE_SLOTS_MAX ? this.next++ : null);
    if (slot !== null) this.taken.add(slot);
    return slot;
  }

  release(slot: number): void {
    assert(this.taken.delete(slot), `table slot ${slot} released but not taken`);
    this.freed.push(slot);
  }

  /** The slots taken now (tables live or retiring). */
  inUse(): number[] {
    return [...this.taken];
  }
}
