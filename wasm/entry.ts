// Table entries as JavaScript numbers. The layout is defined in ./assembly/layout.ts; a word is
// kept below 2^53 (offsets below 2^37 units of 4 KiB = 512 TiB per container) so it is exact in a
// double and crosses into WebAssembly as two u32 halves without a bigint.
import { assert } from "../engine/util/assert.ts";
import {
  ENTRY_CONTAINER_BITS,
  ENTRY_CONTAINER_SHIFT,
  ENTRY_ERROR,
  ENTRY_NO_WRITE,
  ENTRY_OFFSET_SHIFT,
  ENTRY_OFFSET_UNIT_SHIFT,
  ENTRY_STATE_MASK,
  ENTRY_VALID,
  ENTRY_ZERO,
} from "./assembly/layout.ts";

export {
  ENTRY_ERROR,
  ENTRY_NO_WRITE,
  ENTRY_STATE_MASK,
  ENTRY_VALID,
  ENTRY_ZERO,
} from "./assembly/layout.ts";
export { SEGMENT_SHIFT_MAX, SEGMENT_SHIFT_MIN } from "./assembly/layout.ts";

export const CONTAINER_ID_MAX = 2 ** ENTRY_CONTAINER_BITS - 1;
export const LOCATION_UNIT_BYTES = 2 ** ENTRY_OFFSET_UNIT_SHIFT;
const OFFSET_UNITS_MAX = 2 ** 37 - 1;
export const CONTAINER_BYTES_MAX = (OFFSET_UNITS_MAX + 1) * LOCATION_UNIT_BYTES;
const CONTAINER_FACTOR = 2 ** ENTRY_CONTAINER_SHIFT;
const OFFSET_FACTOR = 2 ** ENTRY_OFFSET_SHIFT;

/** An Invalid entry: nothing usable. Every I/O through it faults. */
export const INVALID_WORD = 0;
/** A Z entry: reads are zeros, writes fault, no storage behind it. */
export const ZERO_WORD = ENTRY_VALID | ENTRY_ZERO;
/** An E entry: every I/O gets an error. */
export const ERROR_WORD = ENTRY_VALID | ENTRY_ERROR;

/** A mapped entry pointing at `offsetBytes` on container `container`, with extra state bits. */
export function mappedWord(container: number, offsetBytes: number, noWrite = false): number {
  assert(Number.isInteger(container) && container >= 0 && container <= CONTAINER_ID_MAX, `container id ${container} out of range`);
  assert(offsetBytes % LOCATION_UNIT_BYTES === 0, `location ${offsetBytes} is not 4 KiB aligned`);
  const units = offsetBytes / LOCATION_UNIT_BYTES;
  assert(units >= 0 && units <= OFFSET_UNITS_MAX, `location ${offsetBytes} out of range`);
  return units * OFFSET_FACTOR + container * CONTAINER_FACTOR + ENTRY_VALID + (noWrite ? ENTRY_NO_WRITE : 0);
}

export function entryState(word: number): number {
  return word % (ENTRY_STATE_MASK + 1);
}

export function entryContainer(word: number): number {
  return Math.floor(word / CONTAINER_FACTOR) % (CONTAINER_ID_MAX + 1);
}

export function entryOffsetBytes(word: number): number {
  return Math.floor(word / OFFSET_FACTOR) * LOCATION_UNIT_BYTES;
}

export function isValidWord(word: number): boolean {
  return Number.isSafeInteger(word) && word >= 0;
}

/** True when the entry holds a usable storage location (valid, not Z, not E). */
export function hasLocation(word: number): boolean {
  const state = entryState(word);
  return (state & ENTRY_VALID) !== 0 && (state & (ENTRY_ZERO | ENTRY_ERROR)) === 0;
}

/** The location part of a word (container and offset) as one number, or -1 when it has none:
 *  two entries share a segment when their locations are equal. */
export function entryLocation(word: number): number {
  return hasLocation(word) ? Math.floor(word / CONTAINER_FACTOR) : -1;
}

/** Replaces the state bits of a word, keeping its location. */
export function withState(word: number, state: number): number {
  return word - entryState(word) + state;
}

/** Low and high u32 halves of a word, for the WebAssembly boundary. */
export function wordLow(word: number): number {
  return word % 2 ** 32;
}
export function wordHigh(word: number): number {
  return Math.floor(word / 2 ** 32);
}

/** Human-readable state names, e.g. "Nw" or "Z". */
export function describeState(state: number): string {
  if ((state & ENTRY_VALID) === 0) return "Invalid";
  const names: string[] = [];
  if (state & ENTRY_NO_WRITE) names.push("Nw");
  if (state & ENTRY_ZERO) names.push("Z");
  if (state & ENTRY_ERROR) names.push("E");
  return names.length ? names.join("+") : "mapped";
}
