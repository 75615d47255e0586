// The storage pool: every container (LUN) with its allocator, and the few data operations the
// controller does itself (zeroing a reused segment before it is mapped, copy-on-write copies)
// through a ContainerIo: the container files, or what a test puts in their place.
import { fdatasyncSync, openSync, writeSync } from "node:fs";
import { BuddyAllocator } from "./allocator.ts";
import type { Catalog, Lun } from "./catalog.ts";
import { entryContainer, entryLocation, entryOffsetBytes } from "../wasm/entry.ts";
import { assert } from "./util/assert.ts";
import { PoolTransfers, readOnPool, writeOnPool } from "./util/pool-transfers.ts";

/** How far the persisted high-water mark moves at a time, so it is rarely logged. */
export const HIGH_WATER_STEP_BYTES = 256 * 1024 * 1024;
const ZERO_CHUNK_BYTES = 1024 * 1024;
const COPY_CHUNK_BYTES = 1024 * 1024;

export interface Allocation {
  lun: number;
  offset: number;
  /** The block may hold old data: whatever the host does not write must be zeroed first. */
  dirty: boolean;
}

/** The controller's own data operations on containers. */
export interface ContainerIo {
  /** Writes zeros over [offset, offset+length) of a container (not yet durable). */
  zero(lun: number, offset: number, length: number): void;
  /** Copies bytes from one place to another (not yet durable). */
  copy(fromLun: number, fromOffset: number, toLun: number, toOffset: number, length: number): void | Promise<void>;
  /** Makes what was written to a container durable (fdatasync). */
  sync(lun: number): void;
  /** Forgets what is open of a container: the next operation opens it again (after a repair). */
  reopen(lun: number): void;
  close(): void;
}

export class Pool {
  private readonly allocators = new Map<number, BuddyAllocator>();
  /** Per container: below this offset blocks may hold data written before this run. */
  private readonly dirtyBelowAtStart = new Map<number, number>();

  constructor(
    private readonly catalog: Catalog,
    private readonly io: ContainerIo = new ContainerFileIo(catalog),
  ) {}

  /** Rebuilds every allocator from the tables: mapped segments are used, the rest is free. */
  rebuild(): void {
    const used = new Map<number, { offset: number; shift: number }[]>();
    for (const lun of this.catalog.luns.values()) used.set(lun.id, []);
    const seen = new Set<number>();
    for (const disk of this.catalog.disks.values()) {
      for (const [, word] of disk.table.locations()) {
        // A segment shared by several disks (snapshots) is one block.
        if (seen.has(entryLocation(word))) continue;
        seen.add(entryLocation(word));
        const blocks = used.get(entryContainer(word));
        assert(blocks, `disk ${disk.name} maps a segment on unknown container ${entryContainer(word)}`);
        blocks.push({ offset: entryOffsetBytes(word), shift: disk.segmentShift });
      }
    }
    this.allocators.clear();
    for (const lun of this.catalog.luns.values()) this.addLun(lun, used.get(lun.id)!);
  }

  addLun(lun: Lun, used: { offset: number; shift: number }[] = []): void {
    const allocator = new BuddyAllocator(lun.size);
    allocator.rebuild(used, lun.highWater);
    this.allocators.set(lun.id, allocator);
    this.dirtyBelowAtStart.set(lun.id, lun.highWater);
  }

  /** A free block of 2^shift bytes, or null when the whole pool is full. */
  allocate(shift: number): Allocation | null {
    const usable = [...this.catalog.luns.values()].filter((lun) => lun.failed === null);
    for (const lun of usable.sort((a, b) => this.freeBytes(b.id) - this.freeBytes(a.id))) {
      const allocator = this.allocators.get(lun.id)!;
      // Old data can only lie below what was handed out in this run, or below the mark persisted
      // before it (the persisted mark runs ahead in steps, so it is not used for this run's blocks).
      const dirtyBelow = Math.max(allocator.highWaterBytes, this.dirtyBelowAtStart.get(lun.id)!);
      const offset = allocator.allocate(shift);
      if (offset !== null) return { lun: lun.id, offset, dirty: offset < dirtyBelow };
    }
    return null;
  }

