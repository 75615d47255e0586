// Per-disk mapping tables in one shared WebAssembly memory (AssemblyScript).
//
// The main thread of the agent is the only writer (create/retire/free tables, set entries); any
// thread resolves I/O requests through the tables at the same time, without locks. Every entry is
// read and written with one 64-bit atomic, every pointer with one 32-bit atomic, and a new page
// is initialised completely before its pointer is published, so a reader sees either the old or
// the new value of anything, never a mix.
//
// Memory (byte addresses, constants in layout.ts):
//
//   0x000000  unused (address 0 means "no page")
//   0x001000  allocator header: magic, bump page, free-page list head, page counters
//   0x010000  slot directory: 16384 u32 addresses of slot pages (0: not allocated yet)
//   0x020000  scratch: 64 threads x 24608 B, one resolve result each:
//               header (32 B): extent count u32, fault state u32, fault first f64, fault last f64,
//                              covered length f64
//               1024 extents (24 B): physical offset f64, length f64, container u16, kind u16, pad
//   0x200000  table pages (4 KiB each), bump-allocated upwards, growing the memory on demand
//
// A slot page (a table page) holds 64 slot records of 64 B (live generation, generation, entry
// count, size, segment shift, directory address, directory pages, state, inline directory). It is
// allocated when a slot on it is first used and never freed (slots are reused), so slots cost
// memory only as far as they are used, and an empty table of up to 6 mids costs its record alone.
//
// One table (a sparse radix tree over entry indexes):
//
//   directory: ceil(entries / 2^19) u32 pointers, in the slot record (up to 6) or contiguous pages
//     -> mid page: 1024 u32 pointers (one per 512 entries)
//          -> leaf page: 512 u64 entries
//
//   A pointer is 0 (missing: every entry below is Invalid, word 0), POINTER_UNIFORM_ZERO (every
//   entry below is the Z word) or the 4 KiB-aligned address of a page.
//
// Pages that are materialised stay in their table until freeTable(): putting a uniform pointer
// in place of a live page would need a grace period before the page could be reused, so filling
// over a materialised page writes its entries in place instead.

import {
  ALLOCATOR_BASE,
  ENTRY_COUNT_MAX,
  ENTRY_ERROR,
  ENTRY_NO_WRITE,
  ENTRY_STATE_MASK,
  ENTRY_VALID,
  ENTRY_ZERO,
  ERR_ARGUMENT,
  ERR_BUSY,
  ERR_NO_MEMORY,
  ERR_NO_TABLE,
  ERR_RANGE,
  ERR_SLOT,
  ERR_UNINITIALISED,
  EXTENT_BYTES,
  EXTENT_FIELD_CONTAINER,
  EXTENT_KIND_DATA,
  EXTENT_FIELD_KIND,
  EXTENT_FIELD_LENGTH,
  EXTENT_FIELD_OFFSET,
  EXTENT_KIND_ZERO,
  EXTENTS_MAX,
  GENERATION_MAX,
  HEAP_BASE,
  INLINE_DIRECTORY_POINTERS,
  LEAF_ENTRIES,
  LEAF_SHIFT,
  MEMORY_MAXIMUM_PAGES,
  MID_POINTERS,
  MID_SPAN_SHIFT,
  OP_BLOCK_STATUS,
  OP_WRITE,
  OP_WRITE_ZEROES,
  POINTER_UNIFORM_ZERO,
  SCRATCH_BASE,
  SCRATCH_COVERED_LENGTH,
  SCRATCH_EXTENT_COUNT,
  SCRATCH_FAULT_FIRST,
  SCRATCH_FAULT_LAST,
  SCRATCH_FAULT_STATE,
  SCRATCH_HEADER_BYTES,
  SCRATCH_SLOT_BYTES,
  SEGMENT_SHIFT_MAX,
  SEGMENT_SHIFT_MIN,
  SLOT_PAGES_MAX,
  SLOTS_PER_PAGE,
  STATUS_ERROR,
  STATUS_FAULT,
  STATUS_GONE,
  STATUS_OK,
  STATUS_RANGE,
  STATUS_TOO_MANY,
  TABLE_PAGE_BYTES,
  TABLE_PAGE_SHIFT,
  TABLE_SLOT_BYTES,
  TABLE_SLOTS_BASE,
  TABLE_SLOTS_MAX,
  THREADS_MAX,
  UPDATABLE_STATE_BITS,
  WASM_PAGE_BYTES,
} from "./layout";

