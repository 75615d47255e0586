// The oracle: for every block of every disk, which values a read may return. A write is tagged
// with a unique number per block; zeros are 0. Per block the model keeps
//   current  the values a read may return now (more than one while a write is in flight, after a
//            failed write, or after a crash);
//   base     the values that may be durable under the writes since;
//   recent   the writes since base, with the host whose cache holds them until a FLUSH and the
//            connection they were made on.
// A FLUSH on a connection makes the writes acknowledged on it before the FLUSH began durable: base
// becomes the last of them, whatever failed before or after it (NBD's rule). A FUA write, once
// acknowledged, is durable as if a FLUSH covering just it followed. When a host crashes, a block with
// unflushed writes from it may read anything in base or recent. A controller crash may lose the
// mapping of any unflushed write (reads may show it gone), but its agent hands it back or fails
// every later FLUSH of the connection: a FLUSH that succeeds still covers it. An agent that dies
// before it has handed back takes such writes with it, as a host crash does. A
// read narrows `current` to what it saw when nothing could change meanwhile, so a value that flips
// later is caught; a snapshot's blocks never change unless a crash allows it.
import { assert } from "../../engine/util/assert.ts";
import { CONTROLLER_HOST } from "./storage.ts";

/** The "host" of writes whose host crashed before they were flushed. */
const CRASHED = "";

interface Write {
  tag: number;
  host: string;
  /** The host connection it was made on. */
  connection: string;
  acked: boolean;
  /** Order of acknowledgement, to tell which writes a FLUSH covers. */
  ackOrder: number;
}

class Block {
  current = new Set([0]);
  /** Every value that entered `current`, in order: a read may return any of those added while it ran. */
  readonly added: number[] = [0];
  base = new Set([0]);
  recent: Write[] = [];
  writing = 0;
  /** Bumped whenever `current` may change (a write begins or ends, a crash, a copy). */
  changes = 0;
  /** An unmap of this block may still take effect (its request failed, the controller may act on
   *  it later): zeros stay possible, and reads are not narrowed, until an unmap succeeds. */
  zombieZero = false;

  widenTo(values: Iterable<number>): void {
    this.changes += 1;
    for (const value of values) {
      if (this.current.has(value)) continue;
      this.current.add(value);
      this.added.push(value);
    }
  }

  afterCrash(): Set<number> {
    return new Set([...this.base, ...this.recent.map((write) => write.tag)]);
  }
}

export class ModelDisk {
  readonly blocks: Block[];

  constructor(readonly name: string, blockCount: number) {
    this.blocks = Array.from({ length: blockCount }, () => new Block());
  }

  block(index: number): Block {
    const block = this.blocks[index];
    assert(block, `disk ${this.name}: no block ${index}`);
    return block;
  }
}

export interface ReadWindow {
  disk: ModelDisk;
  first: number;
  sets: Set<number>[];
  addedAt: number[];
  /** Per block: its `changes` when the read began, or -1 if a write was in flight then. */
  changesAt: number[];
}

/** Where a disk stood when a table copy (snapshot, rollback) began: what it may capture. */
export interface CopyWindow {
  source: ModelDisk;
  reads: ReadWindow;
}

export interface PendingWrite {
  disk: ModelDisk;
  first: number;
  writes: Write[];
}

export class Model {
  readonly disks = new Map<string, ModelDisk>();
  /** A controller crashed and not every agent has registered with its successor yet. */
  private controllerLossPending = false;
  private ackOrder = 0;

  /** A new disk: all zeros. */
  addDisk(name: string, blockCount: number): ModelDisk {
    assert(!this.disks.has(name), `model: disk ${name} exists`);
    const disk = new ModelDisk(name, blockCount);
    this.disks.set(name, disk);
    return disk;
  }

  deleteDisk(name: string): void {
    this.disks.delete(name);
  }

  beginWrite(disk: ModelDisk, first: number, tags: readonly number[], host: string, connection: string): PendingWrite {
    const writes = tags.map((tag, i) => {
      const block = disk.block(first + i);
      const write: Write = { tag, host, connection, acked: false, ackOrder: 0 };
      block.writing += 1;
      block.widenTo([tag]);
      block.recent.push(write);
      return write;
    });
    return { disk, first, writes };
  }

  /** The write was acknowledged (ok) or failed (its blocks may hold either value); an
   *  acknowledged FUA write is durable. */
  endWrite(pending: PendingWrite, ok: boolean, fua = false): void {
    for (const [i, write] of pending.writes.entries()) {
      const block = pending.disk.block(pending.first + i);
      block.writing -= 1;
      block.changes += 1;
      if (!ok) continue;
      write.acked = true;
      write.ackOrder = ++this.ackOrder;
      block.current = new Set([write.tag]);
      if (block.zombieZero) block.widenTo([0]);
      if (this.controllerLossPending) block.widenTo(block.afterCrash());
      if (fua) settleDurable(block, block.recent.indexOf(write));
    }
  }

  /** Unmapping whole segments (TRIM): zeros, durable as soon as it is acknowledged; until then a
   *  change of the controller's (its host's crash can undo it). */
  beginUnmap(disk: ModelDisk, first: number, count: number): PendingWrite {
    return this.beginWrite(disk, first, new Array<number>(count).fill(0), CONTROLLER_HOST, CONTROLLER_HOST);
  }

  endUnmap(pending: PendingWrite, ok: boolean): void {
    this.endWrite(pending, ok);
    for (let i = 0; i < pending.writes.length; i += 1) {
      const block = pending.disk.block(pending.first + i);
      if (!ok) {
        block.zombieZero = true;
        continue;
      }
      block.zombieZero = false;
      block.current = new Set([0]);
      block.base = new Set([0]);
      block.recent = [];
    }
  }

