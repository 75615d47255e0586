// Simulated storage containers, shared by the controller (through the pool) and the agents, as
// files on shared storage are. A block (4 KiB) holds a tag: the id of the write that put it there,
// 0 for zeros; every I/O of the system is block aligned, so tags stand for the bytes.
//
// Each host has a write-back cache: its writes are visible to every reader at once but durable only
// once that host syncs the container. A host that crashes loses a random subset of its unsynced
// writes. A durable block remembers the version (global write order) it was written at, so a late
// sync or a crash never puts an older write over a newer durable one.
//
// A container can be made to fail: while it does, each operation on it throws EIO with the given
// probability (before touching anything).
import { assert } from "../../engine/util/assert.ts";
import { LOCATION_UNIT_BYTES } from "../../wasm/entry.ts";
import type { Life } from "./scheduler.ts";
import type { Random } from "./random.ts";

export const BLOCK_BYTES = LOCATION_UNIT_BYTES;
/** The controller's host, for the writes it makes itself (zeroing, copies). */
export const CONTROLLER_HOST = "controller";

interface Version {
  tag: number;
  version: number;
}

interface Unsynced extends Version {
  host: string;
}

class Container {
  readonly durable = new Map<number, Version>();
  /** Per block, unsynced writes in write order. */
  readonly unsynced = new Map<number, Unsynced[]>();
  /** Per host, the blocks it has unsynced writes on. */
  readonly dirtyBy = new Map<string, Set<number>>();
  failProbability = 0;

  constructor(readonly blocks: number) {}
}

export class SimStorage {
  private readonly containers = new Map<number, Container>();
  private version = 0;

  constructor(private readonly random: Random) {}

  addContainer(lun: number, sizeBytes: number): void {
    assert(!this.containers.has(lun) && sizeBytes % BLOCK_BYTES === 0, `container ${lun}: bad size or added twice`);
    this.containers.set(lun, new Container(sizeBytes / BLOCK_BYTES));
  }

  /** From now on, each operation on `lun` fails with this probability (0: healthy). */
  setFailing(lun: number, probability: number): void {
    this.container(lun).failProbability = probability;
  }

  read(lun: number, offset: number, length: number): number[] {
    const container = this.operate(lun, offset, length);
    const first = offset / BLOCK_BYTES;
    return Array.from({ length: length / BLOCK_BYTES }, (_, i) => this.current(container, first + i));
  }

  write(host: string, lun: number, offset: number, tags: readonly number[]): void {
    const container = this.operate(lun, offset, tags.length * BLOCK_BYTES);
    const first = offset / BLOCK_BYTES;
    for (const [i, tag] of tags.entries()) this.put(container, host, first + i, tag);
  }

  zero(host: string, lun: number, offset: number, length: number): void {
    this.write(host, lun, offset, new Array<number>(length / BLOCK_BYTES).fill(0));
  }

  copy(host: string, fromLun: number, fromOffset: number, toLun: number, toOffset: number, length: number): void {
    this.write(host, toLun, toOffset, this.read(fromLun, fromOffset, length));
  }

  /** fdatasync of one container by one host: its writes there become durable. */
  sync(host: string, lun: number): void {
    const container = this.operate(lun, 0, 0);
    for (const block of container.dirtyBy.get(host) ?? []) this.settle(container, host, block, () => true);
    container.dirtyBy.delete(host);
  }

  /** A host lost power: each of its unsynced writes reached the disk or did not. */
  crashHost(host: string): void {
    for (const container of this.containers.values()) {
      for (const block of container.dirtyBy.get(host) ?? []) this.settle(container, host, block, () => this.random.chance(0.5));
      container.dirtyBy.delete(host);
    }
  }

  /** The newest write of a block, synced or not. */
  private current(container: Container, block: number): number {
    const pending = container.unsynced.get(block);
    const newest = pending?.[pending.length - 1];
    const durable = container.durable.get(block);
    if (newest && (!durable || durable.version < newest.version)) return newest.tag;
    return durable?.tag ?? 0;
  }

