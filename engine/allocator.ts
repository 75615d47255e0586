// A buddy allocator over one storage container: blocks are powers of two, aligned to their size,
// so segments of every disk's segment size share a container and freed neighbours merge again.
// It lives only in memory: the controller rebuilds it from the tables on start (what is mapped is
// used, everything else below the high-water mark is free), so it needs no persistence of its own.
import { assert } from "./util/assert.ts";

export const BLOCK_SHIFT_MIN = 16;

export class BuddyAllocator {
  /** Free blocks by size shift: shift -> set of block offsets. */
  private readonly free = new Map<number, Set<number>>();
  private usedBytesTotal = 0;
  /** Everything at or above this offset has never been handed out. */
  private top = 0;

  constructor(readonly capacityBytes: number) {
    assert(capacityBytes >= 0 && Number.isSafeInteger(capacityBytes), "capacity must be a safe integer");
  }

  get usedBytes(): number {
    return this.usedBytesTotal;
  }

  get freeBytes(): number {
    return this.capacityBytes - this.usedBytesTotal;
  }

  /** Offset below which blocks may have been written before. */
  get highWaterBytes(): number {
    return this.top;
  }

  /** Returns the offset of a free block of 2^shift bytes, or null when none is left. */
  allocate(shift: number): number | null {
    assert(shift >= BLOCK_SHIFT_MIN && shift <= 52, `block shift ${shift} out of range`);
    const size = 2 ** shift;
    const offset = this.takeFree(shift) ?? this.takeFromTop(size);
    if (offset === null) return null;
    this.usedBytesTotal += size;
    return offset;
  }

  /**
   * Takes the particular free block at `offset` (an agent hands back a mapping the controller lost
   * in a restart, and the data written there must stay). False, taking nothing, if any part of it
   * is in use.
   */
  claim(offset: number, shift: number): boolean {
    const size = 2 ** shift;
    assert(offset % size === 0 && offset + size <= this.capacityBytes, `claim of ${offset}+${size}: not a block of the container`);
    if (offset >= this.top) {
      // Never handed out: everything between the top and the block becomes free, as if allocated.
      this.addRange(this.top, offset);
      this.top = offset + size;
    } else {
      let level = shift;
      let start = offset;
      while (level <= 52 && !this.free.get(level)?.has(start)) {
        level += 1;
        start = Math.floor(offset / 2 ** level) * 2 ** level;
      }
      if (level > 52) return false;
      this.free.get(level)!.delete(start);
      // Split down to the block, freeing the halves it does not lie in.
      for (let split = level; split > shift; split -= 1) {
        const half = 2 ** (split - 1);
        const other = offset >= start + half ? start : start + half;
        if (offset >= start + half) start += half;
        this.addFreeNoMerge(other, split - 1);
      }
    }
    this.usedBytesTotal += size;
    return true;
  }

  /** Returns a block; it merges with its free buddy into larger blocks. */
  release(offset: number, shift: number): void {
    const size = 2 ** shift;
    assert(offset % size === 0 && offset + size <= this.top, `release of ${offset}+${size}: not an allocated block`);
    this.usedBytesTotal -= size;
    assert(this.usedBytesTotal >= 0, "released more than was allocated");
    this.addFree(offset, shift);
  }

  /**
   * Rebuilds the free space from the list of used blocks (any order) and the persisted high-water
   * mark. Used blocks must not overlap.
   */
  rebuild(used: { offset: number; shift: number }[], highWaterBytes: number): void {
    this.free.clear();
    this.usedBytesTotal = 0;
    const sorted = [...used].sort((a, b) => a.offset - b.offset);
    let cursor = 0;
    for (const block of sorted) {
      const size = 2 ** block.shift;
      assert(block.offset >= cursor, `blocks overlap at ${block.offset}`);
      assert(block.offset + size <= this.capacityBytes, `block at ${block.offset} lies beyond the container`);
      this.addRange(cursor, block.offset);
      cursor = block.offset + size;
      this.usedBytesTotal += size;
    }
    this.top = Math.min(this.capacityBytes, Math.max(cursor, highWaterBytes));
    this.addRange(cursor, this.top);
  }

  private takeFree(shift: number): number | null {
    for (let larger = shift; larger <= 52; larger += 1) {
      const set = this.free.get(larger);
      if (!set || set.size === 0) continue;
      const offset = set.values().next().value as number;
      set.delete(offset);
      // Split down to the wanted size, freeing the upper halves.
      for (let split = larger; split > shift; split -= 1) this.addFreeNoMerge(offset + 2 ** (split - 1), split - 1);
      return offset;
    }
    return null;
  }

  private takeFromTop(size: number): number | null {
    const offset = Math.ceil(this.top / size) * size;
    if (offset + size > this.capacityBytes) return null;
    this.addRange(this.top, offset);
    this.top = offset + size;
    return offset;
  }

  private addFree(offset: number, shift: number): void {
    let at = offset;
    let level = shift;
    for (;;) {
      const size = 2 ** level;
      // Offsets exceed 32 bits, so no bitwise xor: the buddy is the other half of the parent.
      const buddy = Math.floor(at / size) % 2 === 0 ? at + size : at - size;
      const set = this.free.get(level);
      if (!set || !set.has(buddy)) break;
      set.delete(buddy);
      at = Math.min(at, buddy);
      level += 1;
    }
    this.addFreeNoMerge(at, level);
  }

  private addFreeNoMerge(offset: number, shift: number): void {
    let set = this.free.get(shift);
    if (!set) this.free.set(shift, (set = new Set()));
    set.add(offset);
  }

  /** Adds [from, to) as free: the largest aligned blocks that fit. */
  private addRange(from: number, to: number): void {
    let at = from;
    while (at < to) {
      let shift = BLOCK_SHIFT_MIN;
      while (at % 2 ** (shift + 1) === 0 && at + 2 ** (shift + 1) <= to) shift += 1;
      assert(at % 2 ** BLOCK_SHIFT_MIN === 0 && at + 2 ** shift <= to, `range ${from}..${to} is not 64 KiB aligned`);
      this.addFree(at, shift);
      at += 2 ** shift;
    }
  }
}
