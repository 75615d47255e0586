// A plain TypeScript implementation of TableStore: the reference model for the WebAssembly tables
// (tests compare the two) and the baseline of the lookup microbenchmark (bench/micro-lookup.ts). Single-threaded.
//
// A table is a Map from leaf number (index / 512) to either a Float64Array of 512 entry words or
// the Z word (the whole leaf is Z); a missing leaf is all Invalid. Uniform leaves play the role of
// the uniform pointers of the WebAssembly tables, so resolve() walks Z and Invalid a leaf at a time.
import {
  ENTRY_COUNT_MAX,
  ENTRY_ERROR,
  ENTRY_NO_WRITE,
  ENTRY_VALID,
  ENTRY_ZERO,
  ERR_ARGUMENT,
  ERR_BUSY,
  ERR_NO_TABLE,
  ERR_RANGE,
  ERR_SLOT,
  EXTENT_KIND_DATA,
  EXTENT_KIND_ZERO,
  EXTENTS_MAX,
  GENERATION_MAX,
  LEAF_ENTRIES,
  OP_BLOCK_STATUS,
  OP_WRITE,
  OP_WRITE_ZEROES,
  SEGMENT_SHIFT_MAX,
  SEGMENT_SHIFT_MIN,
  STATUS_ERROR,
  STATUS_FAULT,
  STATUS_GONE,
  STATUS_OK,
  STATUS_RANGE,
  STATUS_TOO_MANY,
  TABLE_PAGE_BYTES,
  TABLE_SLOTS_MAX,
  UPDATABLE_STATE_BITS,
} from "./assembly/layout.ts";
import { entryContainer, entryOffsetBytes, entryState, withState, ZERO_WORD } from "./entry.ts";
import { checkWord, type TableStore, TablesError } from "./tables-api.ts";

type Leaf = Float64Array | typeof ZERO_WORD;

interface Table {
  entryCount: number;
  segmentShift: number;
  sizeBytes: number;
  live: boolean;
  leaves: Map<number, Leaf>;
}

const ACT_FAULT = -1;
const ACT_ERROR = -2;

/** EXTENT_KIND_DATA / EXTENT_KIND_ZERO, or ACT_FAULT / ACT_ERROR: what an entry state means for an op. */
function action(state: number, op: number): number {
  if ((state & ENTRY_VALID) === 0) return ACT_FAULT;
  if (state & ENTRY_ERROR) return op === OP_BLOCK_STATUS ? EXTENT_KIND_DATA : ACT_ERROR;
  if (state & ENTRY_ZERO) return op === OP_WRITE ? ACT_FAULT : EXTENT_KIND_ZERO;
  if (state & ENTRY_NO_WRITE && (op === OP_WRITE || op === OP_WRITE_ZEROES)) return ACT_FAULT;
  return EXTENT_KIND_DATA;
}

function isCount(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= ENTRY_COUNT_MAX;
}

export class ReferenceTables implements TableStore {
  private readonly tables = new Map<number, Table>();
  private readonly generations = new Map<number, number>();

  // The result of the last resolve().
  private readonly offsets = new Float64Array(EXTENTS_MAX);
  private readonly lengths = new Float64Array(EXTENTS_MAX);
  private readonly containers = new Uint16Array(EXTENTS_MAX);
  private readonly kinds = new Uint16Array(EXTENTS_MAX);
  private count = 0;
  private first = -1;
  private last = -1;
  private state = 0;
  private covered = 0;

  createTable(slot: number, entryCount: number, segmentShift: number): number {
    const context = `createTable(${slot})`;
    this.checkSlot(slot, context);
    if (!isCount(entryCount) || entryCount < 1) throw new TablesError(ERR_ARGUMENT, context);
    if (!Number.isInteger(segmentShift) || segmentShift < SEGMENT_SHIFT_MIN || segmentShift > SEGMENT_SHIFT_MAX) {
      throw new TablesError(ERR_ARGUMENT, context);
    }
    if (this.tables.has(slot)) throw new TablesError(ERR_BUSY, context);
    const sizeBytes = entryCount * 2 ** segmentShift;
    this.tables.set(slot, { entryCount, segmentShift, sizeBytes, live: true, leaves: new Map() });
    const previous = this.generations.get(slot) ?? 0;
    const generation = previous >= GENERATION_MAX ? 1 : previous + 1;
    this.generations.set(slot, generation);
    return generation;
  }