// ---- Allocator header (offsets from ALLOCATOR_BASE) ----
const MAGIC: u32 = 0x31544254; // "TBT1"
const A_MAGIC: u32 = 0;
const A_BUMP: u32 = 4; // next never-used table page, as a page number (address >> 12)
const A_FREE_HEAD: u32 = 8; // address of the first free page (its first u32 links the next)
const A_PAGES_IN_USE: u32 = 12;
const A_PAGES_FREE: u32 = 16;
/** Page numbers stay below 2^20 so page addresses fit a u32. */
const PAGE_NUMBER_LIMIT: u64 = <u64>MEMORY_MAXIMUM_PAGES << 4;
/** memory.grow in steps of at least 1 MiB: growing is slow and copies nothing (shared memory). */
const GROW_STEP_PAGES: i32 = 16;

// ---- Table slot record (offsets from the slot's address) ----
const S_LIVE_GENERATION: u32 = 0; // u32: the generation while live, 0 otherwise (read by lookups)
const S_GENERATION: u32 = 4; // u32: last generation handed out for this slot
const S_ENTRY_COUNT: u32 = 8; // f64
const S_SIZE_BYTES: u32 = 16; // f64: entry count << segment shift
const S_SEGMENT_SHIFT: u32 = 24; // u32
const S_DIRECTORY: u32 = 28; // u32: address of the directory
const S_DIRECTORY_PAGES: u32 = 32; // u32: 0 when the directory is inline
const S_STATE: u32 = 36; // u32: STATE_*
const S_INLINE_DIRECTORY: u32 = 40; // INLINE_DIRECTORY_POINTERS u32 pointers
const STATE_FREE: u32 = 0;
const STATE_LIVE: u32 = 1;
const STATE_RETIRED: u32 = 2;

const LEAF_MASK: u64 = <u64>LEAF_ENTRIES - 1;
const MID_MASK: u32 = <u32>MID_POINTERS - 1;
const MID_SPAN: u64 = <u64>1 << <u64>MID_SPAN_SHIFT;
const ZERO_WORD: u64 = <u64>(ENTRY_VALID | ENTRY_ZERO);

// =============================================================================================
// Page allocator (main thread only)
// =============================================================================================

@inline function header(field: u32): u32 {
  return <u32>ALLOCATOR_BASE + field;
}

/** Bumps `pages` contiguous never-used pages, growing the memory if needed; 0 if impossible. */
function bumpPages(pages: u32): u32 {
  const first = load<u32>(header(A_BUMP));
  const end = <u64>first + <u64>pages;
  if (end > PAGE_NUMBER_LIMIT) return 0;
  const neededWasmPages = <i32>((end * <u64>TABLE_PAGE_BYTES + <u64>WASM_PAGE_BYTES - 1) / <u64>WASM_PAGE_BYTES);
  const have = memory.size();
  if (neededWasmPages > have) {
    const missing = neededWasmPages - have;
    const step = min<i32>(max<i32>(missing, GROW_STEP_PAGES), <i32>MEMORY_MAXIMUM_PAGES - have);
    if (memory.grow(step) < 0 && memory.grow(missing) < 0) return 0;
  }
  store<u32>(header(A_BUMP), <u32>end);
  store<u32>(header(A_PAGES_IN_USE), load<u32>(header(A_PAGES_IN_USE)) + pages);
  return first << <u32>TABLE_PAGE_SHIFT;
}

/** One page, from the free list if possible. Its contents are arbitrary. 0 if out of memory. */
function allocPage(): u32 {
  const head = load<u32>(header(A_FREE_HEAD));
  if (head == 0) return bumpPages(1);
  store<u32>(header(A_FREE_HEAD), load<u32>(head));
  store<u32>(header(A_PAGES_FREE), load<u32>(header(A_PAGES_FREE)) - 1);
  store<u32>(header(A_PAGES_IN_USE), load<u32>(header(A_PAGES_IN_USE)) + 1);
  return head;
}

function freePage(page: u32): void {
  store<u32>(page, load<u32>(header(A_FREE_HEAD)));
  store<u32>(header(A_FREE_HEAD), page);
  store<u32>(header(A_PAGES_FREE), load<u32>(header(A_PAGES_FREE)) + 1);
  store<u32>(header(A_PAGES_IN_USE), load<u32>(header(A_PAGES_IN_USE)) - 1);
}