  /** Takes a particular free block (see BuddyAllocator.claim); false if it is not free. */
  claim(lun: number, offset: number, shift: number): boolean {
    return this.allocators.get(lun)?.claim(offset, shift) ?? false;
  }

  release(lun: number, offset: number, shift: number): void {
    this.allocators.get(lun)!.release(offset, shift);
  }

  /** The high-water mark to persist so that `end` lies below it, or null if it already does. */
  highWaterNeeded(lunId: number, end: number): number | null {
    const lun = this.catalog.luns.get(lunId)!;
    if (end <= lun.highWater) return null;
    return Math.min(lun.size, Math.ceil(end / HIGH_WATER_STEP_BYTES) * HIGH_WATER_STEP_BYTES);
  }

  usedBytes(lun: number): number {
    return this.allocators.get(lun)?.usedBytes ?? 0;
  }

  freeBytes(lun: number): number {
    return this.allocators.get(lun)?.freeBytes ?? 0;
  }

  zero(lun: number, offset: number, length: number): void {
    this.io.zero(lun, offset, length);
  }

  copy(fromLun: number, fromOffset: number, toLun: number, toOffset: number, length: number): void | Promise<void> {
    return this.io.copy(fromLun, fromOffset, toLun, toOffset, length);
  }

  sync(lun: number): void {
    this.io.sync(lun);
  }

  reopen(lun: number): void {
    this.io.reopen(lun);
  }

  close(): void {
    this.io.close();
  }
}

/** ContainerIo on the container files (paths from the catalog), opened on first use. */
export class ContainerFileIo implements ContainerIo {
  private readonly files = new Map<number, number>();
  private zeroChunk: Uint8Array | null = null;
  private readonly transfers = new PoolTransfers();

  constructor(private readonly catalog: Catalog) {}

  zero(lun: number, offset: number, length: number): void {
    const fd = this.file(lun);
    this.zeroChunk ??= new Uint8Array(ZERO_CHUNK_BYTES);
    for (let done = 0; done < length; ) {
      const piece = Math.min(ZERO_CHUNK_BYTES, length - done);
      done += writeSync(fd, this.zeroChunk, 0, piece, offset + done);
    }
  }

  /** On the I/O thread pool, so the controller goes on serving while copies run (several at once). */
  async copy(fromLun: number, fromOffset: number, toLun: number, toOffset: number, length: number): Promise<void> {
    const from = this.file(fromLun);
    const to = this.file(toLun);
    const buffer = Buffer.allocUnsafe(Math.min(COPY_CHUNK_BYTES, length));
    await this.transfers.using([from, to], async () => {
      for (let done = 0; done < length; ) {
        const want = Math.min(buffer.length, length - done);
        let got = 0;
        while (got < want) {
          const read = await readOnPool(from, buffer, got, want - got, fromOffset + done + got);
          // Past the end of a sparse container file reads as zeros.
          if (read === 0) break;
          got += read;
        }
        buffer.fill(0, got, want);
        for (let written = 0; written < want; ) written += await writeOnPool(to, buffer, written, want - written, toOffset + done + written);
        done += want;
      }
    });
  }

  sync(lun: number): void {
    fdatasyncSync(this.file(lun));
  }

  reopen(lun: number): void {
    const fd = this.files.get(lun);
    if (fd !== undefined) this.transfers.close(fd);
    this.files.delete(lun);
  }

  close(): void {
    for (const fd of this.files.values()) this.transfers.close(fd);
    this.files.clear();
  }

  private file(lunId: number): number {
    let fd = this.files.get(lunId);
    if (fd === undefined) {
      const lun = this.catalog.luns.get(lunId);
      assert(lun, `unknown container ${lunId}`);
      fd = openSync(lun.path, "r+");
      this.files.set(lunId, fd);
    }
    return fd;
  }
}
