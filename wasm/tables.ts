// TypeScript glue for the WebAssembly tables (./assembly/tables.ts, built by ./build.mjs into
// ./build/tables.wasm). This is the only file that loads the compiled module.
//
// The main thread creates the shared memory and the tables (SharedTables.create) and is the only
// writer; each worker attaches to the same memory with its own thread index (SharedTables.attach)
// and resolves lookups. Results land in the thread's scratch slot, read through typed-array views.
import { readFile } from "node:fs/promises";
import { assert } from "../engine/util/assert.ts";
import {
  EXTENT_BYTES,
  EXTENT_FIELD_CONTAINER,
  EXTENT_FIELD_KIND,
  EXTENT_FIELD_LENGTH,
  EXTENT_FIELD_OFFSET,
  EXTENTS_MAX,
  HEAP_BASE,
  MEMORY_INITIAL_PAGES,
  MEMORY_MAXIMUM_PAGES,
  SCRATCH_BASE,
  SCRATCH_COVERED_LENGTH,
  SCRATCH_EXTENT_COUNT,
  SCRATCH_FAULT_FIRST,
  SCRATCH_FAULT_LAST,
  SCRATCH_FAULT_STATE,
  SCRATCH_HEADER_BYTES,
  SCRATCH_SLOT_BYTES,
  SLOT_PAGES_MAX,
  SLOTS_PER_PAGE,
  TABLE_PAGE_BYTES,
  TABLE_SLOT_BYTES,
  TABLE_SLOTS_BASE,
  TABLE_SLOTS_MAX,
  THREADS_MAX,
  WASM_PAGE_BYTES,
} from "./assembly/layout.ts";
import { wordHigh, wordLow } from "./entry.ts";
import { checkCode, checkWord, type TableStore } from "./tables-api.ts";

// The interface and its numeric codes, for users of the tables: one list, in tables-api.ts.
export * from "./tables-api.ts";

const WASM_URL = new URL("./build/tables.wasm", import.meta.url);

// The scratch area must lie inside the initial memory (so views made at attach time survive
// memory.grow) and below the first table page; extent fields must be naturally aligned.
assert(SCRATCH_SLOT_BYTES === SCRATCH_HEADER_BYTES + EXTENTS_MAX * EXTENT_BYTES, "scratch slot size");
assert(SCRATCH_BASE + THREADS_MAX * SCRATCH_SLOT_BYTES <= HEAP_BASE, "scratch overlaps the heap");
assert(HEAP_BASE <= MEMORY_INITIAL_PAGES * WASM_PAGE_BYTES, "heap base beyond the initial memory");
assert(SLOTS_PER_PAGE * TABLE_SLOT_BYTES === TABLE_PAGE_BYTES && TABLE_SLOTS_MAX === SLOT_PAGES_MAX * SLOTS_PER_PAGE, "slot pages");
assert(TABLE_SLOTS_BASE + SLOT_PAGES_MAX * 4 <= SCRATCH_BASE, "slot directory overlaps the scratch area");
assert(SCRATCH_SLOT_BYTES % 8 === 0 && EXTENT_BYTES % 8 === 0 && SCRATCH_HEADER_BYTES % 8 === 0, "alignment");

const EXTENT_F64S = EXTENT_BYTES / 8;
const EXTENT_U16S = EXTENT_BYTES / 2;
const OFFSET_F64 = (SCRATCH_HEADER_BYTES + EXTENT_FIELD_OFFSET) / 8;
const LENGTH_F64 = (SCRATCH_HEADER_BYTES + EXTENT_FIELD_LENGTH) / 8;
const CONTAINER_U16 = (SCRATCH_HEADER_BYTES + EXTENT_FIELD_CONTAINER) / 2;
const KIND_U16 = (SCRATCH_HEADER_BYTES + EXTENT_FIELD_KIND) / 2;

/** What a worker needs to attach: post it with postMessage. */
export interface TablesHandle {
  memory: WebAssembly.Memory;
  module: WebAssembly.Module;
}

/** The exports of tables.wasm (see ./assembly/tables.ts). */
interface TablesExports {
  init(): number;
  pagesInUse(): number;
  pagesFree(): number;
  pagesReserved(): number;
  createTable(slot: number, entryCount: number, segmentShift: number): number;
  retireTable(slot: number): number;
  freeTable(slot: number): number;
  tableEntryCount(slot: number): number;
  tableGeneration(slot: number): number;
  setEntry(slot: number, index: number, low: number, high: number): number;
  fillEntries(slot: number, first: number, count: number, low: number, high: number): number;
  updateStates(slot: number, first: number, count: number, setBits: number, clearBits: number): number;
  checkIndex(slot: number, index: number): number;
  getEntryLow(slot: number, index: number): number;
  getEntryHigh(slot: number, index: number): number;
  resolve(slot: number, generation: number, offset: number, length: number, op: number, thread: number): number;
}

export interface PageStats {
  /** Table pages in use. */
  inUse: number;
  /** Pages on the free list. */
  free: number;
  /** Pages ever carved out of the memory (in use + free). */
  reserved: number;
  /** Current size of the WebAssembly memory. */
  memoryBytes: number;
}

export class SharedTables implements TableStore {
  private readonly exports: TablesExports;
  private readonly wasmResolve: TablesExports["resolve"];
  private readonly u32: Uint32Array;
  private readonly u16: Uint16Array;
  private readonly f64: Float64Array;