/** Called once by the main thread before anything else; a second call changes nothing. */
export function init(): i32 {
  if (atomic.load<u32>(header(A_MAGIC)) == MAGIC) return 0;
  // asc puts any static data at --memoryBase (= HEAP_BASE); table pages start after it.
  const heapStart = max<u32>(<u32>HEAP_BASE, (<u32>__heap_base + <u32>TABLE_PAGE_BYTES - 1) & ~(<u32>TABLE_PAGE_BYTES - 1));
  store<u32>(header(A_BUMP), heapStart >> <u32>TABLE_PAGE_SHIFT);
  store<u32>(header(A_FREE_HEAD), 0);
  store<u32>(header(A_PAGES_IN_USE), 0);
  store<u32>(header(A_PAGES_FREE), 0);
  memory.fill(<usize>TABLE_SLOTS_BASE, 0, <usize>(SLOT_PAGES_MAX * 4));
  atomic.store<u32>(header(A_MAGIC), MAGIC);
  return 0;
}

/** Table pages in use (leaves, mids, directories). */
export function pagesInUse(): u32 {
  return load<u32>(header(A_PAGES_IN_USE));
}

/** Pages on the free list. */
export function pagesFree(): u32 {
  return load<u32>(header(A_PAGES_FREE));
}

/** Pages ever taken from the bump region (in use + free); stays put while pages are reused. */
export function pagesReserved(): u32 {
  return pagesInUse() + pagesFree();
}

// =============================================================================================
// Pointers and entries
// =============================================================================================

@inline function isPage(pointer: u32): bool {
  return pointer > <u32>POINTER_UNIFORM_ZERO;
}

/** The word every entry below a non-page pointer has. */
@inline function uniformWord(pointer: u32): u64 {
  return pointer == <u32>POINTER_UNIFORM_ZERO ? ZERO_WORD : 0;
}

/** Words that a pointer can stand for without a page. */
@inline function isUniformWord(word: u64): bool {
  return word == 0 || word == ZERO_WORD;
}

@inline function pointerFor(uniform: u64): u32 {
  return uniform == 0 ? 0 : <u32>POINTER_UNIFORM_ZERO;
}

@inline function slotPagePointer(slot: u32): u32 {
  return <u32>TABLE_SLOTS_BASE + ((slot / <u32>SLOTS_PER_PAGE) << 2);
}

/** The record of `slot` (< TABLE_SLOTS_MAX), 0 if no slot of its page was ever used. Any thread. */
@inline function slotAddress(slot: u32): u32 {
  const page = atomic.load<u32>(slotPagePointer(slot));
  return page == 0 ? 0 : page + (slot % <u32>SLOTS_PER_PAGE) * <u32>TABLE_SLOT_BYTES;
}

/** The record of `slot`, its page allocated (all slots free) if need be; 0 if out of memory. */
function slotAddressForNewTable(slot: u32): u32 {
  const pointer = slotPagePointer(slot);
  if (load<u32>(pointer) == 0) {
    const page = allocPage();
    if (page == 0) return 0;
    memory.fill(page, 0, <u32>TABLE_PAGE_BYTES);
    atomic.store<u32>(pointer, page);
  }
  return slotAddress(slot);
}

/** The entry at `index` (in range) of the table whose directory is `directory`. */
function readWord(directory: u32, index: u64): u64 {
  const mid = atomic.load<u32>(directory + (<u32>(index >> <u64>MID_SPAN_SHIFT) << 2));
  if (!isPage(mid)) return uniformWord(mid);
  const leaf = atomic.load<u32>(mid + ((<u32>(index >> <u64>LEAF_SHIFT) & MID_MASK) << 2));
  if (!isPage(leaf)) return uniformWord(leaf);
  return atomic.load<u64>(leaf + (<u32>(index & LEAF_MASK) << 3));
}

// =============================================================================================
// Table life cycle (main thread only)
// =============================================================================================

/** True when `value` is a whole number in [0, limit]. */
@inline function isCount(value: f64, limit: f64): bool {
  return value >= 0 && value <= limit && Math.floor(value) == value;
}

/**
 * Creates an all-Invalid table in a free slot. Returns its generation (>= 1), or a negative ERR_*.
 */
