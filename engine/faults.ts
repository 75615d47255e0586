// Resolving faults (R5) and unmapping: what the controller does when an agent could not do an I/O
// on its own. Write to Z: allocate (R13). Write to Nw: copy-on-write, by forward delta (process
// 400: the writer gets a new segment) or reverse delta (process 500: the writer keeps the segment,
// every other disk sharing it moves to the copy), or, when no other disk shares the segment any
// more, simply clear Nw. TRIM of whole segments: back to Z (R15).
import type { Catalog, Disk, Freed, LogRecord } from "./catalog.ts";
import type { Allocation, Pool } from "./pool.ts";
import type { ArgsOf, ControllerRequests, ResultOf } from "./wire/messages.ts";
import { assert } from "./util/assert.ts";
import { RequestError } from "./wire/peer.ts";
import { ENTRY_NO_WRITE, ZERO_WORD, entryContainer, entryOffsetBytes, entryState, hasLocation, mappedWord, withState } from "../wasm/entry.ts";

export type FaultArgs = ArgsOf<ControllerRequests, "fault">;
export type FaultAnswer = ResultOf<ControllerRequests, "fault">;

/** What fault handling needs from the controller. */
export interface TableContext {
  readonly catalog: Catalog;
  readonly pool: Pool;
  /** Appends, applies and commits records; returns the segments they left unreferenced, which
   *  are free for others once `release`d (after no agent can still be using them). */
  persist(records: LogRecord[]): Promise<Freed[]>;
  /** Appends and applies records that free nothing, durable at the next commit (a FLUSH that
   *  needs them, or any persist): they are lost if this controller run ends first. Returns their
   *  position in the log, for `isDurable`. */
  record(records: LogRecord[]): number;
  /** How many records of this controller run were applied: the position of the last one, in
   *  the count a later run recovers (see the catalog's "run" record). */
  runPosition(): number;
  /** Whether the records up to `position` (as `record` returned it) are durable by now. */
  isDurable(position: number): boolean;
  /** Makes every record appended so far durable. */
  commit(): Promise<void>;
  /** This controller run, named in answers whose changes are not durable yet. */
  readonly run: number;
  /** Whether `agent` is the only agent that holds the table of `disk`. */
  onlyHolder(disk: Disk, agent: object): boolean;
  /** Resolves once no agent can still use mappings this controller lost in a restart (changes
   *  that were never committed): every agent known from before has registered again, dropping
   *  its entries and handing back those changes (restore.ts), or its lease has run out. Tables
   *  change and blocks are handed out only after that. */
  tablesSettled(): Promise<void>;
  release(freed: Freed[]): void;
  /** Sends the current entries `segments` of `disk` to its agents (but `except`) and waits until
   *  they applied them (with `blocking`, until their I/O in progress has drained too). */
  pushEntries(disk: Disk, segments: number[], options: { blocking: boolean; except?: object }): Promise<void>;
  /** Makes `agent` drop the entries `segments` of `disk` (Invalid: its next I/O there faults) and
   *  waits until its I/O to the disk in progress has drained (the blocking flag). */
  dropEntries(agent: object, disk: Disk, segments: number[]): Promise<void>;
  /** The entries `segments` of `disk` moved to other locations: its agents (but `except`) get them,
   *  or, when several agents hold the table, every one of them drops them; waits until they have. */
  moveEntries(disk: Disk, segments: number[], options: { blocking: boolean; except?: object }): Promise<void>;
  /** Numbers a change to the entries of `disk` about to be sent (a fault's answer). */
  nextChange(disk: Disk): number;
  /** Test-only crash points (see failpoints.ts). */
  failpoint(name: string): void;
}

interface Copy {
  segment: number;
  from: number;
  to: Allocation;
}

export class FaultResolver {
  /**
   * Per disk, the log position of its latest changes left uncommitted. Until they are durable,
   * every answer for the disk names this run, not only the answer to the fault that made them:
   * that answer may never have reached its agent (lost with its connection, the fault then asked
   * again), or the entries may go to another agent or a new incarnation, which would otherwise
   * write through them with nothing for its FLUSH to commit.
   */
  private readonly uncommittedUpTo = new Map<number, { position: number; runPosition: number }>();

  constructor(private readonly ctx: TableContext) {}

