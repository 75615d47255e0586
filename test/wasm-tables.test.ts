// Contract tests for the mapping tables, run against both the WebAssembly tables and the plain
// TypeScript reference; then WebAssembly-only tests (allocator, workers), a concurrency test with
// Bun Workers and a seeded randomized comparison of the two implementations.
import { describe, expect, test } from "bun:test";
import { AssertionError } from "../engine/util/assert.ts";
import { seededRandom } from "../engine/util/seeded-random.ts";
import {
  ENTRY_NO_WRITE,
  ENTRY_VALID,
  ERROR_WORD,
  mappedWord,
  ZERO_WORD,
} from "../wasm/entry.ts";
import { ReferenceTables } from "../wasm/reference-tables.ts";
import {
  ERR_ARGUMENT,
  ERR_BUSY,
  ERR_NO_TABLE,
  ERR_RANGE,
  ERR_SLOT,
  MEMORY_INITIAL_PAGES,
  WASM_PAGE_BYTES,
} from "../wasm/assembly/layout.ts";
import {
  EXTENT_KIND_DATA,
  EXTENT_KIND_ZERO,
  EXTENTS_MAX,
  OP_BLOCK_STATUS,
  OP_READ,
  OP_WRITE,
  OP_WRITE_ZEROES,
  SharedTables,
  STATUS_ERROR,
  STATUS_FAULT,
  STATUS_GONE,
  STATUS_OK,
  STATUS_RANGE,
  STATUS_TOO_MANY,
  TABLE_SLOTS_MAX,
  TablesError,
  type TableStore,
} from "../wasm/tables.ts";
import type { StressJob, StressReport } from "./wasm-tables-worker.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const PAGE = 4096;
const SHIFT = 16;
const SEG = 2 ** SHIFT;
const OPS = [OP_READ, OP_WRITE, OP_BLOCK_STATUS, OP_WRITE_ZEROES];

interface Extent {
  kind: number;
  container: number;
  offset: number;
  length: number;
}

interface Result {
  status: number;
  extents: Extent[];
  covered: number;
  faultFirst: number;
  faultLast: number;
  faultState: number;
}

/** resolve() plus everything its accessors report, as a plain object. */
function resolve(t: TableStore, slot: number, generation: number, offset: number, length: number, op: number): Result {
  const status = t.resolve(slot, generation, offset, length, op);
  const result: Result = { status, extents: [], covered: 0, faultFirst: -1, faultLast: -1, faultState: 0 };
  if (status === STATUS_OK) {
    result.covered = t.coveredLength;
    for (let i = 0; i < t.extentCount; i++) {
      result.extents.push({ kind: t.extentKind(i), container: t.extentContainer(i), offset: t.extentOffset(i), length: t.extentLength(i) });
    }
  } else if (status === STATUS_FAULT || status === STATUS_ERROR) {
    result.faultFirst = t.faultFirst;
    result.faultLast = t.faultLast;
    result.faultState = t.faultState;
  }
  return result;
}

const data = (container: number, offset: number, length: number): Extent => ({ kind: EXTENT_KIND_DATA, container, offset, length });
const zero = (length: number): Extent => ({ kind: EXTENT_KIND_ZERO, container: 0, offset: 0, length });
const ok = (extents: Extent[], covered?: number) => ({ status: STATUS_OK, extents, covered: covered ?? extents.reduce((sum, e) => sum + e.length, 0) });
const fault = (first: number, last: number, state: number) => ({ status: STATUS_FAULT, faultFirst: first, faultLast: last, faultState: state });

function errorCode(action: () => unknown): number | undefined {
  try {
    action();
  } catch (error) {
    if (error instanceof TablesError) return error.code;
    throw error;
  }
  return undefined;
}

const implementations: [string, () => Promise<TableStore>][] = [
  ["wasm", () => SharedTables.create()],
  ["reference", async () => new ReferenceTables()],
];

