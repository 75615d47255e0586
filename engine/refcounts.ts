// Reference counts on storage segments (R15): how many table entries, over all disks, point at
// each location. A snapshot shares its source's segments, so a segment is freed only when the
// last entry pointing at it goes away. Counts are derived from the tables (rebuilt on recovery)
// and kept per 64 KiB unit of each container, in pages created on first use.
import { assert } from "./util/assert.ts";
import { SEGMENT_SHIFT_MIN } from "../wasm/entry.ts";

const UNIT_SHIFT = SEGMENT_SHIFT_MIN;
const PAGE_UNITS = 4096;
export const REFERENCES_MAX = 2 ** 32 - 1;

export class RefCounts {
  private readonly pages = new Map<number, Map<number, Uint32Array>>();

  get(lun: number, offset: number): number {
    const { page, slot } = this.locate(lun, offset, false);
    return page ? page[slot]! : 0;
  }

  /** Adds `delta` to the count of a location and returns the new count. */
  add(lun: number, offset: number, delta: number): number {
    const { page, slot } = this.locate(lun, offset, true);
    const count = page![slot]! + delta;
    assert(count >= 0, `reference count of ${lun}:${offset} went below zero`);
    assert(count <= REFERENCES_MAX, `reference count of ${lun}:${offset} overflows`);
    page![slot] = count;
    return count;
  }

  clear(): void {
    this.pages.clear();
  }

  private locate(lun: number, offset: number, create: boolean): { page: Uint32Array | undefined; slot: number } {
    assert(offset % 2 ** UNIT_SHIFT === 0, `location ${offset} is not segment aligned`);
    const unit = offset / 2 ** UNIT_SHIFT;
    const pageNumber = Math.floor(unit / PAGE_UNITS);
    let lunPages = this.pages.get(lun);
    if (!lunPages) {
      if (!create) return { page: undefined, slot: 0 };
      this.pages.set(lun, (lunPages = new Map()));
    }
    let page = lunPages.get(pageNumber);
    if (!page && create) lunPages.set(pageNumber, (page = new Uint32Array(PAGE_UNITS)));
    return { page, slot: unit % PAGE_UNITS };
  }
}