  /**
   * Resolves faults of `disk` from `agent` that queued up together; the caller holds the family
   * lock of `disk` (deleted meanwhile: the faults fail with EIO). Writes are resolved as one batch
   * (one pass over the table, one sync per container for all their copies and zeroing, one set of
   * log records); should the batch fail (the pool too full for all of it, a failing container),
   * each fault is resolved on its own, so that only those the failure concerns fail.
   */
  async resolve(disk: Disk, faults: FaultArgs[], agent: object): Promise<PromiseSettledResult<FaultAnswer>[]> {
    assert(faults.length > 0, "a batch holds at least one fault");
    if (this.ctx.catalog.disks.get(disk.id) !== disk) return faults.map(() => ({ status: "fulfilled", value: { action: "error", errno: "EIO" } }));
    if (faults.length > 1 && faults.every((fault) => fault.op === "write" || fault.op === "zero")) {
      const outcome = await this.makeWritable(disk, faults, agent).catch(() => "failed" as const);
      if (outcome === "writable") return faults.map((fault) => ({ status: "fulfilled", value: this.retryAnswer(disk, fault) }));
    }
    const settled: PromiseSettledResult<FaultAnswer>[] = [];
    for (const fault of faults) {
      try {
        settled.push({ status: "fulfilled", value: await this.resolveOne(disk, fault, agent) });
      } catch (reason) {
        settled.push({ status: "rejected", reason });
      }
    }
    return settled;
  }

  private async resolveOne(disk: Disk, fault: FaultArgs, agent: object): Promise<FaultAnswer> {
    try {
      if (fault.op === "trim") {
        await this.unmap(disk, fault.first, fault.last);
      } else if (fault.op === "write" || fault.op === "zero") {
        if ((await this.makeWritable(disk, [fault], agent)) === "pool full") return { action: "error", errno: "ENOSPC" };
      }
    } catch (error) {
      // The controller's log is full: the host gets ENOSPC, as for a full pool.
      if (error instanceof RequestError && error.code === "ENOSPC") return { action: "error", errno: "ENOSPC" };
      throw error;
    }
    return this.retryAnswer(disk, fault);
  }

  /** The fault's segments as they are now: the agent sets them and retries its request. */
  private retryAnswer(disk: Disk, fault: FaultArgs): FaultAnswer {
    const answer: FaultAnswer = {
      action: "retry",
      first: fault.first,
      runs: this.ctx.catalog.agentRuns(disk, fault.first, fault.last - fault.first + 1),
      change: this.ctx.nextChange(disk),
    };
    const upTo = this.uncommitted(disk);
    return upTo ? { ...answer, run: this.ctx.run, at: upTo.runPosition } : answer;
  }

  /** An agent's FLUSH: the changes its faults were answered with in controller run `run` are made
   *  durable; if that run has ended, they were lost with it. */
  async commit(run: number): Promise<void> {
    if (run !== this.ctx.run) throw new RequestError("ESTALE", `mapping changes of controller run ${run} were lost when it ended (this is run ${this.ctx.run})`);
    await this.ctx.commit();
  }

  /**
   * Gives every segment of the faults a writable location. The faulting disk's new mappings stay
   * uncommitted (no log fsync per fault; the agent's FLUSH or FUA write commits them) unless
   * another agent holds the disk's table too (its FLUSH would not know). What a reverse
   * delta moves to the copy (the other disks: a snapshot must never lose data) is always committed.
   */
  private async makeWritable(disk: Disk, faults: FaultArgs[], agent: object): Promise<"pool full" | "writable"> {
    const { catalog } = this.ctx;
    await this.ctx.tablesSettled();
    const zero: number[] = [];
    const exclusive: number[] = [];
    const shared: number[] = [];
    for (const [segment, op] of segmentOps(faults)) {
      const word = disk.table.get(segment);
      if (word === ZERO_WORD && op === "write") zero.push(segment);
      else if (hasLocation(word) && entryState(word) & ENTRY_NO_WRITE) (catalog.references(word) > 1 ? shared : exclusive).push(segment);
    }
    // Nobody else uses the exclusive ones any more (their sharers were deleted or moved off): Nw
    // just goes. The disk will write them in place, so what took the sharers off must be durable
    // first: a forward delta's move is left uncommitted, and a controller restart that lost it
    // would give the sharer back a segment this disk has written over.
    if (exclusive.length > 0) await this.ctx.commit();
    const fresh = this.allocate(disk, zero.length + shared.length);
    if (!fresh) return "pool full";
    const records: LogRecord[] = [];
    for (const segment of exclusive) records.push(this.entryRecord(disk, segment, withoutNoWrite(disk.table.get(segment))));
    const copies = shared.map((segment, i) => ({ segment, from: disk.table.get(segment), to: fresh[zero.length + i]! }));
    try {
      await this.prepareAndMap(disk, agent, zero, copies, fresh, records);
    } catch (error) {
      // An error (a failing container, R14, or a full log): the new segments no table points at
      // go back (a reverse delta may have moved other disks onto some already).
      this.giveBackUnreferenced(disk, fresh);
      throw error;
    }
    // A cleared No-write, and reverse delta, keep the faulting disk's locations; the others move.
    const leaving = disk.mode === "reverse" ? [] : shared;
    const kept = disk.mode === "reverse" ? [...exclusive, ...shared] : exclusive;
    await Promise.all([
      this.ctx.moveEntries(disk, zero, { blocking: false, except: agent }),
      this.leaveSharedSegments(disk, leaving, agent),
      this.ctx.pushEntries(disk, kept, { blocking: false, except: agent }),
    ]);
    return "writable";
  }