  private constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly module: WebAssembly.Module,
    readonly threadIndex: number,
  ) {
    const instance = new WebAssembly.Instance(module, { env: { memory } });
    this.exports = instance.exports as unknown as TablesExports;
    this.wasmResolve = this.exports.resolve;
    // Views over this thread's scratch slot. A shared buffer is never detached by memory.grow,
    // and the slot lies inside the initial memory, so these views stay valid.
    const buffer = memory.buffer;
    const base = SCRATCH_BASE + threadIndex * SCRATCH_SLOT_BYTES;
    assert(base + SCRATCH_SLOT_BYTES <= buffer.byteLength, "scratch slot outside the memory");
    this.u32 = new Uint32Array(buffer, base, SCRATCH_SLOT_BYTES / 4);
    this.u16 = new Uint16Array(buffer, base, SCRATCH_SLOT_BYTES / 2);
    this.f64 = new Float64Array(buffer, base, SCRATCH_SLOT_BYTES / 8);
  }

  /** Main thread: a new shared memory with the tables initialised. */
  static async create(): Promise<SharedTables> {
    const memory = new WebAssembly.Memory({
      initial: MEMORY_INITIAL_PAGES,
      maximum: MEMORY_MAXIMUM_PAGES,
      shared: true,
    });
    let bytes: Uint8Array;
    try {
      bytes = await readFile(WASM_URL);
    } catch (error) {
      throw new Error(`cannot read ${WASM_URL.pathname} (run \`node wasm/build.mjs\`): ${error}`);
    }
    const module = await WebAssembly.compile(bytes);
    const tables = new SharedTables(memory, module, 0);
    tables.exports.init();
    return tables;
  }

  /** A plain object to post to a worker, which passes it to attach(). */
  handle(): TablesHandle {
    return { memory: this.memory, module: this.module };
  }

  /**
   * In a worker: the same tables, synchronously. Each thread index (1 .. THREADS_MAX - 1) must
   * be used by one thread at a time: it selects the scratch slot that results are written to.
   */
  static attach(handle: TablesHandle, threadIndex: number): SharedTables {
    if (!Number.isInteger(threadIndex) || threadIndex < 1 || threadIndex >= THREADS_MAX) {
      throw new RangeError(`thread index ${threadIndex} is not in 1..${THREADS_MAX - 1}`);
    }
    return new SharedTables(handle.memory, handle.module, threadIndex);
  }

  // ---- Writers: main thread only ----

  private writer(): TablesExports {
    assert(this.threadIndex === 0, "only the main thread writes tables");
    return this.exports;
  }

  createTable(slot: number, entryCount: number, segmentShift: number): number {
    return checkCode(this.writer().createTable(slot, entryCount, segmentShift), `createTable(${slot})`);
  }

  retireTable(slot: number): void {
    checkCode(this.writer().retireTable(slot), `retireTable(${slot})`);
  }

  freeTable(slot: number): void {
    checkCode(this.writer().freeTable(slot), `freeTable(${slot})`);
  }

  setEntry(slot: number, index: number, word: number): void {
    checkWord(word, `setEntry(${slot}, ${index})`);
    checkCode(this.writer().setEntry(slot, index, wordLow(word), wordHigh(word)), `setEntry(${slot}, ${index})`);
  }

  fillEntries(slot: number, first: number, count: number, word: number): void {
    const context = `fillEntries(${slot}, ${first}, ${count})`;
    checkWord(word, context);
    checkCode(this.writer().fillEntries(slot, first, count, wordLow(word), wordHigh(word)), context);
  }

  updateStates(slot: number, first: number, count: number, setBits: number, clearBits: number): void {
    const code = this.writer().updateStates(slot, first, count, setBits, clearBits);
    checkCode(code, `updateStates(${slot}, ${first}, ${count})`);
  }

  /** Any thread may read an entry, but only the main thread sees its own writes in order. */
  getEntry(slot: number, index: number): number {
    checkCode(this.exports.checkIndex(slot, index), `getEntry(${slot}, ${index})`);
    // u32 results arrive as signed i32.
    const high = this.exports.getEntryHigh(slot, index) >>> 0;
    assert(high < 2 ** 21, "entry words stay below 2^53"); // setEntry/fillEntries check words
    return high * 2 ** 32 + (this.exports.getEntryLow(slot, index) >>> 0);
  }

  /** The live generation of a slot, 0 if none. */
  generation(slot: number): number {
    return this.exports.tableGeneration(slot);
  }

  memoryBytes(): number {
    return this.exports.pagesInUse() * TABLE_PAGE_BYTES;
  }

  pageStats(): PageStats {
    const e = this.exports;
    return { inUse: e.pagesInUse(), free: e.pagesFree(), reserved: e.pagesReserved(), memoryBytes: this.memory.buffer.byteLength };
  }

  // ---- Lookups: any thread ----

  resolve(slot: number, generation: number, offset: number, length: number, op: number): number {
    return this.wasmResolve(slot, generation, offset, length, op, this.threadIndex);
  }

  get extentCount(): number {
    return this.u32[SCRATCH_EXTENT_COUNT / 4]!;
  }
  extentKind(i: number): number {
    return this.u16[KIND_U16 + i * EXTENT_U16S]!;
  }
  extentContainer(i: number): number {
    return this.u16[CONTAINER_U16 + i * EXTENT_U16S]!;
  }
  extentOffset(i: number): number {
    return this.f64[OFFSET_F64 + i * EXTENT_F64S]!;
  }
  extentLength(i: number): number {
    return this.f64[LENGTH_F64 + i * EXTENT_F64S]!;
  }
  get faultFirst(): number {
    return this.f64[SCRATCH_FAULT_FIRST / 8]!;
  }
  get faultLast(): number {
    return this.f64[SCRATCH_FAULT_LAST / 8]!;
  }
  get faultState(): number {
    return this.u32[SCRATCH_FAULT_STATE / 4]!;
  }
  get coveredLength(): number {
    return this.f64[SCRATCH_COVERED_LENGTH / 8]!;
  }
}
