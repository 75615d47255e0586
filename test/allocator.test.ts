import { describe, expect, test } from "bun:test";
import { BuddyAllocator } from "../engine/allocator.ts";

const KIB64 = 16;
const MIB = 20;

describe("allocator", () => {
  test("allocator: blocks of mixed sizes never overlap and are aligned to their size", () => {
    const allocator = new BuddyAllocator(64 * 2 ** 20);
    const taken: [number, number][] = [];
    for (let i = 0; i < 40; i += 1) {
      const shift = i % 3 === 0 ? MIB : KIB64;
      const offset = allocator.allocate(shift);
      expect(offset).not.toBeNull();
      expect(offset! % 2 ** shift).toBe(0);
      taken.push([offset!, offset! + 2 ** shift]);
    }
    taken.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < taken.length; i += 1) expect(taken[i]![0]).toBeGreaterThanOrEqual(taken[i - 1]![1]);
  });

  test("allocator: a full container returns null, and a released block can be had again", () => {
    const allocator = new BuddyAllocator(4 * 2 ** 20);
    const blocks = [0, 1, 2, 3].map(() => allocator.allocate(MIB));
    expect(blocks.every((block) => block !== null)).toBe(true);
    expect(allocator.allocate(MIB)).toBeNull();
    expect(allocator.allocate(KIB64)).toBeNull();
    allocator.release(blocks[2]!, MIB);
    expect(allocator.freeBytes).toBe(2 ** 20);
    expect(allocator.allocate(KIB64)).toBe(blocks[2]!);
  });

  test("allocator: a particular free block can be claimed (inside a larger free block or above the top), a used one cannot", () => {
    const allocator = new BuddyAllocator(8 * 2 ** 20);
    allocator.rebuild([], 4 * 2 ** 20);
    // Inside the free 4 MiB block: the rest stays free, nothing else is handed out over it.
    expect(allocator.claim(3 * 2 ** 16, KIB64)).toBe(true);
    expect(allocator.claim(3 * 2 ** 16, KIB64)).toBe(false);
    expect(allocator.usedBytes).toBe(2 ** 16);
    // Above the top (never handed out).
    expect(allocator.claim(6 * 2 ** 20, MIB)).toBe(true);
    expect(allocator.claim(6 * 2 ** 20 + 2 ** 16, KIB64)).toBe(false);
    const taken = new Set<number>();
    for (let offset = allocator.allocate(KIB64); offset !== null; offset = allocator.allocate(KIB64)) taken.add(offset);
    expect(taken.has(3 * 2 ** 16)).toBe(false);
    for (let i = 0; i < 16; i += 1) expect(taken.has(6 * 2 ** 20 + i * 2 ** 16)).toBe(false);
    expect(taken.size).toBe(8 * 16 - 1 - 16);
    // Released, it merges back with the rest.
    allocator.release(3 * 2 ** 16, KIB64);
    expect(allocator.allocate(KIB64)).toBe(3 * 2 ** 16);
  });

  test("allocator: freed buddies merge back into a large block", () => {
    const allocator = new BuddyAllocator(2 ** 20);
    const small = Array.from({ length: 16 }, () => allocator.allocate(KIB64)!);
    expect(allocator.allocate(KIB64)).toBeNull();
    for (const offset of small) allocator.release(offset, KIB64);
    expect(allocator.allocate(MIB)).toBe(0);
  });

  test("allocator: rebuild from used blocks frees exactly the gaps below the high-water mark", () => {
    const allocator = new BuddyAllocator(16 * 2 ** 20);
    allocator.rebuild([{ offset: 2 ** 20, shift: MIB }, { offset: 3 * 2 ** 20, shift: KIB64 }], 8 * 2 ** 20);
    expect(allocator.usedBytes).toBe(2 ** 20 + 2 ** 16);
    expect(allocator.highWaterBytes).toBe(8 * 2 ** 20);
    const got = new Set<number>();
    for (;;) {
      const offset = allocator.allocate(KIB64);
      if (offset === null) break;
      got.add(offset);
    }
    expect(got.has(2 ** 20)).toBe(false);
    expect(got.has(3 * 2 ** 20)).toBe(false);
    expect(got.size).toBe((16 * 2 ** 20 - 2 ** 20 - 2 ** 16) / 2 ** 16);
  });

  test("allocator: offsets beyond 4 GiB work (no 32-bit arithmetic)", () => {
    const allocator = new BuddyAllocator(2 ** 40);
    allocator.rebuild([], 2 ** 36);
    const offsets = Array.from({ length: 4 }, () => allocator.allocate(MIB)!);
    for (const offset of offsets) allocator.release(offset, MIB);
    expect(allocator.usedBytes).toBe(0);
    expect(allocator.allocate(36)).toBe(0);
  });
});