  /** Fills the new segments (zeros, copies) and logs the faulting disk's new mappings. */
  private async prepareAndMap(disk: Disk, agent: object, zero: number[], copies: Copy[], fresh: Allocation[], records: LogRecord[]): Promise<void> {
    // After a restart the pool hands out blocks above the persisted high-water mark as never
    // used, without zeroing them: the mark must cover a block before anything (a copy) is
    // written there.
    await this.ctx.persist(this.highWaterRecords(disk, fresh));
    const written = new Set<number>();
    for (const [i, segment] of zero.entries()) this.prepareZeroSegment(disk, segment, fresh[i]!, records, written);
    await this.copyOldContents(disk, copies, written);
    // New contents (zeros, copies) are durable before any mapping exposes them, even an
    // uncommitted one: its record may reach the disk with any later commit. A never-used block
    // of a sparse container needs neither writing nor a sync.
    for (const lun of written) this.ctx.pool.sync(lun);
    if (copies.length > 0) this.ctx.failpoint(`${disk.mode}-after-copy`);
    if (disk.mode === "reverse") await this.reverseDelta(disk, copies, records);
    else this.forwardDelta(disk, copies, records);
    if (this.ctx.onlyHolder(disk, agent)) {
      if (records.length > 0) this.uncommittedUpTo.set(disk.id, { position: this.ctx.record(records), runPosition: this.ctx.runPosition() });
    } else {
      await this.ctx.persist(records);
      // The entries may rest on an earlier fault's changes too, which persist commits only along
      // with records of its own.
      if (this.uncommitted(disk)) await this.ctx.commit();
    }
    if (copies.length > 0) this.ctx.failpoint(`${disk.mode}-after-persist`);
  }

  /**
   * Process 400, step 460: the faulting disk moved off `leaving`, and the disks still on them may
   * write them in place as soon as the family lock is free (No-write just goes once nobody else
   * shares a segment; a reverse delta keeps it). Before that, every read of this disk still going
   * to the old segments must have ended, at every agent of the disk: else it returns what another
   * disk wrote. So every agent holding the disk drops them, blocking (moveEntries does that where
   * several hold it; the faulting agent alone is told here): each gets the new entries through a
   * fault, the faulting one with its answer, which names the controller run whose commit a write
   * through them needs.
   */
  private async leaveSharedSegments(disk: Disk, leaving: number[], agent: object): Promise<void> {
    if (leaving.length === 0) return;
    if (this.ctx.onlyHolder(disk, agent)) await this.ctx.dropEntries(agent, disk, leaving);
    else await this.ctx.moveEntries(disk, leaving, { blocking: true, except: agent });
  }

  /** Where the changes to `disk` this run left uncommitted end, while they are not durable. */
  private uncommitted(disk: Disk): { position: number; runPosition: number } | null {
    const upTo = this.uncommittedUpTo.get(disk.id);
    if (upTo === undefined) return null;
    if (!this.ctx.isDurable(upTo.position)) return upTo;
    this.uncommittedUpTo.delete(disk.id);
    return null;
  }

  /** `count` fresh segments for `disk`, or null (and nothing taken) when the pool is full. */
  private allocate(disk: Disk, count: number): Allocation[] | null {
    const { pool } = this.ctx;
    const taken: Allocation[] = [];
    for (let i = 0; i < count; i += 1) {
      const block = pool.allocate(disk.segmentShift);
      if (!block) {
        this.giveBack(disk, taken);
        return null;
      }
      taken.push(block);
    }
    return taken;
  }

  private giveBack(disk: Disk, blocks: Allocation[]): void {
    for (const block of blocks) this.ctx.pool.release(block.lun, block.offset, disk.segmentShift);
  }

  private giveBackUnreferenced(disk: Disk, blocks: Allocation[]): void {
    this.giveBack(disk, blocks.filter((block) => this.ctx.catalog.references(mappedWord(block.lun, block.offset)) === 0));
  }

  /**
   * A Z segment gets storage that reads as zeros (R13). A block that may hold old data is zeroed
   * whole, the part the write covers too: other agents may read the segment before the write
   * lands, and the write may never land (it can fail, or its agent crash).
   */
  private prepareZeroSegment(disk: Disk, segment: number, block: Allocation, records: LogRecord[], written: Set<number>): void {
    if (block.dirty) {
      this.ctx.pool.zero(block.lun, block.offset, 2 ** disk.segmentShift);
      written.add(block.lun);
    }
    records.push(this.entryRecord(disk, segment, mappedWord(block.lun, block.offset)));
  }