  private put(container: Container, host: string, block: number, tag: number): void {
    let pending = container.unsynced.get(block);
    if (!pending) container.unsynced.set(block, (pending = []));
    pending.push({ tag, version: ++this.version, host });
    let dirty = container.dirtyBy.get(host);
    if (!dirty) container.dirtyBy.set(host, (dirty = new Set()));
    dirty.add(block);
  }

  /** Ends `host`'s unsynced writes on a block: those `keep` says reach the disk, the rest vanish. */
  private settle(container: Container, host: string, block: number, keep: () => boolean): void {
    const pending = container.unsynced.get(block)!;
    for (const write of pending) {
      if (write.host !== host || !keep()) continue;
      const durable = container.durable.get(block);
      if (!durable || durable.version < write.version) container.durable.set(block, { tag: write.tag, version: write.version });
    }
    const others = pending.filter((write) => write.host !== host);
    if (others.length > 0) container.unsynced.set(block, others);
    else container.unsynced.delete(block);
  }

  private container(lun: number): Container {
    const container = this.containers.get(lun);
    assert(container, `unknown container ${lun}`);
    return container;
  }

  /** The container for an operation on [offset, offset+length), or EIO when it is failing. */
  private operate(lun: number, offset: number, length: number): Container {
    const container = this.container(lun);
    assert(offset % BLOCK_BYTES === 0 && length % BLOCK_BYTES === 0, `I/O at ${offset}+${length} is not block aligned`);
    assert(offset + length <= container.blocks * BLOCK_BYTES, `I/O at ${offset}+${length} lies beyond container ${lun}`);
    if (container.failProbability > 0 && this.random.chance(container.failProbability)) {
      throw Object.assign(new Error(`EIO: i/o error on container ${lun}`), { code: "EIO" });
    }
    return container;
  }
}

/** Bytes holding `tags`, a block each: the tag as a little-endian uint32 in the first 4 bytes of
 *  its block, the rest zeros (tag 0 is a block of zeros). */
export function blocksOf(tags: readonly number[]): Uint8Array {
  const bytes = new Uint8Array(tags.length * BLOCK_BYTES);
  putTags(bytes, 0, tags);
  return bytes;
}

/** Writes `tags` as blocks (see blocksOf) into `into` from `at` on. */
export function putTags(into: Uint8Array, at: number, tags: readonly number[]): void {
  into.fill(0, at, at + tags.length * BLOCK_BYTES);
  const view = new DataView(into.buffer, into.byteOffset);
  for (const [i, tag] of tags.entries()) view.setUint32(at + i * BLOCK_BYTES, tag, true);
}

/** The tags of the `length` bytes of blocks in `bytes` from `at` on (see blocksOf). */
export function tagsOf(bytes: Uint8Array, at: number, length: number): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return Array.from({ length: length / BLOCK_BYTES }, (_, i) => view.getUint32(at + i * BLOCK_BYTES, true));
}

/** The I/O one process does: refused once its Life has ended (a dead process does nothing). */
export class HostStorage {
  constructor(
    readonly storage: SimStorage,
    readonly host: string,
    private readonly life: Life,
  ) {}

  read(lun: number, offset: number, length: number): number[] {
    this.checkAlive();
    return this.storage.read(lun, offset, length);
  }

  write(lun: number, offset: number, tags: readonly number[]): void {
    this.checkAlive();
    this.storage.write(this.host, lun, offset, tags);
  }

  zero(lun: number, offset: number, length: number): void {
    this.checkAlive();
    this.storage.zero(this.host, lun, offset, length);
  }

  copy(fromLun: number, fromOffset: number, toLun: number, toOffset: number, length: number): void {
    this.checkAlive();
    this.storage.copy(this.host, fromLun, fromOffset, toLun, toOffset, length);
  }

  sync(lun: number): void {
    this.checkAlive();
    this.storage.sync(this.host, lun);
  }

  private checkAlive(): void {
    if (!this.life.isAlive) throw new Error(`${this.life.name} has crashed`);
  }
}
