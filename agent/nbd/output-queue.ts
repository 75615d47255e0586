/**
 * Outgoing bytes of one connection: replies are built in place, coalesced, and written to the
 * socket once per event-loop turn, continuing on `drain` after a partial write.
 *
 * Small replies are reserved in an arena, so replies completed synchronously in one turn lie
 * back to back and go out in one write with no copying and no allocation:
 *
 *   arena: [ queued ... | staged (committed, not yet queued) | open reservation | free ... ]
 *                        ^stagedStart                         ^reservePos        ^arenaPos
 *
 * A reservation whose request goes asynchronous is *detached*: the staged bytes before it are
 * queued, and the region is committed later as its own segment. Large replies get a buffer of
 * their own. Segments go to the socket in commit order, so the parts of one multi-part reply
 * (LIST, INFO) stay in order; separate replies may be interleaved, which NBD allows.
 */
import { assert } from "../../engine/util/assert.ts";

/** Where the bytes go: Bun's Socket.write (returns bytes written, -1 when closed). */
export interface OutputSink {
  write(data: Uint8Array): number;
}

/** Arena size: one allocation covers many replies. */
const ARENA_BYTES = 1024 * 1024;
/** Replies larger than this get a buffer of their own instead of arena space. */
const ARENA_RESERVATION_BYTES_MAX = 256 * 1024;
/** Queued segments smaller than this are copied together into one write. */
const COALESCE_SEGMENT_BYTES_MAX = 64 * 1024;
const COALESCE_BUFFER_BYTES = 256 * 1024;

assert(ARENA_RESERVATION_BYTES_MAX <= ARENA_BYTES, "an arena holds at least one reservation");
assert(COALESCE_SEGMENT_BYTES_MAX <= COALESCE_BUFFER_BYTES, "a small segment fits the coalescing buffer");

/** A detached reservation, committed later with commitDetached() or given up with dropDetached(). */
export interface DetachedRegion {
  readonly buffer: Uint8Array;
  readonly start: number;
  readonly length: number;
  /** Arena generation, or -1 for a buffer of its own. */
  readonly generation: number;
}

export class OutputQueue {
  private arena = new Uint8Array(ARENA_BYTES);
  private generation = 0;
  private arenaPos = 0;
  private stagedStart = 0;
  /** Detached regions in the current arena; the arena is only rewound when none is left. */
  private detachedInArena = 0;

  private readonly segments: Uint8Array[] = [];
  private segmentsHead = 0;
  private segmentBytes = 0;
  private coalesceBuffer: Uint8Array | null = null;

  /** The open reservation: the reply is written into reserved[reservedStart, reservedStart + reservedLength). */
  reserved: Uint8Array = this.arena;
  reservedStart = 0;
  reservedLength = 0;
  private reservationOpen = false;
  private reservationInArena = false;

  private flushScheduled = false;
  private blocked = false;
  private dead = false;
  private readonly flushBound = () => this.flush();

  constructor(
    private readonly sink: OutputSink,
    /** Called after a flush once everything has been written (for DISC, ABORT, shutdown, resuming input). */
    private readonly onWritten: () => void,
  ) {}

  /** Bytes committed but not yet accepted by the socket. */
  get pendingBytes(): number {
    return this.segmentBytes + (this.arenaPos - this.stagedStart) - (this.reservationOpen ? this.reservedLength : 0);
  }

  get isEmpty(): boolean {
    return this.pendingBytes === 0;
  }

  /** Opens a reservation of `length` bytes; the caller fills it and then commits, cancels or detaches it. */
  reserve(length: number): void {
    assert(!this.reservationOpen, "one reservation at a time");
    assert(length > 0, "reservations are not empty");
    if (length > ARENA_RESERVATION_BYTES_MAX) {
      // Not zeroed: the caller writes every byte it commits (a 1 MiB memset per read otherwise).
      this.reserved = Buffer.allocUnsafe(length);
      this.reservedStart = 0;
      this.reservedLength = length;
      this.reservationInArena = false;
      this.reservationOpen = true;
      return;
    }
    if (this.arenaPos + length > this.arena.length) this.replaceArena();
    this.reservationOpen = true;
    this.reservedLength = length;
    this.reserved = this.arena;
    this.reservedStart = this.arenaPos;
    this.arenaPos += length;
    this.reservationInArena = true;
  }

  /** Commits the first `length` bytes of the open reservation (default: all of it). */
  commit(length: number = this.reservedLength): void {
    assert(this.reservationOpen, "commit needs an open reservation");
    assert(length > 0 && length <= this.reservedLength, "commit within the reservation");
    this.reservationOpen = false;
    if (this.reservationInArena) {
      this.arenaPos = this.reservedStart + length;
    } else {
      this.stageToSegments();
      this.pushSegment(this.reserved.subarray(0, length));
    }
    this.scheduleFlush();
  }

  /** Gives the open reservation back. */
  cancel(): void {
    assert(this.reservationOpen, "cancel needs an open reservation");
    this.reservationOpen = false;
    if (this.reservationInArena) this.arenaPos = this.reservedStart;
  }

