// A minimal NBD block client for tests that do many small I/Os: one connection, simple replies,
// one request at a time (ordering is then obvious). Errors come back as errno numbers.
import { NBD, RawNbdClient } from "./raw-nbd-client.ts";

export class BlockClient {
  private cookie = 1n;

  private constructor(
    private readonly client: RawNbdClient,
    readonly size: number,
  ) {}

  static async open(unixPath: string, exportName: string): Promise<BlockClient> {
    const client = await RawNbdClient.connect({ unixPath });
    try {
      const { size } = await client.negotiate(exportName);
      return new BlockClient(client, Number(size));
    } catch (error) {
      client.close();
      throw error;
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const reply = await this.request({ type: NBD.CMD_READ, offset, length }, length);
    if (reply.error !== 0) throw new Error(`read ${offset}+${length} failed: errno ${reply.error}`);
    return reply.data;
  }

  /** Writes; returns 0 or the errno the server answered. */
  async write(offset: number, data: Uint8Array, fua = false): Promise<number> {
    return (await this.request({ type: NBD.CMD_WRITE, offset, data, flags: fua ? NBD.CMD_FLAG_FUA : 0 })).error;
  }

  async trim(offset: number, length: number): Promise<number> {
    return (await this.request({ type: NBD.CMD_TRIM, offset, length })).error;
  }

  async zero(offset: number, length: number): Promise<number> {
    return (await this.request({ type: NBD.CMD_WRITE_ZEROES, offset, length })).error;
  }

  async flush(): Promise<number> {
    return (await this.request({ type: NBD.CMD_FLUSH })).error;
  }

  async close(): Promise<void> {
    await this.client.disconnect().catch(() => undefined);
    this.client.close();
  }

  private async request(request: Parameters<RawNbdClient["sendRequest"]>[0], readLength = 0) {
    const cookie = this.cookie++;
    await this.client.sendRequest({ ...request, cookie });
    const reply = await this.client.readSimpleReply(readLength);
    if (reply.cookie !== cookie) throw new Error(`reply for cookie ${reply.cookie}, expected ${cookie}`);
    return reply;
  }
}

/** `length` bytes of `byte`: the data of a test write. */
export function filled(byte: number, length: number): Uint8Array {
  return new Uint8Array(length).fill(byte);
}
