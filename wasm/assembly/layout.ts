// The table entry layout: the one place it is defined. This file is compiled by AssemblyScript
// (wasm/assembly/tables.ts) and imported by TypeScript (wasm/entry.ts), so it holds plain integer
// constants only.
//
// One entry is one 64-bit word, updated with a single atomic store so no reader sees half of it:
//
//  63                                    16 15            4  3   2   1   0
// +---------------------------------------+---------------+---+---+---+---+
// |  offset on the container, 4 KiB units  | container id  | E | Z | Nw| V |
// +---------------------------------------+---------------+---+---+---+---+
//
// V is "valid": the specification's Invalid state is V clear, so zeroed memory reads as Invalid.
// Z and E void the location (it is ignored and kept zero). Nw keeps the location: reads go ahead.

export const ENTRY_VALID = 1;
export const ENTRY_NO_WRITE = 2;
export const ENTRY_ZERO = 4;
export const ENTRY_ERROR = 8;
export const ENTRY_STATE_MASK = 15;

export const ENTRY_CONTAINER_SHIFT = 4;
export const ENTRY_CONTAINER_BITS = 12;
export const ENTRY_OFFSET_SHIFT = 16;
/** Locations are stored in units of 4 KiB (1 << 12 bytes). */
export const ENTRY_OFFSET_UNIT_SHIFT = 12;

/** Segment sizes are powers of two from 64 KiB to 1 GiB. */
export const SEGMENT_SHIFT_MIN = 16;
export const SEGMENT_SHIFT_MAX = 30;

// ---------------------------------------------------------------------------------------------
// Shared tables (wasm/assembly/tables.ts, wasm/tables.ts, wasm/reference-tables.ts).
// Byte addresses and sizes in the shared WebAssembly memory, plus the numeric codes of the
// exported functions. Keep these literal: AssemblyScript and TypeScript must read them alike.
// ---------------------------------------------------------------------------------------------

/** WebAssembly memory: 64 KiB pages. The fixed areas below all lie inside the initial memory. */
export const WASM_PAGE_BYTES = 65536;
export const MEMORY_INITIAL_PAGES = 128; // 8 MiB
export const MEMORY_MAXIMUM_PAGES = 65536; // 4 GiB: table pointers are u32 byte addresses

/** Table pages (leaves, mids, directories) are 4 KiB. */
export const TABLE_PAGE_BYTES = 4096;
export const TABLE_PAGE_SHIFT = 12;
/** A leaf page holds 512 entries of 8 bytes. */
export const LEAF_ENTRIES = 512;
export const LEAF_SHIFT = 9;
/** A mid page holds 1024 u32 pointers to leaves, so one mid spans 2^19 entries. */
export const MID_POINTERS = 1024;
export const MID_SPAN_SHIFT = 19;
/** Tagged pointer (mid or leaf level): every entry below it is the Z word. 0 is "missing". */
export const POINTER_UNIFORM_ZERO = 1;

/**
 * Table slots: one record of TABLE_SLOT_BYTES per slot, on slot pages (table pages, so a slot
 * page exists only once a slot on it has been used); the slot directory at TABLE_SLOTS_BASE holds
 * the address of each slot page. Slots are numbered 0 .. TABLE_SLOTS_MAX - 1 (the directory's
 * SLOT_PAGES_MAX u32 pointers fill its 64 KiB); what bounds the tables in practice is the memory.
 */
export const TABLE_SLOT_BYTES = 64;
export const SLOTS_PER_PAGE = 64; // TABLE_PAGE_BYTES / TABLE_SLOT_BYTES
export const SLOT_PAGES_MAX = 16384;
export const TABLE_SLOTS_MAX = 1048576; // SLOT_PAGES_MAX * SLOTS_PER_PAGE
/** A directory of up to this many mid pointers lies in the slot record itself, not on a page. */
export const INLINE_DIRECTORY_POINTERS = 6;

/** Limits. */
export const THREADS_MAX = 64; // thread 0 is the main thread, workers are 1..63
export const ENTRY_COUNT_MAX = 4294967296; // 2^32 entries per table
export const EXTENTS_MAX = 1024; // extents in one resolve result
export const GENERATION_MAX = 2147483647; // generations wrap from here back to 1; 0 means "none"

/** Fixed areas (byte addresses). Address 0..4095 is left unused so 0 can mean "no page". */
export const ALLOCATOR_BASE = 4096; // allocator header, 64 bytes
export const TABLE_SLOTS_BASE = 65536; // the slot directory: SLOT_PAGES_MAX u32 page addresses
export const SCRATCH_BASE = 131072; // THREADS_MAX scratch slots of SCRATCH_SLOT_BYTES
export const HEAP_BASE = 2097152; // first table page (2 MiB); also asc's --memoryBase

/** Scratch slot: one resolve result of one thread. Header fields (byte offsets in the slot): */
export const SCRATCH_EXTENT_COUNT = 0; // u32
export const SCRATCH_FAULT_STATE = 4; // u32: state bits of the first FAULT (or E) entry
export const SCRATCH_FAULT_FIRST = 8; // f64: first faulting (or E) segment index
export const SCRATCH_FAULT_LAST = 16; // f64: last faulting (or E) segment index
export const SCRATCH_COVERED_LENGTH = 24; // f64: bytes covered by the extents (OK only)
export const SCRATCH_HEADER_BYTES = 32;
/**
 * Extent record: f64 physical byte offset, f64 length, u16 container id, u16 kind, 4 bytes
 * padding. The length is an f64 (not u32) so a BLOCK_STATUS extent can cover a whole 64 TiB disk.
 */
export const EXTENT_FIELD_OFFSET = 0;
export const EXTENT_FIELD_LENGTH = 8;
export const EXTENT_FIELD_CONTAINER = 16;
export const EXTENT_FIELD_KIND = 18;
export const EXTENT_BYTES = 24;
export const SCRATCH_SLOT_BYTES = 24608; // SCRATCH_HEADER_BYTES + EXTENTS_MAX * EXTENT_BYTES

/** resolve() operations. */
export const OP_READ = 0;
export const OP_WRITE = 1;
export const OP_BLOCK_STATUS = 2;
export const OP_WRITE_ZEROES = 3;

/** resolve() statuses. */
export const STATUS_OK = 0;
export const STATUS_FAULT = 1; // the scratch header names the first/last faulting segment
export const STATUS_ERROR = 2; // an E entry was hit; the header names the first/last E segment
export const STATUS_GONE = 3; // slot not live, or its generation differs (checked twice)
export const STATUS_RANGE = 4; // offset + length beyond the table (defensive)
export const STATUS_TOO_MANY = 5; // more than EXTENTS_MAX extents (never for BLOCK_STATUS)

/** Extent kinds. */
export const EXTENT_KIND_DATA = 0;
export const EXTENT_KIND_ZERO = 1;

/** updateStates() may set or clear only these bits (see tables.ts for why). */
export const UPDATABLE_STATE_BITS = 2; // ENTRY_NO_WRITE

/** Error codes of the main-thread functions (negative; generations are positive). */
export const ERR_SLOT = -1; // slot number out of range
export const ERR_ARGUMENT = -2; // bad entry count, segment shift, word, bits or non-integer index
export const ERR_BUSY = -3; // createTable on a used slot, or freeTable on a live table
export const ERR_NO_TABLE = -4; // no table in the slot
export const ERR_RANGE = -5; // index or range beyond the table's entry count
export const ERR_NO_MEMORY = -6; // memory.grow failed
export const ERR_UNINITIALISED = -7; // init() was not called