  /** Keeps the open reservation for a request that completes later. */
  detach(): DetachedRegion {
    assert(this.reservationOpen, "detach needs an open reservation");
    this.reservationOpen = false;
    const region: DetachedRegion = {
      buffer: this.reserved,
      start: this.reservedStart,
      length: this.reservedLength,
      generation: this.reservationInArena ? this.generation : -1,
    };
    if (this.reservationInArena) {
      // Queue what was staged before the region, and continue staging after it.
      if (this.reservedStart > this.stagedStart) {
        this.pushSegment(this.arena.subarray(this.stagedStart, this.reservedStart));
      }
      this.stagedStart = this.arenaPos;
      this.detachedInArena++;
    }
    return region;
  }

  /** Commits the first `length` bytes of a detached region. */
  commitDetached(region: DetachedRegion, length: number = region.length): void {
    assert(length > 0 && length <= region.length, "commit within the region");
    this.releaseDetached(region);
    this.stageToSegments();
    this.pushSegment(region.buffer.subarray(region.start, region.start + length));
    this.scheduleFlush();
  }

  /** Gives a detached region up (its request failed or the connection died). */
  dropDetached(region: DetachedRegion): void {
    this.releaseDetached(region);
  }

  /** Queues a buffer built elsewhere (ownership passes to the queue). */
  commitBuffer(buffer: Uint8Array): void {
    assert(!this.reservationOpen, "no buffer in the middle of a reservation");
    if (buffer.length === 0) return;
    this.stageToSegments();
    this.pushSegment(buffer);
    this.scheduleFlush();
  }

  /** Called by the socket's drain handler. */
  onDrain(): void {
    this.blocked = false;
    this.flush();
  }

  /** The socket is gone: drop everything, write nothing more. */
  kill(): void {
    this.dead = true;
    this.segments.length = 0;
    this.segmentsHead = 0;
    this.segmentBytes = 0;
    this.stagedStart = this.arenaPos;
  }

  /** Writes out what is committed now (normally runs as a microtask after commits). */
  flush(): void {
    this.flushScheduled = false;
    if (this.dead || this.blocked) return;
    assert(!this.reservationOpen, "replies are committed before the turn ends");
    this.stageToSegments();
    while (this.segmentsHead < this.segments.length) {
      const first = this.segments[this.segmentsHead]!;
      let data = first;
      let taken = 1;
      if (first.length < COALESCE_SEGMENT_BYTES_MAX && this.segmentsHead + 1 < this.segments.length) {
        // Several small segments: one copy is cheaper than one syscall each.
        this.coalesceBuffer ??= new Uint8Array(COALESCE_BUFFER_BYTES);
        let used = 0;
        taken = 0;
        for (let i = this.segmentsHead; i < this.segments.length; i++) {
          const s = this.segments[i]!;
          if (s.length >= COALESCE_SEGMENT_BYTES_MAX || used + s.length > COALESCE_BUFFER_BYTES) break;
          this.coalesceBuffer.set(s, used);
          used += s.length;
          taken++;
        }
        if (taken > 1) data = this.coalesceBuffer.subarray(0, used);
        else taken = 1;
      }
      const written = this.sink.write(data);
      if (written < 0) {
        this.kill();
        return;
      }
      for (let i = 0; i < taken; i++) this.segments[this.segmentsHead + i] = EMPTY;
      this.segmentsHead += taken;
      this.segmentBytes -= data.length;
      if (written < data.length) {
        // Keep the unwritten tail (copied if it lives in the reusable coalescing buffer) at the head.
        const rest = taken > 1 ? data.slice(written) : data.subarray(written);
        this.segmentsHead--;
        this.segments[this.segmentsHead] = rest;
        this.segmentBytes += rest.length;
        this.blocked = true;
        return;
      }
    }
    this.segments.length = 0;
    this.segmentsHead = 0;
    assert(this.segmentBytes === 0, "segment accounting balances");
    if (this.detachedInArena === 0) {
      // Everything written and no region outstanding: reuse the arena from the start.
      this.arenaPos = 0;
      this.stagedStart = 0;
    }
    this.onWritten();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.dead) return;
    this.flushScheduled = true;
    queueMicrotask(this.flushBound);
  }

  private stageToSegments(): void {
    const end = this.reservationOpen && this.reservationInArena ? this.reservedStart : this.arenaPos;
    if (end > this.stagedStart) {
      this.pushSegment(this.arena.subarray(this.stagedStart, end));
      this.stagedStart = end;
    }
  }

  private pushSegment(segment: Uint8Array): void {
    if (this.dead) return;
    this.segments.push(segment);
    this.segmentBytes += segment.length;
  }

  private replaceArena(): void {
    this.stageToSegments();
    this.arena = new Uint8Array(ARENA_BYTES);
    this.generation++;
    this.arenaPos = 0;
    this.stagedStart = 0;
    this.detachedInArena = 0;
  }

  private releaseDetached(region: DetachedRegion): void {
    if (region.generation === this.generation) {
      assert(this.detachedInArena > 0, "detached regions balance");
      this.detachedInArena--;
    }
  }
}

const EMPTY = new Uint8Array(0);
