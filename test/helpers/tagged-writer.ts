// A writer that keeps `depth` writes in flight on one NBD connection, each tagged with a sequence
// number stored in its first 4 bytes, and remembers when each was issued and acknowledged. Tests
// check snapshots against that record (which writes a point-in-time image may contain).
import { NBD, RawNbdClient } from "./raw-nbd-client.ts";

export const TAGGED_BLOCK_BYTES = 4096;

export class TaggedWriter {
  /** issued[seq] and acked[seq], in performance.now() milliseconds; block of seq = seq % blocks. */
  readonly issued: number[] = [0];
  readonly acked: number[] = [0];
  private stopping = false;
  private ackedTotal = 0;
  private readonly ackWaiters: { count: number; resolve(): void }[] = [];
  private running: Promise<void> | null = null;

  private constructor(
    private readonly client: RawNbdClient,
    private readonly firstBlock: number,
    readonly blocks: number,
    private readonly depth: number,
  ) {}

  static async open(unixPath: string, exportName: string, firstBlock: number, blocks: number, depth = 32): Promise<TaggedWriter> {
    const client = await RawNbdClient.connect({ unixPath });
    await client.negotiate(exportName);
    return new TaggedWriter(client, firstBlock, blocks, depth);
  }

  /** Block (relative to the writer's region) that write `seq` goes to; seq starts at 1. */
  blockOf(seq: number): number {
    return seq % this.blocks;
  }

  get lastIssued(): number {
    return this.issued.length - 1;
  }

  /** Acknowledged writes so far. */
  get ackedCount(): number {
    return this.ackedTotal;
  }

  /** Resolves once `count` writes in all have been acknowledged. */
  whenAcked(count: number): Promise<void> {
    if (this.ackedTotal >= count) return Promise.resolve();
    return new Promise((resolve) => this.ackWaiters.push({ count, resolve }));
  }

  start(): void {
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
    await this.client.disconnect().catch(() => undefined);
    this.client.close();
  }

  private async loop(): Promise<void> {
    let inFlight = 0;
    const issue = async () => {
      const seq = this.issued.length;
      const data = new Uint8Array(TAGGED_BLOCK_BYTES);
      new DataView(data.buffer).setUint32(0, seq);
      data.fill(seq % 251, 4);
      this.issued.push(performance.now());
      this.acked.push(0);
      inFlight += 1;
      await this.client.sendRequest({ type: NBD.CMD_WRITE, cookie: BigInt(seq), offset: (this.firstBlock + this.blockOf(seq)) * TAGGED_BLOCK_BYTES, data });
    };
    while (inFlight < this.depth) await issue();
    while (inFlight > 0) {
      const reply = await this.client.readReply(30_000);
      if (reply.kind !== "simple" || reply.error !== 0) throw new Error(`tagged write failed: ${JSON.stringify(reply)}`);
      this.acked[Number(reply.cookie)] = performance.now();
      this.ackedTotal += 1;
      for (const waiter of this.ackWaiters.filter((w) => w.count <= this.ackedTotal)) {
        this.ackWaiters.splice(this.ackWaiters.indexOf(waiter), 1);
        waiter.resolve();
      }
      inFlight -= 1;
      if (!this.stopping) await issue();
    }
  }
}