describe.each(implementations)("tables contract (%s)", (_name, make) => {
  test("a new table is all Invalid: every op faults", async () => {
    const t = await make();
    const generation = t.createTable(0, 1000, SHIFT);
    expect(generation).toBeGreaterThan(0);
    for (const op of OPS) expect(resolve(t, 0, generation, 5 * SEG + 100, 10, op)).toMatchObject(fault(5, 5, 0));
    expect(t.getEntry(0, 999)).toBe(0);
  });

  const LOCATION = GiB;
  const states: [string, number, Record<number, object>][] = [
    ["Invalid", 0, { [OP_READ]: fault(7, 7, 0), [OP_WRITE]: fault(7, 7, 0), [OP_BLOCK_STATUS]: fault(7, 7, 0), [OP_WRITE_ZEROES]: fault(7, 7, 0) }],
    ["E", ERROR_WORD, {
      [OP_READ]: { status: STATUS_ERROR, faultFirst: 7, faultLast: 7, faultState: ERROR_WORD },
      [OP_WRITE]: { status: STATUS_ERROR, faultFirst: 7, faultState: ERROR_WORD },
      [OP_BLOCK_STATUS]: ok([data(0, 4096, 8192)]),
      [OP_WRITE_ZEROES]: { status: STATUS_ERROR, faultFirst: 7 },
    }],
    ["Z", ZERO_WORD, { [OP_READ]: ok([zero(8192)]), [OP_WRITE]: fault(7, 7, ZERO_WORD), [OP_BLOCK_STATUS]: ok([zero(8192)]), [OP_WRITE_ZEROES]: ok([zero(8192)]) }],
    ["mapped", mappedWord(3, LOCATION), {
      [OP_READ]: ok([data(3, LOCATION + 4096, 8192)]),
      [OP_WRITE]: ok([data(3, LOCATION + 4096, 8192)]),
      [OP_BLOCK_STATUS]: ok([data(3, LOCATION + 4096, 8192)]),
      [OP_WRITE_ZEROES]: ok([data(3, LOCATION + 4096, 8192)]),
    }],
    ["Nw", mappedWord(3, LOCATION, true), {
      [OP_READ]: ok([data(3, LOCATION + 4096, 8192)]),
      [OP_WRITE]: fault(7, 7, ENTRY_VALID | ENTRY_NO_WRITE),
      [OP_BLOCK_STATUS]: ok([data(3, LOCATION + 4096, 8192)]),
      [OP_WRITE_ZEROES]: fault(7, 7, ENTRY_VALID | ENTRY_NO_WRITE),
    }],
  ];
  test.each(states)("every op on a %s entry", async (_state, word, expected) => {
    const t = await make();
    const generation = t.createTable(1, 100, SHIFT);
    t.setEntry(1, 7, word);
    expect(t.getEntry(1, 7)).toBe(word);
    for (const op of OPS) expect(resolve(t, 1, generation, 7 * SEG + 4096, 8192, op)).toMatchObject(expected[op]!);
  });

  test("a request spanning segments resolves in one call, merging contiguous extents", async () => {
    const t = await make();
    const g = t.createTable(0, 100, SHIFT);
    const X = 10 * MiB;
    for (let i = 0; i < 4; i++) t.setEntry(0, 10 + i, mappedWord(1, X + i * SEG));
    const request = [10 * SEG + 512, 4 * SEG - 1024] as const;
    expect(resolve(t, 0, g, ...request, OP_READ)).toMatchObject(ok([data(1, X + 512, 4 * SEG - 1024)]));

    t.setEntry(0, 12, mappedWord(2, X + 2 * SEG)); // another container
    expect(resolve(t, 0, g, ...request, OP_READ).extents).toEqual([
      data(1, X + 512, 2 * SEG - 512),
      data(2, X + 2 * SEG, SEG),
      data(1, X + 3 * SEG, SEG - 512),
    ]);
    t.setEntry(0, 12, mappedWord(1, X + 5 * SEG)); // same container, not contiguous
    expect(resolve(t, 0, g, ...request, OP_READ).extents).toHaveLength(3);

    t.fillEntries(0, 20, 3, ZERO_WORD);
    t.setEntry(0, 23, mappedWord(1, X));
    t.setEntry(0, 24, ZERO_WORD);
    expect(resolve(t, 0, g, 20 * SEG, 5 * SEG, OP_READ)).toMatchObject(ok([zero(3 * SEG), data(1, X, SEG), zero(SEG)]));
    expect(resolve(t, 0, g, 20 * SEG, 3 * SEG, OP_WRITE_ZEROES)).toMatchObject(ok([zero(3 * SEG)]));
  });

  test("FAULT names the first and last faulting segment; it outranks ERROR", async () => {
    const t = await make();
    const g = t.createTable(0, 100, SHIFT);
    for (let i = 20; i < 30; i++) t.setEntry(0, i, mappedWord(1, i * SEG));
    t.setEntry(0, 22, 0);
    t.setEntry(0, 26, mappedWord(1, 26 * SEG, true));
    t.setEntry(0, 24, ERROR_WORD);
    expect(resolve(t, 0, g, 20 * SEG, 10 * SEG, OP_WRITE)).toMatchObject(fault(22, 26, 0));
    expect(resolve(t, 0, g, 20 * SEG, 10 * SEG, OP_READ)).toMatchObject(fault(22, 22, 0));
    expect(resolve(t, 0, g, 23 * SEG, 7 * SEG, OP_WRITE)).toMatchObject(fault(26, 26, ENTRY_VALID | ENTRY_NO_WRITE));
    expect(resolve(t, 0, g, 23 * SEG, 7 * SEG, OP_READ)).toMatchObject({ status: STATUS_ERROR, faultFirst: 24, faultLast: 24, faultState: ERROR_WORD });
    t.setEntry(0, 25, ERROR_WORD);
    expect(resolve(t, 0, g, 23 * SEG + 1, 3 * SEG - 2, OP_WRITE_ZEROES)).toMatchObject({ status: STATUS_ERROR, faultFirst: 24, faultLast: 25 });
    expect(resolve(t, 0, g, 23 * SEG, 4 * SEG, OP_BLOCK_STATUS).status).toBe(STATUS_OK);
  });

  test("a 64 TiB table filled with Z costs a few pages and answers in one extent", async () => {
    const t = await make();
    const before = t.memoryBytes();
    const entries = 2 ** 26;
    const g = t.createTable(2, entries, 20);
    t.fillEntries(2, 0, entries, ZERO_WORD);
    expect(t.memoryBytes() - before).toBeLessThanOrEqual(2 * PAGE);
    expect(resolve(t, 2, g, 0, 64 * TiB, OP_BLOCK_STATUS)).toMatchObject(ok([zero(64 * TiB)]));
    expect(resolve(t, 2, g, 40 * TiB + 512, MiB, OP_READ)).toMatchObject(ok([zero(MiB)]));
    expect(resolve(t, 2, g, 40 * TiB, 2 * MiB, OP_WRITE)).toMatchObject(fault(40 * MiB, 40 * MiB + 1, ZERO_WORD));

    const middle = 2 ** 25;
    t.setEntry(2, middle, mappedWord(5, 0));
    expect(t.memoryBytes() - before).toBeLessThanOrEqual(4 * PAGE);
    expect(t.getEntry(2, middle - 1)).toBe(ZERO_WORD);
    expect(t.getEntry(2, middle + 1)).toBe(ZERO_WORD);
    expect(resolve(t, 2, g, 0, 64 * TiB, OP_BLOCK_STATUS)).toMatchObject(ok([zero(32 * TiB), data(5, 0, MiB), zero(32 * TiB - MiB)]));
    expect(resolve(t, 2, g, 32 * TiB - MiB, 3 * MiB, OP_WRITE)).toMatchObject(fault(middle - 1, middle + 1, ZERO_WORD));
  });

  test("filling Invalid over missing pages allocates nothing", async () => {
    const t = await make();
    const before = t.memoryBytes();
    const entries = 2 ** 26;
    const g = t.createTable(0, entries, SHIFT);
    const created = t.memoryBytes();
    t.fillEntries(0, 0, entries, 0);
    t.fillEntries(0, 1000, 2 ** 20 + 7, 0);
    expect(t.memoryBytes()).toBe(created);
    t.fillEntries(0, 1000, 2 ** 20 + 7, ZERO_WORD); // ragged ends: a few pages at most
    expect(t.memoryBytes() - before).toBeLessThanOrEqual(8 * PAGE);
    expect(resolve(t, 0, g, 999 * SEG, (2 ** 20 + 9) * SEG, OP_READ)).toMatchObject(fault(999, 2 ** 20 + 1007, 0));
    expect(resolve(t, 0, g, 1000 * SEG, (2 ** 20 + 7) * SEG, OP_READ)).toMatchObject(ok([zero((2 ** 20 + 7) * SEG)]));
  });

  test("GONE after retire, for a wrong generation and for an empty slot", async () => {
    const t = await make();
    const g = t.createTable(3, 10, SHIFT);
    t.setEntry(3, 0, ZERO_WORD);
    expect(resolve(t, 3, g, 0, SEG, OP_READ).status).toBe(STATUS_OK);
    expect(resolve(t, 3, g + 1, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    expect(resolve(t, 3, 0, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    expect(resolve(t, 4, g, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    expect(resolve(t, 5000, g, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    t.retireTable(3);
    t.retireTable(3);
    expect(resolve(t, 3, g, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    t.freeTable(3);
    const g2 = t.createTable(3, 10, SHIFT);
    expect(g2).not.toBe(g);
    expect(resolve(t, 3, g, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    expect(resolve(t, 3, g2, 0, SEG, OP_READ)).toMatchObject(fault(0, 0, 0));
  });

  test("freeing a table returns its memory, and the slot can be used again", async () => {
    const t = await make();
    // A slot's record stays once the slot has been used (slots are reused).
    t.createTable(7, 1, SHIFT);
    t.retireTable(7);
    t.freeTable(7);
    const before = t.memoryBytes();
    t.createTable(7, 2 ** 21, SHIFT);
    for (let i = 0; i < 2 ** 21; i += 50_000) t.setEntry(7, i, mappedWord(1, i * SEG));
    expect(t.memoryBytes()).toBeGreaterThan(before + 40 * PAGE);
    expect(errorCode(() => t.freeTable(7))).toBe(ERR_BUSY);
    t.retireTable(7);
    t.freeTable(7);
    t.freeTable(7);
    expect(t.memoryBytes()).toBe(before);
    const g = t.createTable(7, 100, SHIFT);
    expect(t.getEntry(7, 0)).toBe(0);
    expect(resolve(t, 7, g, 0, 100 * SEG, OP_BLOCK_STATUS)).toMatchObject(fault(0, 99, 0));
  });

  test("RANGE for requests beyond the table", async () => {
    const t = await make();
    const g = t.createTable(0, 10, SHIFT);
    t.fillEntries(0, 0, 10, ZERO_WORD);
    expect(resolve(t, 0, g, 9 * SEG, SEG, OP_READ).status).toBe(STATUS_OK);
    expect(resolve(t, 0, g, 9 * SEG, SEG + 1, OP_READ).status).toBe(STATUS_RANGE);
    expect(resolve(t, 0, g, 10 * SEG, 1, OP_READ).status).toBe(STATUS_RANGE);
    expect(resolve(t, 0, g, -1, 1, OP_READ).status).toBe(STATUS_RANGE);
    expect(resolve(t, 0, g, 10 * SEG, 0, OP_READ)).toMatchObject(ok([]));
  });

  test("TOO_MANY extents; BLOCK_STATUS returns a prefix instead", async () => {
    const t = await make();
    const g = t.createTable(0, 4096, SHIFT);
    // Alternating containers: nothing merges.
    for (let i = 0; i < 4096; i++) t.setEntry(0, i, mappedWord(1 + (i % 2), i * SEG));
    expect(resolve(t, 0, g, 0, EXTENTS_MAX * SEG, OP_READ).extents).toHaveLength(EXTENTS_MAX);
    expect(resolve(t, 0, g, 0, (EXTENTS_MAX + 1) * SEG, OP_READ).status).toBe(STATUS_TOO_MANY);
    const status = resolve(t, 0, g, 100, 4096 * SEG - 100, OP_BLOCK_STATUS);
    expect(status).toMatchObject({ status: STATUS_OK, covered: EXTENTS_MAX * SEG - 100 });
    expect(status.extents).toHaveLength(EXTENTS_MAX);
    expect(status.extents[0]).toEqual(data(1, 100, SEG - 100));
    t.setEntry(0, 3000, 0); // beyond the prefix: not looked at
    expect(resolve(t, 0, g, 0, 4096 * SEG, OP_BLOCK_STATUS).status).toBe(STATUS_OK);
    expect(resolve(t, 0, g, 0, 4096 * SEG, OP_READ)).toMatchObject(fault(3000, 3000, 0)); // outranks TOO_MANY
  });

  test("updateStates sets and clears Nw on valid, non-Z entries only", async () => {
    const t = await make();
    const g = t.createTable(0, 2 ** 20, SHIFT);
    const mapped = mappedWord(4, 8 * MiB);
    t.setEntry(0, 0, mapped);
    t.setEntry(0, 1, ZERO_WORD);
    t.setEntry(0, 3, ERROR_WORD);
    t.setEntry(0, 4, mapped);
    t.fillEntries(0, 2 ** 19, 2 ** 19, ZERO_WORD);
    const before = t.memoryBytes();
    t.updateStates(0, 0, 2 ** 20, ENTRY_NO_WRITE, 0);
    expect(t.memoryBytes()).toBe(before);
    expect(t.getEntry(0, 0)).toBe(mappedWord(4, 8 * MiB, true));
    expect(t.getEntry(0, 1)).toBe(ZERO_WORD);
    expect(t.getEntry(0, 2)).toBe(0);
    expect(t.getEntry(0, 3)).toBe(ERROR_WORD | ENTRY_NO_WRITE);
    expect(t.getEntry(0, 2 ** 19 + 5)).toBe(ZERO_WORD);
    expect(resolve(t, 0, g, 4 * SEG, SEG, OP_WRITE)).toMatchObject(fault(4, 4, ENTRY_VALID | ENTRY_NO_WRITE));
    expect(resolve(t, 0, g, 4 * SEG, SEG, OP_READ)).toMatchObject(ok([data(4, 8 * MiB, SEG)]));
    t.updateStates(0, 4, 1, 0, ENTRY_NO_WRITE);
    expect(t.getEntry(0, 4)).toBe(mapped);
    expect(t.getEntry(0, 0)).toBe(mappedWord(4, 8 * MiB, true));
    expect(errorCode(() => t.updateStates(0, 0, 1, ENTRY_VALID, 0))).toBe(ERR_ARGUMENT);
  });

  test("rejects bad arguments with TablesError codes", async () => {
    const t = await make();
    expect(errorCode(() => t.createTable(TABLE_SLOTS_MAX, 10, SHIFT))).toBe(ERR_SLOT);
    expect(errorCode(() => t.createTable(0, 0, SHIFT))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.createTable(0, 2 ** 32 + 1, SHIFT))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.createTable(0, 1.5, SHIFT))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.createTable(0, 10, 15))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.createTable(0, 10, 31))).toBe(ERR_ARGUMENT);
    t.createTable(0, 10, SHIFT);
    expect(errorCode(() => t.createTable(0, 10, SHIFT))).toBe(ERR_BUSY);
    expect(errorCode(() => t.setEntry(0, 10, ZERO_WORD))).toBe(ERR_RANGE);
    expect(errorCode(() => t.fillEntries(0, 5, 6, ZERO_WORD))).toBe(ERR_RANGE);
    expect(errorCode(() => t.setEntry(0, 1.5, ZERO_WORD))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.setEntry(0, 1, -1))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.setEntry(0, 1, 2 ** 53))).toBe(ERR_ARGUMENT);
    expect(errorCode(() => t.getEntry(0, 10))).toBe(ERR_RANGE);
    expect(errorCode(() => t.getEntry(1, 0))).toBe(ERR_NO_TABLE);
    expect(errorCode(() => t.retireTable(1))).toBe(ERR_NO_TABLE);
    expect(errorCode(() => t.setEntry(1, 0, 0))).toBe(ERR_NO_TABLE);
    expect(errorCode(() => t.retireTable(-1))).toBe(ERR_SLOT);
    // The largest table is allowed.
    expect(t.createTable(1, 2 ** 32, 30)).toBeGreaterThan(0);
    t.setEntry(1, 2 ** 32 - 1, mappedWord(1, 0));
    expect(t.getEntry(1, 2 ** 32 - 1)).toBe(mappedWord(1, 0));
  });
});

describe("wasm tables", () => {
  test("freed pages are reused before the memory grows", async () => {
    const t = await SharedTables.create();
    t.createTable(0, 2 ** 20, SHIFT);
    for (let i = 0; i < 2 ** 20; i += 512) t.setEntry(0, i, ZERO_WORD | ENTRY_NO_WRITE);
    const used = t.pageStats();
    expect(used.inUse).toBe(1 + 2 + 2048); // the slot page (with the directory in it), 2 mids, 2048 leaves
    t.retireTable(0);
    t.freeTable(0);
    expect(t.pageStats()).toMatchObject({ inUse: 1, free: used.inUse - 1, reserved: used.reserved });
    t.createTable(0, 2 ** 20, SHIFT);
    for (let i = 0; i < 2 ** 20; i += 512) t.setEntry(0, i, ZERO_WORD | ENTRY_NO_WRITE);
    expect(t.pageStats()).toMatchObject({ inUse: used.inUse, free: 0, reserved: used.reserved });
  });

  test("slots have no fixed limit below TABLE_SLOTS_MAX, and an empty table costs its 64-byte slot record", async () => {
    const t = await SharedTables.create();
    const tables = 5000;
    const generations: number[] = [];
    // Up to 6 mids (6 x 2^19 entries: 3 TiB at 1 MiB segments) the directory lies in the slot record.
    for (let slot = 0; slot < tables; slot += 1) generations.push(t.createTable(slot, 6 * 2 ** 19, SHIFT));
    expect(t.pageStats().inUse).toBe(Math.ceil(tables / 64));
    const top = TABLE_SLOTS_MAX - 1;
    const g = t.createTable(top, 10, SHIFT);
    t.fillEntries(top, 0, 10, ZERO_WORD);
    expect(resolve(t, top, g, 0, 10 * SEG, OP_READ)).toMatchObject({ status: STATUS_OK, extents: [zero(10 * SEG)] });
    for (let slot = 0; slot < tables; slot += 1) t.setEntry(slot, slot, ZERO_WORD);
    for (let slot = 0; slot < tables; slot += 97) {
      expect(resolve(t, slot, generations[slot]!, slot * SEG, SEG, OP_READ)).toMatchObject({ status: STATUS_OK, extents: [zero(SEG)] });
      expect(resolve(t, slot, generations[slot]!, 0, SEG, OP_READ).status).toBe(slot === 0 ? STATUS_OK : STATUS_FAULT);
    }
    // A slot whose page was never used is empty, not an error.
    expect(resolve(t, tables + 64 * 10, 1, 0, SEG, OP_READ).status).toBe(STATUS_GONE);
    expect(errorCode(() => t.getEntry(tables + 64 * 10, 0))).toBe(ERR_NO_TABLE);
    t.freeTable(tables + 64 * 10);
    // A larger table's directory takes a page of its own.
    const inUse = t.pageStats().inUse;
    t.createTable(tables, 7 * 2 ** 19, SHIFT);
    expect(t.pageStats().inUse).toBe(inUse + 1);
  });

  test("result views survive memory.grow; workers attach to the same tables", async () => {
    const t = await SharedTables.create();
    const worker = SharedTables.attach(t.handle(), 1);
    const g = t.createTable(0, 2 ** 22, SHIFT);
    const initialBytes = MEMORY_INITIAL_PAGES * WASM_PAGE_BYTES;
    for (let i = 0; i < 2 ** 22 && t.pageStats().memoryBytes <= initialBytes; i += 512) t.setEntry(0, i, mappedWord(9, i * SEG));
    expect(t.pageStats().memoryBytes).toBeGreaterThan(initialBytes);
    const last = 2 ** 22 - 512;
    t.setEntry(0, last, mappedWord(9, last * SEG));
    expect(resolve(t, 0, g, last * SEG, SEG, OP_READ)).toMatchObject(ok([data(9, last * SEG, SEG)]));
    expect(resolve(worker, 0, g, 512 * SEG, 2 * SEG, OP_WRITE)).toMatchObject(fault(513, 513, 0));
    expect(t.extentOffset(0)).toBe(last * SEG); // its own scratch slot is untouched
    expect(() => worker.setEntry(0, 0, 0)).toThrow(AssertionError);
    expect(() => SharedTables.attach(t.handle(), 0)).toThrow(RangeError);
    expect(() => SharedTables.attach(t.handle(), 64)).toThrow(RangeError);
  });
});

describe("concurrency", () => {
  test("workers only ever see whole entry words while the main thread rewrites them", async () => {
    const t = await SharedTables.create();
    const slot = 5;
    const g = t.createTable(slot, 2 ** 22, SHIFT);
    // A and B differ in both 32-bit halves (container and Nw in the low one, offset in both).
    const segments = [0, 1, 511, 512, 513, 2 ** 19, 2 ** 19 + 1, 3 * 2 ** 20];
    const wordsA = segments.map((s) => mappedWord(0x5a5, 3 * 2 ** 40 + s * SEG));
    const wordsB = segments.map((s) => mappedWord(0xa5a, 2 ** 36 + 2 ** 31 + s * SEG, true));
    segments.forEach((s, i) => t.setEntry(slot, s, wordsA[i]!));
    const growFirst = 2 ** 20;
    const growStride = 512; // one new leaf each
    const growCount = 3000; // ~12 MiB of leaves: the memory grows while workers read
    const growWord = mappedWord(7, 2 ** 40);

    const control = new SharedArrayBuffer(8);
    const workers = [1, 2].map(() => new Worker(new URL("./wasm-tables-worker.ts", import.meta.url).href));
    const reports = workers.map(
      (worker) =>
        new Promise<StressReport>((resolvePromise, reject) => {
          worker.onmessage = (event: MessageEvent<StressReport>) => resolvePromise(event.data);
          worker.onerror = (event) => reject(new Error(`worker failed: ${event.message}`));
        }),
    );
    workers.forEach((worker, i) => {
      const job: StressJob = {
        handle: t.handle(),
        thread: i + 1,
        slot,
        generation: g,
        segmentBytes: SEG,
        segments,
        wordsA,
        wordsB,
        growFirst,
        growStride,
        growCount,
        growWord,
        iterationsMin: 200_000,
        iterationsMax: 5_000_000,
        control,
      };
      worker.postMessage(job);
    });

    // Flip words until both workers are done (bounded in case one dies). Once both have started,
    // also materialise a new leaf every few flips, growing the memory under the readers.
    const [started, done] = [0, 1];
    const counters = new Int32Array(control);
    const FLIPS_MAX = 3_000_000;
    let flips = 0;
    let grown = 0;
    for (; flips < FLIPS_MAX && Atomics.load(counters, done) < workers.length; flips++) {
      const words = flips % 2 === 0 ? wordsB : wordsA;
      for (let i = 0; i < segments.length; i++) t.setEntry(slot, segments[i]!, words[i]!);
      if (grown < growCount && flips % 4 === 0 && Atomics.load(counters, started) === workers.length) {
        t.setEntry(slot, growFirst + grown * growStride, growWord);
        grown++;
      }
    }
    try {
      const results = await Promise.all(reports);
      for (const report of results) {
        expect(report.errors).toEqual([]);
        expect(report.seenA).toBeGreaterThan(0);
        expect(report.seenB).toBeGreaterThan(0);
        expect(report.grownSeen).toBeGreaterThan(0);
        expect(report.grownFaults).toBeGreaterThan(0);
      }
      expect(flips).toBeLessThan(FLIPS_MAX);
      expect(t.pageStats().memoryBytes).toBeGreaterThan(MEMORY_INITIAL_PAGES * WASM_PAGE_BYTES);
    } finally {
      for (const worker of workers) worker.terminate();
    }
  });
});

describe("randomized", () => {
  test("wasm and reference agree over random operations", async () => {
    const wasm = await SharedTables.create();
    const reference = new ReferenceTables();
    const both = [wasm, reference] as const;
    const rand = seededRandom(20261101);
    const int = (n: number) => Math.floor(rand() * n);
    const entries = 2 ** 19 + 3000; // two mids, a ragged last leaf
    const hotSpots = [0, 511, 512, 2 ** 18, 2 ** 19 - 1, 2 ** 19, entries - 1];
    const index = () => Math.min(entries - 1, Math.max(0, hotSpots[int(hotSpots.length)]! + int(1200) - 600));
    const special = () => [0, ZERO_WORD, ERROR_WORD, ZERO_WORD][int(4)]!;
    /** Entry i of a run mapped at `base`: neighbours are contiguous, so they merge. */
    const runWord = (container: number, base: number, i: number, noWrite: boolean) => mappedWord(container, base + i * SEG, noWrite);

    const same = <T>(action: (t: (typeof both)[number]) => T): T => {
      const outcome = both.map((t) => {
        try {
          return { value: action(t) };
        } catch (error) {
          if (error instanceof TablesError) return { code: error.code };
          throw error;
        }
      });
      expect(outcome[0]).toEqual(outcome[1]!);
      return (outcome[0] as { value: T }).value;
    };
    const seen = new Set<string>();
    const resolveBoth = (g: number, offset: number, length: number, op: number) => {
      const result = same((t) => resolve(t, 0, g, offset, length, op));
      seen.add(`status ${result.status}`);
      if (result.extents.length > 1) seen.add("several extents");
      if (result.status === STATUS_OK && result.covered < length) seen.add("prefix");
    };

    let generation = same((t) => t.createTable(0, entries, SHIFT));
    same((t) => t.fillEntries(0, 0, entries, ZERO_WORD));
    for (let step = 0; step < 20_000; step++) {
      const choice = rand();
      const first = index();
      if (choice < 0.2) {
        // A mapped run, sometimes fragmented (alternating containers) so extents run out.
        const count = Math.min(entries - first, int(10) === 0 ? 1100 + int(500) : 1 + int(300));
        const base = int(1000) * SEG;
        const fragmented = int(3) === 0;
        const noWrite = int(4) === 0;
        same((t) => {
          for (let i = 0; i < count; i++) t.setEntry(0, first + i, runWord(fragmented ? 1 + (i % 2) : 1, base, i, noWrite));
        });
      } else if (choice < 0.3) {
        const w = special();
        same((t) => t.setEntry(0, first, w));
      } else if (choice < 0.37) {
        const count = int(10) === 0 ? int(entries - first + 1) : int(1500);
        const w = int(4) === 0 ? runWord(2, 0, first, false) : special();
        same((t) => t.fillEntries(0, first, count, w));
      } else if (choice < 0.42) {
        const bits = [ENTRY_NO_WRITE, 0][int(2)]!;
        const count = int(2000);
        same((t) => t.updateStates(0, first, count, bits, ENTRY_NO_WRITE ^ bits));
      } else if (choice < 0.425) {
        both.forEach((t) => t.retireTable(0));
        resolveBoth(generation, 0, SEG, OP_READ);
        both.forEach((t) => t.freeTable(0));
        generation = same((t) => t.createTable(0, entries, SHIFT));
        same((t) => t.fillEntries(0, 0, entries, ZERO_WORD));
      } else if (choice < 0.45) {
        same((t) => t.getEntry(0, first));
      } else {
        const op = OPS[int(4)]!;
        const offset = first * SEG + (int(2) ? 0 : int(SEG));
        const length = int(20) === 0 ? int(entries * SEG - offset + 2) : int(int(10) === 0 ? 1500 * SEG : 40 * SEG);
        resolveBoth(generation, offset, length, op);
      }
    }
    const statuses = [STATUS_OK, STATUS_FAULT, STATUS_ERROR, STATUS_GONE, STATUS_RANGE, STATUS_TOO_MANY];
    expect([...seen].sort()).toEqual([...statuses.map((s) => `status ${s}`), "prefix", "several extents"].sort());
  });
});