export function createTable(slot: u32, entryCount: f64, segmentShift: u32): i32 {
  if (atomic.load<u32>(header(A_MAGIC)) != MAGIC) return ERR_UNINITIALISED;
  if (slot >= <u32>TABLE_SLOTS_MAX) return ERR_SLOT;
  if (!isCount(entryCount, <f64>ENTRY_COUNT_MAX) || entryCount < 1) return ERR_ARGUMENT;
  if (segmentShift < <u32>SEGMENT_SHIFT_MIN || segmentShift > <u32>SEGMENT_SHIFT_MAX) return ERR_ARGUMENT;
  const t = slotAddressForNewTable(slot);
  if (t == 0) return ERR_NO_MEMORY;
  if (load<u32>(t + S_STATE) != STATE_FREE) return ERR_BUSY;

  const mids = <u32>((<u64>entryCount + MID_SPAN - 1) >> <u64>MID_SPAN_SHIFT);
  let directory = t + S_INLINE_DIRECTORY;
  let pages: u32 = 0;
  if (mids > <u32>INLINE_DIRECTORY_POINTERS) {
    pages = (mids * 4 + <u32>TABLE_PAGE_BYTES - 1) >> <u32>TABLE_PAGE_SHIFT;
    // A directory of several pages must be contiguous, so it comes from the bump region.
    directory = pages == 1 ? allocPage() : bumpPages(pages);
    if (directory == 0) return ERR_NO_MEMORY;
    memory.fill(directory, 0, pages << <u32>TABLE_PAGE_SHIFT);
  } else {
    memory.fill(directory, 0, <u32>INLINE_DIRECTORY_POINTERS * 4);
  }

  store<f64>(t + S_ENTRY_COUNT, entryCount);
  store<f64>(t + S_SIZE_BYTES, entryCount * <f64>(<u64>1 << <u64>segmentShift));
  store<u32>(t + S_SEGMENT_SHIFT, segmentShift);
  store<u32>(t + S_DIRECTORY, directory);
  store<u32>(t + S_DIRECTORY_PAGES, pages);
  store<u32>(t + S_STATE, STATE_LIVE);
  let generation = load<u32>(t + S_GENERATION) + 1;
  if (generation > <u32>GENERATION_MAX) generation = 1;
  store<u32>(t + S_GENERATION, generation);
  // Publishes the fields above: a lookup loads this first (seq-cst) and the rest after it.
  atomic.store<u32>(t + S_LIVE_GENERATION, generation);
  return <i32>generation;
}

/**
 * Ends the current generation: lookups that begin afterwards return GONE, and lookups already
 * running return GONE when they finish. The pages stay until freeTable(). Retiring twice is fine.
 */
export function retireTable(slot: u32): i32 {
  if (slot >= <u32>TABLE_SLOTS_MAX) return ERR_SLOT;
  const t = slotAddress(slot);
  if (t == 0 || load<u32>(t + S_STATE) == STATE_FREE) return ERR_NO_TABLE;
  atomic.store<u32>(t + S_LIVE_GENERATION, 0);
  store<u32>(t + S_STATE, STATE_RETIRED);
  return 0;
}

/**
 * Returns the pages of a retired table to the free list. The caller guarantees that no lookup is
 * still using the table (it waits for in-flight I/O first). Freeing a free slot is fine.
 */
export function freeTable(slot: u32): i32 {
  if (slot >= <u32>TABLE_SLOTS_MAX) return ERR_SLOT;
  const t = slotAddress(slot);
  if (t == 0) return 0;
  const state = load<u32>(t + S_STATE);
  if (state == STATE_FREE) return 0;
  if (state == STATE_LIVE) return ERR_BUSY;
  const directory = load<u32>(t + S_DIRECTORY);
  const pages = load<u32>(t + S_DIRECTORY_PAGES);
  const pointers = pages == 0 ? <u32>INLINE_DIRECTORY_POINTERS : (pages << <u32>TABLE_PAGE_SHIFT) >> 2;
  for (let m: u32 = 0; m < pointers; m++) {
    const mid = load<u32>(directory + (m << 2));
    if (isPage(mid)) freeMid(mid);
  }
  for (let p: u32 = 0; p < pages; p++) freePage(directory + (p << <u32>TABLE_PAGE_SHIFT));
  store<u32>(t + S_DIRECTORY, 0);
  store<u32>(t + S_DIRECTORY_PAGES, 0);
  store<f64>(t + S_ENTRY_COUNT, 0);
  store<f64>(t + S_SIZE_BYTES, 0);
  store<u32>(t + S_STATE, STATE_FREE);
  return 0;
}

function freeMid(mid: u32): void {
  for (let l: u32 = 0; l < <u32>MID_POINTERS; l++) {
    const leaf = load<u32>(mid + (l << 2));
    if (isPage(leaf)) freePage(leaf);
  }
  freePage(mid);
}