  retireTable(slot: number): void {
    this.table(slot, `retireTable(${slot})`).live = false;
  }

  freeTable(slot: number): void {
    const context = `freeTable(${slot})`;
    this.checkSlot(slot, context);
    if (this.tables.get(slot)?.live) throw new TablesError(ERR_BUSY, context);
    this.tables.delete(slot);
  }

  setEntry(slot: number, index: number, word: number): void {
    this.fillEntries(slot, index, 1, word);
  }

  fillEntries(slot: number, first: number, count: number, word: number): void {
    const context = `fillEntries(${slot}, ${first}, ${count})`;
    checkWord(word, context);
    const table = this.tableRange(slot, first, count, context);
    const end = first + count;
    for (let index = first; index < end; ) {
      const leafNumber = Math.floor(index / LEAF_ENTRIES);
      const leafStart = leafNumber * LEAF_ENTRIES;
      const leafEnd = Math.min(leafStart + LEAF_ENTRIES, table.entryCount);
      const stop = Math.min(end, leafEnd);
      const leaf = table.leaves.get(leafNumber);
      const uniform = !(leaf instanceof Float64Array);
      if (uniform && (leaf ?? 0) === word) {
        // already that word
      } else if (index === leafStart && stop === leafEnd && (word === 0 || word === ZERO_WORD)) {
        if (word === 0) table.leaves.delete(leafNumber);
        else table.leaves.set(leafNumber, ZERO_WORD);
      } else {
        this.leafArray(table, leafNumber).fill(word, index - leafStart, stop - leafStart);
      }
      index = stop;
    }
  }

  /** The entries of a leaf as an array, materialising a uniform or missing leaf. */
  private leafArray(table: Table, leafNumber: number): Float64Array {
    const leaf = table.leaves.get(leafNumber);
    if (leaf instanceof Float64Array) return leaf;
    const array = new Float64Array(LEAF_ENTRIES).fill(leaf ?? 0);
    table.leaves.set(leafNumber, array);
    return array;
  }

  updateStates(slot: number, first: number, count: number, setBits: number, clearBits: number): void {
    const context = `updateStates(${slot}, ${first}, ${count})`;
    const table = this.tableRange(slot, first, count, context);
    if (((setBits | clearBits) & ~UPDATABLE_STATE_BITS) !== 0) throw new TablesError(ERR_ARGUMENT, context);
    const end = first + count;
    for (let index = first; index < end; ) {
      const leafNumber = Math.floor(index / LEAF_ENTRIES);
      const stop = Math.min(end, (leafNumber + 1) * LEAF_ENTRIES);
      const leaf = table.leaves.get(leafNumber);
      if (leaf instanceof Float64Array) {
        for (let i = index; i < stop; i++) {
          const at = i - leafNumber * LEAF_ENTRIES;
          const word = leaf[at]!;
          const state = entryState(word);
          if ((state & (ENTRY_VALID | ENTRY_ZERO)) !== ENTRY_VALID) continue;
          leaf[at] = withState(word, (state | setBits) & ~clearBits);
        }
      }
      index = stop;
    }
  }

  getEntry(slot: number, index: number): number {
    const table = this.tableRange(slot, index, 1, `getEntry(${slot}, ${index})`);
    const leaf = table.leaves.get(Math.floor(index / LEAF_ENTRIES));
    if (leaf instanceof Float64Array) return leaf[index % LEAF_ENTRIES]!;
    return leaf ?? 0;
  }

  /** Counts materialised leaves only, as the WebAssembly tables count pages. */
  memoryBytes(): number {
    let leaves = 0;
    for (const table of this.tables.values()) {
      for (const leaf of table.leaves.values()) if (leaf instanceof Float64Array) leaves++;
    }
    return leaves * TABLE_PAGE_BYTES;
  }