  /** The point a FLUSH began: writes acknowledged before it are covered. */
  flushMark(): number {
    return this.ackOrder;
  }

  /** A FLUSH on `connection` began at `mark` and was acknowledged. */
  flushed(disk: ModelDisk, connection: string, mark: number): void {
    for (const block of disk.blocks) {
      let last = -1;
      for (const [i, write] of block.recent.entries()) {
        if (write.connection === connection && write.acked && write.ackOrder <= mark) last = i;
      }
      settleDurable(block, last);
    }
  }

  /** `host` crashed: its unflushed writes may be lost, so such blocks may read anything since
   *  base. The crash settled them (kept or lost): no later FLUSH makes them durable. */
  hostCrashed(host: string): void {
    for (const disk of this.disks.values()) {
      for (const block of disk.blocks) {
        const lost = block.recent.filter((write) => write.host === host);
        if (lost.length === 0) continue;
        block.widenTo(block.afterCrash());
        for (const write of lost) write.host = CRASHED;
      }
    }
  }

  /**
   * The controller crashed: the mapping changes it had not committed are lost. Agents keep using
   * them until they register with the next controller, so until then any unflushed write, also
   * one made after the crash, may still vanish: reads narrow nothing.
   */
  controllerCrashed(): void {
    this.controllerLossPending = true;
    this.unflushedMayBeLost();
  }

  /**
   * An agent process crashed (its host's cache keeps the data): while a crashed controller's
   * successor has not heard from every agent, the mapping changes this agent held to hand back
   * die with it, and with them the unflushed writes its host made through them: as after a crash
   * of the host, no later FLUSH covers them.
   */
  agentProcessCrashed(host: string): void {
    if (this.controllerLossPending) this.hostCrashed(host);
  }

  /** Every running agent has registered with the new controller: the losses have happened. */
  controllerLossesSettled(): void {
    if (!this.controllerLossPending) return;
    this.controllerLossPending = false;
    this.unflushedMayBeLost();
  }

  private unflushedMayBeLost(): void {
    for (const disk of this.disks.values()) {
      for (const block of disk.blocks) {
        if (block.recent.length === 0) continue;
        // Reads may show them gone; their hosts keep them (a FLUSH that succeeds covers them).
        block.widenTo(block.afterCrash());
      }
    }
  }

  beginRead(disk: ModelDisk, first: number, count: number): ReadWindow {
    const sets: Set<number>[] = [];
    const addedAt: number[] = [];
    const changesAt: number[] = [];
    for (let i = 0; i < count; i += 1) {
      const block = disk.block(first + i);
      sets.push(new Set(block.current));
      addedAt.push(block.added.length);
      changesAt.push(block.writing > 0 ? -1 : block.changes);
    }
    return { disk, first, sets, addedAt, changesAt };
  }

  /** Checks what a read returned; returns the violation, or null. */
  checkRead(window: ReadWindow, values: readonly number[]): string | null {
    assert(values.length === window.sets.length, "read returned the wrong number of blocks");
    for (const [i, value] of values.entries()) {
      const block = window.disk.block(window.first + i);
      const since = block.added.slice(window.addedAt[i]!);
      if (!window.sets[i]!.has(value) && !since.includes(value)) {
        const allowed = [...new Set([...window.sets[i]!, ...since])].sort((a, b) => a - b);
        return `disk ${window.disk.name} block ${window.first + i} reads ${value}, but only ${allowed.join(", ")} may be there`;
      }
      // Nothing could change it while the read ran: from now on it must read this. (Not while an
      // unmap may still land: the agents switch to it one by one.)
      if (window.changesAt[i] === block.changes && !block.zombieZero && !this.controllerLossPending) block.current = new Set([value]);
    }
    return null;
  }

  /** A table copy of `source` begins (snapshot or rollback): it captures the source somewhere in
   *  the window from now until it ends. */
  beginCopy(source: ModelDisk): CopyWindow {
    return { source, reads: this.beginRead(source, 0, source.blocks.length) };
  }

  /** Each block of the copy may hold what its source held at any time in the window. */
  capture(window: CopyWindow, into: ModelDisk): void {
    for (const [i, block] of into.blocks.entries()) {
      const source = window.source.block(i);
      const values = new Set([...window.reads.sets[i]!, ...source.added.slice(window.reads.addedAt[i]!)]);
      block.current = new Set();
      block.widenTo(values);
      block.base = new Set([...source.base, ...values]);
      block.recent = source.recent.map((write) => ({ ...write }));
      block.zombieZero = source.zombieZero;
    }
  }

  /** A snapshot (or clone) of `window.source` now exists as `name`. */
  addCopy(window: CopyWindow, name: string): ModelDisk {
    const disk = this.addDisk(name, window.source.blocks.length);
    this.capture(window, disk);
    return disk;
  }

}

/** The write at `index` of the block's recent writes (none if negative) is durable: it is the
 *  base now, and the writes before it no longer matter. If it is the last write, with none in
 *  flight and no unmap that may still land, it is all a read may return from now on (a crash
 *  before may have left more values possible: a lost mapping would show here). */
function settleDurable(block: Block, index: number): void {
  if (index < 0) return;
  const { tag } = block.recent[index]!;
  block.base = new Set([tag]);
  block.recent = block.recent.slice(index + 1);
  if (block.recent.length > 0 || block.writing > 0 || block.zombieZero) return;
  block.current = new Set([tag]);
  // A read in progress may have begun while more was possible: it must not narrow it back.
  block.changes += 1;
}
