// The interface shared by the WebAssembly tables (./tables.ts) and the plain TypeScript reference
// (./reference-tables.ts), and their errors. Numeric codes live in ./assembly/layout.ts.
import {
  ERR_ARGUMENT,
  ERR_BUSY,
  ERR_NO_MEMORY,
  ERR_NO_TABLE,
  ERR_RANGE,
  ERR_SLOT,
  ERR_UNINITIALISED,
} from "./assembly/layout.ts";
import { isValidWord } from "./entry.ts";

// The numeric codes of the interface, for its users.
export {
  ENTRY_COUNT_MAX,
  EXTENT_KIND_DATA,
  EXTENT_KIND_ZERO,
  EXTENTS_MAX,
  OP_BLOCK_STATUS,
  OP_READ,
  OP_WRITE,
  OP_WRITE_ZEROES,
  STATUS_ERROR,
  STATUS_FAULT,
  STATUS_GONE,
  STATUS_OK,
  STATUS_RANGE,
  STATUS_TOO_MANY,
  TABLE_SLOTS_MAX,
  THREADS_MAX,
  UPDATABLE_STATE_BITS,
} from "./assembly/layout.ts";

/**
 * Per-disk mapping tables. Writers (createTable .. updateStates) run on the main thread only;
 * resolve() runs on any thread and leaves its result in the accessors below, valid until this
 * object's next resolve().
 */
export interface TableStore {
  /** Creates an all-Invalid table in a free slot; returns its generation (>= 1). */
  createTable(slot: number, entryCount: number, segmentShift: number): number;
  /** Lookups with the current generation return GONE from now on. Idempotent. */
  retireTable(slot: number): void;
  /** Releases a retired table's memory. No lookup may still be using it. */
  freeTable(slot: number): void;
  setEntry(slot: number, index: number, word: number): void;
  fillEntries(slot: number, first: number, count: number, word: number): void;
  /** Sets/clears ENTRY_NO_WRITE on every valid, non-Z entry of the range. */
  updateStates(slot: number, first: number, count: number, setBits: number, clearBits: number): void;
  getEntry(slot: number, index: number): number;
  /** Bytes of table pages in use (entries and pointers), for reporting. */
  memoryBytes(): number;

  /** Resolves [offset, offset + length) for `op` (OP_*); returns a STATUS_*. */
  resolve(slot: number, generation: number, offset: number, length: number, op: number): number;
  /** OK: number of extents, in virtual order, exactly covering `coveredLength` bytes. */
  readonly extentCount: number;
  /** EXTENT_KIND_DATA or EXTENT_KIND_ZERO. */
  extentKind(i: number): number;
  extentContainer(i: number): number;
  /** Physical byte offset on the container (DATA only). */
  extentOffset(i: number): number;
  extentLength(i: number): number;
  /** FAULT (and ERROR): first and last faulting (E) segment index, state bits of the first. */
  readonly faultFirst: number;
  readonly faultLast: number;
  readonly faultState: number;
  /** OK: bytes covered; less than the length only for a BLOCK_STATUS that ran out of extents. */
  readonly coveredLength: number;
}

const MESSAGES = new Map<number, string>([
  [ERR_SLOT, "slot number out of range"],
  [ERR_ARGUMENT, "invalid argument"],
  [ERR_BUSY, "slot busy"],
  [ERR_NO_TABLE, "no table in slot"],
  [ERR_RANGE, "index or range beyond the table"],
  [ERR_NO_MEMORY, "out of table memory"],
  [ERR_UNINITIALISED, "tables not initialised"],
]);

/** A rejected table operation; `code` is one of the ERR_* codes of layout.ts. */
export class TablesError extends Error {
  override name = "TablesError";
  constructor(
    readonly code: number,
    context: string,
  ) {
    super(`${context}: ${MESSAGES.get(code) ?? `error ${code}`}`);
  }
}

/** Throws a TablesError for a negative code; returns the code otherwise. */
export function checkCode(code: number, context: string): number {
  if (code < 0) throw new TablesError(code, context);
  return code;
}

export function checkWord(word: number, context: string): void {
  if (!isValidWord(word)) throw new TablesError(ERR_ARGUMENT, `${context}: word ${word}`);
}
