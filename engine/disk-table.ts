// The controller's persistent copy of one disk's mapping table, kept sparse: pages of 4096 entries
// are created on first write, and a missing page means every entry in it is Z (a new disk is all
// Z, R13). The log records changes; this is the in-memory image rebuilt from it.
import { ZERO_WORD, hasLocation, isValidWord } from "../wasm/entry.ts";
import type { Runs } from "./wire/messages.ts";
import { assert } from "./util/assert.ts";

export const TABLE_PAGE_ENTRIES = 4096;

export class DiskTable {
  private readonly pages = new Map<number, Float64Array>();
  /** How many entries hold a storage location (their segments are allocated). */
  private located = 0;
  /** How many entries are not Z (what compaction writes out). */
  private filled = 0;

  constructor(readonly entryCount: number) {
    assert(Number.isSafeInteger(entryCount) && entryCount > 0, "a table needs at least one entry");
  }

  get(index: number): number {
    this.checkIndex(index);
    const page = this.pages.get(Math.floor(index / TABLE_PAGE_ENTRIES));
    return page ? page[index % TABLE_PAGE_ENTRIES]! : ZERO_WORD;
  }

  set(index: number, word: number): void {
    this.checkIndex(index);
    assert(isValidWord(word), `bad entry word ${word}`);
    const pageNumber = Math.floor(index / TABLE_PAGE_ENTRIES);
    let page = this.pages.get(pageNumber);
    if (!page) {
      if (word === ZERO_WORD) return;
      page = new Float64Array(TABLE_PAGE_ENTRIES).fill(ZERO_WORD);
      this.pages.set(pageNumber, page);
    }
    const slot = index % TABLE_PAGE_ENTRIES;
    this.located += Number(hasLocation(word)) - Number(hasLocation(page[slot]!));
    this.filled += Number(word !== ZERO_WORD) - Number(page[slot] !== ZERO_WORD);
    page[slot] = word;
  }

  get locatedCount(): number {
    return this.located;
  }

  get nonZeroCount(): number {
    return this.filled;
  }

  /** Applies runs of [word, count] starting at `first`. */
  setRuns(first: number, runs: Runs): void {
    let index = first;
    for (const [word, count] of runs) {
      for (let i = 0; i < count; i += 1) this.set(index + i, word);
      index += count;
    }
    assert(index <= this.entryCount, "runs extend beyond the table");
  }

  /** Entries [first, first+count) as runs of equal words. */
  runs(first: number, count: number): Runs {
    assert(first + count <= this.entryCount, "range beyond the table");
    const runs: Runs = [];
    let index = first;
    const end = first + count;
    while (index < end) {
      const pageNumber = Math.floor(index / TABLE_PAGE_ENTRIES);
      const pageEnd = Math.min(end, (pageNumber + 1) * TABLE_PAGE_ENTRIES);
      const page = this.pages.get(pageNumber);
      if (!page) {
        pushRun(runs, ZERO_WORD, pageEnd - index);
        index = pageEnd;
        continue;
      }
      for (; index < pageEnd; index += 1) pushRun(runs, page[index % TABLE_PAGE_ENTRIES]!, 1);
    }
    return runs;
  }

  /** Replaces this table's contents with a copy of `source` (same entry count). */
  copyFrom(source: DiskTable): void {
    assert(source.entryCount === this.entryCount, "tables of different sizes");
    this.pages.clear();
    for (const [pageNumber, page] of source.pages) this.pages.set(pageNumber, page.slice());
    this.located = source.located;
    this.filled = source.filled;
  }

  /** Every entry that holds a storage location, in index order. */
  *locations(): Generator<[index: number, word: number]> {
    for (const [index, word] of this.nonZero()) if (hasLocation(word)) yield [index, word];
  }

  /** Every entry that is not Z, in index order. */
  *nonZero(): Generator<[index: number, word: number]> {
    const pageNumbers = [...this.pages.keys()].sort((a, b) => a - b);
    for (const pageNumber of pageNumbers) {
      const page = this.pages.get(pageNumber)!;
      for (let i = 0; i < TABLE_PAGE_ENTRIES; i += 1) {
        if (page[i] !== ZERO_WORD) yield [pageNumber * TABLE_PAGE_ENTRIES + i, page[i]!];
      }
    }
  }

  private checkIndex(index: number): void {
    assert(Number.isSafeInteger(index) && index >= 0 && index < this.entryCount, `entry ${index} outside table of ${this.entryCount}`);
  }
}

function pushRun(runs: Runs, word: number, count: number): void {
  const last = runs[runs.length - 1];
  if (last && last[0] === word) last[1] += count;
  else runs.push([word, count]);
}
