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