/** The entry count of the table in `slot` (live or retired), 0 if there is none. */
export function tableEntryCount(slot: u32): f64 {
  if (slot >= <u32>TABLE_SLOTS_MAX) return 0;
  const t = slotAddress(slot);
  return t == 0 ? 0 : load<f64>(t + S_ENTRY_COUNT);
}

/** The generation of the live table in `slot`, 0 if none is live. */
export function tableGeneration(slot: u32): u32 {
  if (slot >= <u32>TABLE_SLOTS_MAX) return 0;
  const t = slotAddress(slot);
  return t == 0 ? 0 : atomic.load<u32>(t + S_LIVE_GENERATION);
}

// =============================================================================================
// Writing entries (main thread only)
// =============================================================================================

/** Checks that `slot` holds a table and [first, first + count) lies in it; 0 or ERR_*. */
function checkRange(slot: u32, first: f64, count: f64): i32 {
  if (slot >= <u32>TABLE_SLOTS_MAX) return ERR_SLOT;
  const t = slotAddress(slot);
  if (t == 0 || load<u32>(t + S_STATE) == STATE_FREE) return ERR_NO_TABLE;
  const entryCount = load<f64>(t + S_ENTRY_COUNT);
  if (!isCount(first, <f64>ENTRY_COUNT_MAX) || !isCount(count, <f64>ENTRY_COUNT_MAX)) return ERR_ARGUMENT;
  if (first + count > entryCount) return ERR_RANGE;
  return 0;
}

@inline function combine(low: u32, high: u32): u64 {
  return (<u64>high << 32) | <u64>low;
}

/** Sets one entry. 0 or ERR_*. */
export function setEntry(slot: u32, index: f64, low: u32, high: u32): i32 {
  const check = checkRange(slot, index, 1);
  if (check != 0) return check;
  return fill(slotAddress(slot), <u64>index, <u64>index + 1, combine(low, high));
}

/**
 * Sets `count` entries from `first` to one word. Whole pages or mids of Z (or Invalid) over
 * missing or uniform pointers become (or stay) pointers, so filling a huge range with Z or
 * Invalid allocates nothing. On ERR_NO_MEMORY a part of the range may have been filled; every
 * entry is then either the old or the new word.
 */
export function fillEntries(slot: u32, first: f64, count: f64, low: u32, high: u32): i32 {
  const check = checkRange(slot, first, count);
  if (check != 0) return check;
  return fill(slotAddress(slot), <u64>first, <u64>first + <u64>count, combine(low, high));
}

function fill(t: u32, first: u64, end: u64, word: u64): i32 {
  const directory = load<u32>(t + S_DIRECTORY);
  const entryCount = <u64>load<f64>(t + S_ENTRY_COUNT);
  let index = first;
  while (index < end) {
    const midStart = index & ~(MID_SPAN - 1);
    const midEnd = min<u64>(midStart + MID_SPAN, entryCount);
    const stop = min<u64>(end, midEnd);
    const whole = index == midStart && stop == midEnd;
    const pointer = directory + (<u32>(index >> <u64>MID_SPAN_SHIFT) << 2);
    if (!fillMid(pointer, index, stop, whole, entryCount, word)) return ERR_NO_MEMORY;
    index = stop;
  }
  return 0;
}

/** Fills [first, end) inside the mid whose pointer is at `pointer`. False if out of memory. */
function fillMid(pointer: u32, first: u64, end: u64, whole: bool, entryCount: u64, word: u64): bool {
  let mid = atomic.load<u32>(pointer);
  if (!isPage(mid)) {
    const current = uniformWord(mid);
    if (current == word) return true;
    if (whole && isUniformWord(word)) {
      atomic.store<u32>(pointer, pointerFor(word));
      return true;
    }
    // Materialise: a mid full of the same uniform pointer means the same thing as `mid`.
    const page = allocPage();
    if (page == 0) return false;
    const pair = <u64>mid * 0x100000001; // two copies of the u32 pointer
    for (let i: u32 = 0; i < <u32>TABLE_PAGE_BYTES; i += 8) store<u64>(page + i, pair);
    atomic.store<u32>(pointer, page);
    mid = page;
  }
  let index = first;
  while (index < end) {
    const leafStart = index & ~LEAF_MASK;
    const leafEnd = min<u64>(leafStart + <u64>LEAF_ENTRIES, entryCount);
    const stop = min<u64>(end, leafEnd);
    const whole = index == leafStart && stop == leafEnd;
    const leafPointer = mid + ((<u32>(index >> <u64>LEAF_SHIFT) & MID_MASK) << 2);
    if (!fillLeaf(leafPointer, <u32>(index - leafStart), <u32>(stop - leafStart), whole, word)) return false;
    index = stop;
  }
  return true;
}

