// What hosts wrote, and so what a disk or a snapshot may hold. Every write is one 4 KiB block
// tagged with its sequence number (the TaggedWriter format: the first 4 bytes big-endian, every
// other byte seq % 251), and its writer records when it was issued and acknowledged. The checks
// read an image back and name each block that breaks the rules, so a failure says which block
// holds which write.
//
// A FlushingWriter also sends FLUSHes and survives the death of its agent (its connection just
// ends), so crash tests can check what must have survived: every write acknowledged before the
// last acknowledged FLUSH was sent.
import { NBD, RawNbdClient } from "./raw-nbd-client.ts";
import { TAGGED_BLOCK_BYTES } from "./tagged-writer.ts";

/** A writer's record (TaggedWriter and FlushingWriter both are one). Times are performance.now(). */
export interface WriteHistory {
  readonly blocks: number;
  /** issued[seq]: when write seq was sent; seq starts at 1. */
  readonly issued: number[];
  /** acked[seq]: when it was acknowledged, 0 if it never was. */
  readonly acked: number[];
  readonly lastIssued: number;
  /** The block (relative to the writer's region) that write seq goes to. */
  blockOf(seq: number): number;
}

/** What an image of a writer's region may hold, block by block. */
export interface ImageRule {
  /** Every write acknowledged before this time must be there, or a later write to its block. */
  ackedBefore: number;
  /** No write issued at or after this time may be there. */
  issuedBefore: number;
  /** Writes up to this seq are accounted for by `tags` (what the region held when they ended). */
  since?: number;
  tags?: Uint32Array;
}

const PROBLEMS_SHOWN_MAX = 10;

export function taggedBlock(seq: number): Uint8Array {
  const data = new Uint8Array(TAGGED_BLOCK_BYTES);
  new DataView(data.buffer).setUint32(0, seq);
  data.fill(seq % 251, 4);
  return data;
}

/** The tag of each block of an image, or why a block is not one whole tagged write. */
export function readTags(image: Uint8Array, blocks: number): { tags: Uint32Array; torn: string[] } {
  if (image.length !== blocks * TAGGED_BLOCK_BYTES) throw new RangeError(`image of ${image.length} bytes is not ${blocks} blocks`);
  const tags = new Uint32Array(blocks);
  const torn: string[] = [];
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  for (let block = 0; block < blocks; block += 1) {
    const at = block * TAGGED_BLOCK_BYTES;
    const tag = view.getUint32(at);
    const fill = tag === 0 ? 0 : tag % 251;
    const body = image.subarray(at + 4, at + TAGGED_BLOCK_BYTES);
    const wrong = body.findIndex((byte) => byte !== fill);
    if (wrong !== -1) torn.push(`block ${block}: tag ${tag} but byte ${wrong + 4} is ${body[wrong]}, not ${fill}`);
    tags[block] = tag;
  }
  return { tags, torn };
}

/**
 * Names every block of `image` (the writer's region) that breaks `rule`. The writes to a block
 * acknowledged before `ackedBefore` must show: the block holds one of them, or another write
 * issued to it before `issuedBefore` that was not yet acknowledged when the newest of them was
 * issued (NBD does not order writes in flight together, and one held by a fault can land after a
 * later one). With no such acknowledged write, it may also hold what it held before (`tags`, or
 * zeros). Returns at most a few problems, then a count.
 */
export function imageProblems(image: Uint8Array, history: WriteHistory, rule: ImageRule): string[] {
  const since = rule.since ?? 0;
  const { tags, torn } = readTags(image, history.blocks);
  // Per block, the last issued of the writes acknowledged in time: what must show.
  const newest = new Uint32Array(history.blocks);
  for (let seq = since + 1; seq <= history.lastIssued; seq += 1) {
    const acked = history.acked[seq]!;
    const block = history.blockOf(seq);
    if (acked > 0 && acked < rule.ackedBefore && history.issued[seq]! > (history.issued[newest[block]!] ?? 0)) newest[block] = seq;
  }
  const problems = [...torn];
  const describe = (seq: number) =>
    seq > history.lastIssued
      ? `write ${seq}, never issued`
      : `write ${seq} (to block ${history.blockOf(seq)}, issued ${history.issued[seq]!.toFixed(3)}, acked ${history.acked[seq]!.toFixed(3)})`;
  for (let block = 0; block < history.blocks; block += 1) {
    const tag = tags[block]!;
    const written = tag > since && tag <= history.lastIssued && history.blockOf(tag) === block && history.issued[tag]! < rule.issuedBefore;
    const must = newest[block]!;
    // A write acknowledged before `must` was issued was overwritten by it for good (0: never acknowledged).
    const current = (seq: number) => history.acked[seq] === 0 || history.acked[seq]! >= history.issued[must]!;
    if (must > 0 ? written && current(tag) : written || tag === (rule.tags?.[block] ?? 0)) continue;
    problems.push(
      `block ${block}: holds ${tag === 0 ? "zeros" : describe(tag)}; ` +
        (must > 0
          ? `${describe(must)} was acknowledged before ${rule.ackedBefore.toFixed(3)}`
          : `no write to it was acknowledged before ${rule.ackedBefore.toFixed(3)}, and it held ${rule.tags?.[block] ?? 0}`) +
        (rule.issuedBefore < Infinity ? `; only writes issued before ${rule.issuedBefore.toFixed(3)} may show` : ""),
    );
  }
  return shortened(problems);
}