  /** Steps 440/540: the old contents go to the new segment. Even a write that covers the whole
   *  segment needs them there: until it lands (and if it never does) the segment must read as
   *  the disk did, for this agent and every other one it is pushed to. */
  private async copyOldContents(disk: Disk, copies: Copy[], written: Set<number>): Promise<void> {
    const bytes = 2 ** disk.segmentShift;
    // Every copy settles before an error is thrown: the caller then gives the new blocks back,
    // and a copy still running would write into a block handed to someone else.
    const results = await Promise.allSettled(copies.map(({ from, to }) => this.ctx.pool.copy(entryContainer(from), entryOffsetBytes(from), to.lun, to.offset, bytes)));
    for (const { to } of copies) written.add(to.lun);
    const failure = results.find((result) => result.status === "rejected");
    if (failure) throw failure.reason;
  }

  /** Process 400, step 450: the faulting disk moves to the new segment, Nw cleared; the other
   *  disks keep the old one. */
  private forwardDelta(disk: Disk, copies: Copy[], records: LogRecord[]): void {
    for (const { segment, to } of copies) records.push(this.entryRecord(disk, segment, mappedWord(to.lun, to.offset)));
  }

  /**
   * Process 500: every other disk sharing the segment moves to the copy (step 550) and its agents
   * switch, their reads of the old segment drained (560); then the faulting disk keeps its segment
   * with Nw cleared (570; the record is left in `records` for the caller).
   */
  private async reverseDelta(disk: Disk, copies: Copy[], records: LogRecord[]): Promise<void> {
    if (copies.length === 0) return;
    const remaps: LogRecord[] = [];
    const moved = new Map<Disk, number[]>();
    for (const { segment, from, to } of copies) {
      const sharers = this.ctx.catalog.sharers(disk, segment, from);
      // The text clears Nw on the moved entries; that is right only when one disk moves, since
      // several disks moved together share the new segment.
      const word = mappedWord(to.lun, to.offset, sharers.length > 1);
      for (const other of sharers) {
        remaps.push(this.entryRecord(other, segment, word));
        moved.set(other, [...(moved.get(other) ?? []), segment]);
      }
      records.push(this.entryRecord(disk, segment, withoutNoWrite(from)));
    }
    await this.ctx.persist(remaps);
    this.ctx.failpoint("reverse-after-remap");
    await Promise.all([...moved].map(([other, segments]) => this.ctx.moveEntries(other, segments, { blocking: true })));
  }

  /** TRIM of whole segments: they become Z for this disk only; shared data stays for the others. */
  private async unmap(disk: Disk, first: number, last: number): Promise<void> {
    await this.ctx.tablesSettled();
    const segments: number[] = [];
    for (let segment = first; segment <= last; segment += 1) if (disk.table.get(segment) !== ZERO_WORD) segments.push(segment);
    if (segments.length === 0) return;
    const freed = await this.ctx.persist(segments.map((segment) => this.entryRecord(disk, segment, ZERO_WORD)));
    // Every agent (the asking one too) stops using the segments and drains its I/O to them before
    // they can be given to anyone else.
    await this.ctx.pushEntries(disk, segments, { blocking: true });
    this.ctx.release(freed);
  }

  /** The high-water marks to persist so that they cover `blocks` (none when they already do). */
  private highWaterRecords(disk: Disk, blocks: Allocation[]): LogRecord[] {
    const marks = new Map<number, number>();
    for (const block of blocks) {
      const highWater = this.ctx.pool.highWaterNeeded(block.lun, block.offset + 2 ** disk.segmentShift);
      if (highWater !== null) marks.set(block.lun, Math.max(highWater, marks.get(block.lun) ?? 0));
    }
    return [...marks].map(([lun, bytes]) => ({ t: "hwm", lun, bytes }));
  }

  private entryRecord(disk: Disk, segment: number, word: number): LogRecord {
    return { t: "map", disk: disk.id, first: segment, runs: [[word, 1]] };
  }
}

/** Each segment the faults cover, once, with "write" if any of them writes it (a Z segment needs
 *  storage for a write, not for write-zeroes). */
function segmentOps(faults: FaultArgs[]): Map<number, FaultArgs["op"]> {
  const ops = new Map<number, FaultArgs["op"]>();
  for (const fault of faults) {
    for (let segment = fault.first; segment <= fault.last; segment += 1) if (ops.get(segment) !== "write") ops.set(segment, fault.op);
  }
  return ops;
}

function withoutNoWrite(word: number): number {
  return withState(word, entryState(word) & ~ENTRY_NO_WRITE);
}