/** Fills entries [from, to) of the leaf whose pointer is at `pointer`. False if out of memory. */
function fillLeaf(pointer: u32, from: u32, to: u32, whole: bool, word: u64): bool {
  let leaf = atomic.load<u32>(pointer);
  if (isPage(leaf)) {
    for (let i = from; i < to; i++) atomic.store<u64>(leaf + (i << 3), word);
    return true;
  }
  const current = uniformWord(leaf);
  if (current == word) return true;
  if (whole && isUniformWord(word)) {
    atomic.store<u32>(pointer, pointerFor(word));
    return true;
  }
  const page = allocPage();
  if (page == 0) return false;
  // Plain stores are enough here: nobody can see the page before the atomic store below.
  for (let i: u32 = 0; i < <u32>LEAF_ENTRIES; i++) {
    store<u64>(page + (i << 3), i >= from && i < to ? word : current);
  }
  atomic.store<u32>(pointer, page);
  return true;
}

/**
 * For every valid entry in [first, first + count) that is not Z: word = (word | setBits) &
 * ~clearBits. Only ENTRY_NO_WRITE may be set or cleared: Z and E void the location, and clearing
 * V would leave a location in an Invalid entry. Z entries are skipped, so uniform-Z pointers stay
 * (and missing pages, all Invalid, are skipped): a Z entry already faults on every write, which
 * is what Nw would add. 0 or ERR_*.
 */
export function updateStates(slot: u32, first: f64, count: f64, setBits: u32, clearBits: u32): i32 {
  const check = checkRange(slot, first, count);
  if (check != 0) return check;
  if (((setBits | clearBits) & ~<u32>UPDATABLE_STATE_BITS) != 0) return ERR_ARGUMENT;
  const directory = load<u32>(slotAddress(slot) + S_DIRECTORY);
  const end = <u64>first + <u64>count;
  let index = <u64>first;
  while (index < end) {
    const midEnd = min<u64>((index | (MID_SPAN - 1)) + 1, end);
    const mid = atomic.load<u32>(directory + (<u32>(index >> <u64>MID_SPAN_SHIFT) << 2));
    if (isPage(mid)) {
      while (index < midEnd) {
        const leafEnd = min<u64>((index | LEAF_MASK) + 1, midEnd);
        const leaf = atomic.load<u32>(mid + ((<u32>(index >> <u64>LEAF_SHIFT) & MID_MASK) << 2));
        if (isPage(leaf)) updateLeaf(leaf, <u32>(index & LEAF_MASK), <u32>(leafEnd - index), setBits, clearBits);
        index = leafEnd;
      }
    }
    index = midEnd;
  }
  return 0;
}

function updateLeaf(leaf: u32, from: u32, count: u32, setBits: u32, clearBits: u32): void {
  const set = <u64>setBits;
  const clear = ~<u64>clearBits;
  for (let i = from; i < from + count; i++) {
    const at = leaf + (i << 3);
    const word = atomic.load<u64>(at);
    if ((word & <u64>(ENTRY_VALID | ENTRY_ZERO)) != <u64>ENTRY_VALID) continue;
    const updated = (word | set) & clear;
    if (updated != word) atomic.store<u64>(at, updated);
  }
}

/** 0 if `index` is an entry of the table in `slot`, an ERR_* otherwise (for the glue). */
export function checkIndex(slot: u32, index: f64): i32 {
  return checkRange(slot, index, 1);
}

/** Low half of an entry (0 if the slot or index is out of range; the glue checks first). */
export function getEntryLow(slot: u32, index: f64): u32 {
  return <u32>entryAt(slot, index);
}

export function getEntryHigh(slot: u32, index: f64): u32 {
  return <u32>(entryAt(slot, index) >> 32);
}

function entryAt(slot: u32, index: f64): u64 {
  if (checkRange(slot, index, 1) != 0) return 0;
  return readWord(load<u32>(slotAddress(slot) + S_DIRECTORY), <u64>index);
}

// =============================================================================================
// Lookups (any thread)
// =============================================================================================

/** What one entry means for one op. */
const ACT_FAULT: i32 = -1;
const ACT_ERROR: i32 = -2;
// otherwise EXTENT_KIND_DATA or EXTENT_KIND_ZERO