/** Where two images of tagged blocks first differ, with the tags there, or null when equal. */
export function firstDifference(actual: Uint8Array, expected: Uint8Array): string | null {
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  if (at === -1) return null;
  const block = Math.floor(at / TAGGED_BLOCK_BYTES);
  const tag = (image: Uint8Array) => new DataView(image.buffer, image.byteOffset + block * TAGGED_BLOCK_BYTES, 4).getUint32(0);
  return `differs from byte ${at} (block ${block}: tag ${tag(actual)}, recorded ${tag(expected)})`;
}

function shortened(problems: string[]): string[] {
  if (problems.length <= PROBLEMS_SHOWN_MAX) return problems;
  return [...problems.slice(0, PROBLEMS_SHOWN_MAX), `... and ${problems.length - PROBLEMS_SHOWN_MAX} more`];
}

/** How a writer's connection ended: drained and flushed on request, or cut off (its agent died). */
export type SessionEnd = { kind: "drained" } | { kind: "cut"; reason: string };

const FLUSH_COOKIE_BASE = 2n ** 48n;
const REPLY_WAIT_MS = 30_000;
const WRITES_IN_FLIGHT = 8;
const WRITES_PER_FLUSH = 32;
/** Consecutive writes go this many blocks apart (odd, so a cycle of `blocks` writes covers each block once). */
const BLOCK_STRIDE = 97;

export interface FlushingWriterOptions {
  /** Requests kept in flight (default 8). */
  depth?: number;
  /** How many writes go before the next FLUSH (asked again after each FLUSH; default 32). */
  writesPerFlush?: () => number;
  /** The block write `seq` goes to (default: consecutive writes `BLOCK_STRIDE` blocks apart). */
  pickBlock?: (seq: number) => number;
}

/**
 * Keeps a few tagged writes in flight over a disk's first `blocks` blocks, with a FLUSH after every
 * few writes, on one connection at a time; its record spans every connection it has had. A write
 * the server answers with an error is recorded in `failures` and never counts as acknowledged.
 */
export class FlushingWriter implements WriteHistory {
  readonly issued: number[] = [0];
  readonly acked: number[] = [0];
  /** When the newest acknowledged FLUSH was sent (0: none yet). */
  durableBefore = 0;
  private readonly failed: string[] = [];
  private readonly flushIssued: number[] = [];
  private ackedTotal = 0;
  private waiters: { count: number; resolve(): void; reject(error: Error): void }[] = [];
  private session: Promise<SessionEnd> | null = null;
  /** The connection has ended (cut or drained); stop() has not collected it yet. */
  private ended = false;
  private stopping = false;

  private depth: number;
  private readonly writesPerFlush: () => number;
  private readonly pickBlock: (seq: number) => number;
  /** blockBySeq[seq]: the block write seq went to. */
  private readonly blockBySeq: number[] = [0];

  constructor(
    readonly blocks: number,
    options: FlushingWriterOptions = {},
  ) {
    this.depth = options.depth ?? WRITES_IN_FLIGHT;
    if (blocks < 2 * this.depth || (blocks & (blocks - 1)) !== 0) {
      throw new RangeError(`a region of ${blocks} blocks must be a power of two of at least ${2 * this.depth}`);
    }
    this.writesPerFlush = options.writesPerFlush ?? (() => WRITES_PER_FLUSH);
    this.pickBlock = options.pickBlock ?? ((seq) => (seq * BLOCK_STRIDE) % this.blocks);
  }

  blockOf(seq: number): number {
    return this.blockBySeq[seq]!;
  }

  get lastIssued(): number {
    return this.issued.length - 1;
  }

  /** Requests the server answered with an error (a few, then a count). */
  get failures(): string[] {
    return shortened(this.failed);
  }