  private checkSlot(slot: number, context: string): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= TABLE_SLOTS_MAX) throw new TablesError(ERR_SLOT, context);
  }

  private table(slot: number, context: string): Table {
    this.checkSlot(slot, context);
    const table = this.tables.get(slot);
    if (!table) throw new TablesError(ERR_NO_TABLE, context);
    return table;
  }

  private tableRange(slot: number, first: number, count: number, context: string): Table {
    const table = this.table(slot, context);
    if (!isCount(first) || !isCount(count)) throw new TablesError(ERR_ARGUMENT, context);
    if (first + count > table.entryCount) throw new TablesError(ERR_RANGE, context);
    return table;
  }

  // ---- Lookups ----

  resolve(slot: number, generation: number, offset: number, length: number, op: number): number {
    this.count = 0;
    this.first = this.last = -1;
    this.state = 0;
    this.covered = 0;
    const table = this.tables.get(slot);
    if (!table || !table.live || generation === 0 || this.generations.get(slot) !== generation) return STATUS_GONE;
    if (!(offset >= 0 && length >= 0 && offset + length <= table.sizeBytes)) return STATUS_RANGE;
    return this.scan(table, offset, offset + length, op);
  }

  private scan(table: Table, start: number, end: number, op: number): number {
    const segmentBytes = 2 ** table.segmentShift;
    let position = start;
    let extents = 0;
    let openKind = -1;
    let openContainer = 0;
    let openEnd = 0;
    let tooMany = false;
    let faultFirst = -1;
    let faultLast = -1;
    let faultState = 0;
    let errorFirst = -1;
    let errorLast = -1;
    let errorState = 0;

    while (position < end) {
      const segment = Math.floor(position / segmentBytes);
      const leafNumber = Math.floor(segment / LEAF_ENTRIES);
      const leaf = table.leaves.get(leafNumber);
      let word: number;
      let runEnd: number;
      if (leaf instanceof Float64Array) {
        word = leaf[segment - leafNumber * LEAF_ENTRIES]!;
        runEnd = segment + 1;
      } else {
        word = leaf ?? 0;
        runEnd = (leafNumber + 1) * LEAF_ENTRIES;
      }
      const pieceEnd = Math.min(end, runEnd * segmentBytes);
      const state = entryState(word);
      const kind = action(state, op);

      if (kind === ACT_FAULT) {
        if (faultFirst < 0) {
          faultFirst = segment;
          faultState = state;
        }
        faultLast = Math.floor((pieceEnd - 1) / segmentBytes);
      } else if (kind === ACT_ERROR) {
        if (errorFirst < 0) {
          errorFirst = segment;
          errorState = state;
        }
        errorLast = Math.floor((pieceEnd - 1) / segmentBytes);
      } else {
        const physical = kind === EXTENT_KIND_DATA ? entryOffsetBytes(word) + position - segment * segmentBytes : 0;
        const container = kind === EXTENT_KIND_DATA ? entryContainer(word) : 0;
        const pieceLength = pieceEnd - position;
        if (kind === openKind && (kind === EXTENT_KIND_ZERO || (container === openContainer && physical === openEnd))) {
          this.lengths[extents - 1] = this.lengths[extents - 1]! + pieceLength;
          openEnd += pieceLength;
        } else if (extents === EXTENTS_MAX) {
          if (op === OP_BLOCK_STATUS) break;
          tooMany = true;
        } else {
          this.offsets[extents] = physical;
          this.lengths[extents] = pieceLength;
          this.containers[extents] = container;
          this.kinds[extents] = kind;
          extents++;
          openKind = kind;
          openContainer = container;
          openEnd = physical + pieceLength;
        }
      }
      position = pieceEnd;
    }

    if (faultFirst >= 0) return this.failed(STATUS_FAULT, faultFirst, faultLast, faultState);
    if (errorFirst >= 0) return this.failed(STATUS_ERROR, errorFirst, errorLast, errorState);
    if (tooMany) return STATUS_TOO_MANY;
    this.count = extents;
    this.covered = position - start;
    return STATUS_OK;
  }

  private failed(status: number, first: number, last: number, state: number): number {
    this.first = first;
    this.last = last;
    this.state = state;
    return status;
  }

  get extentCount(): number {
    return this.count;
  }
  extentKind(i: number): number {
    return this.kinds[i]!;
  }
  extentContainer(i: number): number {
    return this.containers[i]!;
  }
  extentOffset(i: number): number {
    return this.offsets[i]!;
  }
  extentLength(i: number): number {
    return this.lengths[i]!;
  }
  get faultFirst(): number {
    return this.first;
  }
  get faultLast(): number {
    return this.last;
  }
  get faultState(): number {
    return this.state;
  }
  get coveredLength(): number {
    return this.covered;
  }
}