@inline function action(state: u32, op: u32): i32 {
  if ((state & <u32>ENTRY_VALID) == 0) return ACT_FAULT;
  if ((state & <u32>ENTRY_ERROR) != 0) return op == <u32>OP_BLOCK_STATUS ? EXTENT_KIND_DATA : ACT_ERROR;
  if ((state & <u32>ENTRY_ZERO) != 0) return op == <u32>OP_WRITE ? ACT_FAULT : EXTENT_KIND_ZERO;
  if ((state & <u32>ENTRY_NO_WRITE) != 0 && (op == <u32>OP_WRITE || op == <u32>OP_WRITE_ZEROES)) return ACT_FAULT;
  return EXTENT_KIND_DATA;
}

@inline function writeHeader(out: u32, status: u32, extents: u32, state: u32, first: f64, last: f64, covered: f64): u32 {
  store<u32>(out + SCRATCH_EXTENT_COUNT, extents);
  store<u32>(out + SCRATCH_FAULT_STATE, state);
  store<f64>(out + SCRATCH_FAULT_FIRST, first);
  store<f64>(out + SCRATCH_FAULT_LAST, last);
  store<f64>(out + SCRATCH_COVERED_LENGTH, covered);
  return status;
}

@inline function writeExtent(out: u32, n: u32, offset: u64, container: u32, kind: i32): void {
  const at = out + <u32>SCRATCH_HEADER_BYTES + n * <u32>EXTENT_BYTES;
  store<f64>(at + EXTENT_FIELD_OFFSET, <f64>offset);
  store<u16>(at + EXTENT_FIELD_CONTAINER, <u16>container);
  store<u16>(at + EXTENT_FIELD_KIND, <u16>kind);
}

@inline function writeExtentLength(out: u32, n: u32, length: u64): void {
  store<f64>(out + <u32>SCRATCH_HEADER_BYTES + n * <u32>EXTENT_BYTES + EXTENT_FIELD_LENGTH, <f64>length);
}

/**
 * Resolves the request [offset, offset + length) of op `op` through the table in `slot`, in one
 * call, into the scratch slot of `thread`. Returns a STATUS_*. Precedence over the whole request:
 * FAULT, then ERROR, then TOO_MANY. BLOCK_STATUS never returns TOO_MANY: it stops where the
 * extents run out and reports the covered length. `thread` is validated by the glue; it is
 * masked here only so a bad value cannot write outside the scratch area.
 */
export function resolve(slot: u32, generation: u32, offset: f64, length: f64, op: u32, thread: u32): u32 {
  const out = <u32>SCRATCH_BASE + (thread & (<u32>THREADS_MAX - 1)) * <u32>SCRATCH_SLOT_BYTES;
  if (slot >= <u32>TABLE_SLOTS_MAX || generation == 0) return writeHeader(out, STATUS_GONE, 0, 0, -1, -1, 0);
  const t = slotAddress(slot);
  // Seqlock-style: the live generation is read (seq-cst) before the immutable fields...
  if (t == 0 || atomic.load<u32>(t + S_LIVE_GENERATION) != generation) return writeHeader(out, STATUS_GONE, 0, 0, -1, -1, 0);
  const size = load<f64>(t + S_SIZE_BYTES);
  if (!(offset >= 0 && length >= 0 && offset + length <= size)) return writeHeader(out, STATUS_RANGE, 0, 0, -1, -1, 0);
  const directory = load<u32>(t + S_DIRECTORY);
  const shift = <u64>load<u32>(t + S_SEGMENT_SHIFT);
  const start = <u64>offset;
  const end = start + <u64>length;
  const status = start < end && start >> shift == (end - 1) >> shift
    ? single(out, directory, shift, start, end, op) // the common case, kept short
    : scan(out, directory, shift, start, end, op);
  // ...and again after the walk: a table retired meanwhile is reported GONE.
  if (atomic.load<u32>(t + S_LIVE_GENERATION) != generation) return writeHeader(out, STATUS_GONE, 0, 0, -1, -1, 0);
  return status;
}