  /** FLUSHes sent so far, over every connection. */
  get flushesIssued(): number {
    return this.flushIssued.length;
  }

  get ackedCount(): number {
    return this.ackedTotal;
  }

  /** Resolves once `count` writes in all have been acknowledged; fails if the connection ends first. */
  whenAcked(count: number, timeoutMs = REPLY_WAIT_MS): Promise<void> {
    if (this.ackedTotal >= count) return Promise.resolve();
    if (!this.session || this.ended) return Promise.reject(new Error("writer: not writing"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`writer: ${count} writes not acknowledged within ${timeoutMs} ms (${this.ackedTotal} so far)`)), timeoutMs);
      this.waiters.push({
        count,
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (error) => (clearTimeout(timer), reject(error)),
      });
    });
  }

  /** Connects to the export and starts writing (with `depth` requests in flight, if given). */
  async start(unixPath: string, exportName: string, depth = this.depth): Promise<void> {
    if (this.session) throw new Error("writer: already writing");
    if (depth < 1 || 2 * depth > this.blocks) throw new RangeError(`writer: depth ${depth} for a region of ${this.blocks} blocks`);
    this.depth = depth;
    const client = await RawNbdClient.connect({ unixPath });
    await client.negotiate(exportName);
    this.stopping = false;
    this.ended = false;
    this.session = this.run(client).finally(() => (this.ended = true));
  }

  /** Stops issuing; a live connection drains, sends a last FLUSH and disconnects. */
  async stop(): Promise<SessionEnd> {
    if (!this.session) throw new Error("writer: not writing");
    this.stopping = true;
    const end = await this.session;
    this.session = null;
    return end;
  }

  private async run(client: RawNbdClient): Promise<SessionEnd> {
    let inFlight = 0;
    let sinceFlush = 0;
    let flushAfter = this.writesPerFlush();
    let lastFlushSent = false;
    const send = async (request: Parameters<RawNbdClient["sendRequest"]>[0]) => {
      inFlight += 1;
      await client.sendRequest(request);
    };
    const issue = async () => {
      if (sinceFlush >= flushAfter) {
        sinceFlush = 0;
        flushAfter = this.writesPerFlush();
        this.flushIssued.push(performance.now());
        await send({ type: NBD.CMD_FLUSH, cookie: FLUSH_COOKIE_BASE + BigInt(this.flushIssued.length - 1) });
        return;
      }
      const seq = this.issued.length;
      const block = this.pickBlock(seq);
      if (!(Number.isInteger(block) && block >= 0 && block < this.blocks)) throw new RangeError(`writer: block ${block} is outside the region`);
      this.blockBySeq.push(block);
      this.issued.push(performance.now());
      this.acked.push(0);
      sinceFlush += 1;
      await send({ type: NBD.CMD_WRITE, cookie: BigInt(seq), offset: this.blockOf(seq) * TAGGED_BLOCK_BYTES, data: taggedBlock(seq) });
    };
    try {
      while (inFlight < this.depth) await issue();
      while (inFlight > 0) {
        const reply = await client.readReply(REPLY_WAIT_MS);
        inFlight -= 1;
        if (reply.kind !== "simple") throw new Error(`writer: unexpected structured reply ${reply.type}`);
        this.onReply(reply.cookie, reply.error);
        if (!this.stopping) await issue();
        else if (inFlight === 0 && !lastFlushSent) {
          lastFlushSent = true;
          sinceFlush = flushAfter;
          await issue();
        }
      }
      await client.disconnect().catch(() => undefined);
      client.close();
      this.endWaiters(new Error("writer: stopped"));
      return { kind: "drained" };
    } catch (error) {
      client.close();
      this.endWaiters(error as Error);
      return { kind: "cut", reason: (error as Error).message };
    }
  }

  private onReply(cookie: bigint, error: number): void {
    const now = performance.now();
    if (cookie >= FLUSH_COOKIE_BASE) {
      const index = Number(cookie - FLUSH_COOKIE_BASE);
      if (error !== 0) this.failed.push(`FLUSH ${index} failed with errno ${error}`);
      else this.durableBefore = Math.max(this.durableBefore, this.flushIssued[index]!);
      return;
    }
    const seq = Number(cookie);
    if (error !== 0) {
      this.failed.push(`write ${seq} failed with errno ${error}`);
      return;
    }
    this.acked[seq] = now;
    this.ackedTotal += 1;
    for (const waiter of this.waiters.filter((w) => w.count <= this.ackedTotal)) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve();
    }
  }

  private endWaiters(error: Error): void {
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }
}