/** Resolves a non-empty request inside one segment. */
@inline function single(out: u32, directory: u32, shift: u64, start: u64, end: u64, op: u32): u32 {
  const segment = start >> shift;
  const word = readWord(directory, segment);
  const state = <u32>word & <u32>ENTRY_STATE_MASK;
  const kind = action(state, op);
  if (kind == ACT_FAULT) return writeHeader(out, STATUS_FAULT, 0, state, <f64>segment, <f64>segment, 0);
  if (kind == ACT_ERROR) return writeHeader(out, STATUS_ERROR, 0, state, <f64>segment, <f64>segment, 0);
  const physical = kind == EXTENT_KIND_DATA ? ((word >> 16) << 12) + (start - (segment << shift)) : 0;
  const container = kind == EXTENT_KIND_DATA ? <u32>(word >> 4) & 0xfff : 0;
  writeExtent(out, 0, physical, container, kind);
  writeExtentLength(out, 0, end - start);
  return writeHeader(out, STATUS_OK, 1, 0, -1, -1, <f64>(end - start));
}

function scan(out: u32, directory: u32, shift: u64, start: u64, end: u64, op: u32): u32 {
  let position = start;
  let extents: u32 = 0; // extents written, the last one still open (its length is `openLength`)
  let openKind: i32 = -1;
  let openContainer: u32 = 0;
  let openEnd: u64 = 0; // physical end of the open DATA extent
  let openLength: u64 = 0;
  let tooMany = false;
  let faultFirst: i64 = -1;
  let faultLast: i64 = -1;
  let faultState: u32 = 0;
  let errorFirst: i64 = -1;
  let errorLast: i64 = -1;
  let errorState: u32 = 0;

  while (position < end) {
    const segment = position >> shift;
    // Find the word, and how many segments share it (a whole leaf or mid behind a pointer).
    let word: u64;
    let runEnd: u64; // first segment after the run
    const mid = atomic.load<u32>(directory + (<u32>(segment >> <u64>MID_SPAN_SHIFT) << 2));
    if (isPage(mid)) {
      const leaf = atomic.load<u32>(mid + ((<u32>(segment >> <u64>LEAF_SHIFT) & MID_MASK) << 2));
      if (isPage(leaf)) {
        word = atomic.load<u64>(leaf + (<u32>(segment & LEAF_MASK) << 3));
        runEnd = segment + 1;
      } else {
        word = uniformWord(leaf);
        runEnd = (segment | LEAF_MASK) + 1;
      }
    } else {
      word = uniformWord(mid);
      runEnd = (segment | (MID_SPAN - 1)) + 1;
    }
    const pieceEnd = min<u64>(end, runEnd << shift);
    const state = <u32>word & <u32>ENTRY_STATE_MASK;
    const kind = action(state, op);

    if (kind == ACT_FAULT) {
      if (faultFirst < 0) {
        faultFirst = <i64>segment;
        faultState = state;
      }
      faultLast = <i64>((pieceEnd - 1) >> shift);
    } else if (kind == ACT_ERROR) {
      if (errorFirst < 0) {
        errorFirst = <i64>segment;
        errorState = state;
      }
      errorLast = <i64>((pieceEnd - 1) >> shift);
    } else {
      // Runs are never DATA (only Invalid and Z have pointers), so `segment` is the piece's.
      const physical = kind == EXTENT_KIND_DATA ? ((word >> 16) << 12) + (position - (segment << shift)) : 0;
      const container = kind == EXTENT_KIND_DATA ? <u32>(word >> 4) & 0xfff : 0;
      const pieceLength = pieceEnd - position;
      if (kind == openKind && (kind == EXTENT_KIND_ZERO || (container == openContainer && physical == openEnd))) {
        openLength += pieceLength;
        openEnd += pieceLength;
      } else if (extents == <u32>EXTENTS_MAX) {
        if (op == <u32>OP_BLOCK_STATUS) break; // a prefix is a valid answer
        tooMany = true; // keep scanning: a fault or error later takes precedence
      } else {
        if (extents > 0) writeExtentLength(out, extents - 1, openLength);
        writeExtent(out, extents, physical, container, kind);
        extents++;
        openKind = kind;
        openContainer = container;
        openEnd = physical + pieceLength;
        openLength = pieceLength;
      }
    }
    position = pieceEnd;
  }

  if (faultFirst >= 0) return writeHeader(out, STATUS_FAULT, 0, faultState, <f64>faultFirst, <f64>faultLast, 0);
  if (errorFirst >= 0) return writeHeader(out, STATUS_ERROR, 0, errorState, <f64>errorFirst, <f64>errorLast, 0);
  if (tooMany) return writeHeader(out, STATUS_TOO_MANY, 0, 0, -1, -1, 0);
  if (extents > 0) writeExtentLength(out, extents - 1, openLength);
  return writeHeader(out, STATUS_OK, extents, 0, -1, -1, <f64>(position - start));
}
