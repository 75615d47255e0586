// The storage calls of a simulated agent's thread (agent/storage.ts FileCalls) over the simulated
// containers: bytes carry one tag per block (storage.ts blocksOf). Pool transfers finish after a
// simulated delay, mostly short, now and then long: a worker between its lookup and its storage I/O
// can be descheduled as long, which is the window the blocking flag and the in-flight drain exist
// for.
import { assert } from "../../engine/util/assert.ts";
import type { FileCalls } from "../../agent/storage.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import { putTags, tagsOf, type HostStorage } from "./storage.ts";

export class SimFileCalls implements FileCalls {
  private readonly luns = new Map<number, number>();
  private nextFd = 3;

  constructor(
    private readonly storage: HostStorage,
    /** The container behind each path the controller names. */
    private readonly lunAt: (path: string) => number | undefined,
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly life: Life,
    /** The "ack-unwritten" canary: writes are accepted and dropped. */
    private readonly dropWrites: boolean,
  ) {}

  open(path: string): number {
    const lun = this.lunAt(path);
    if (lun === undefined) throw new Error(`ENOENT: no container at ${path}`);
    const fd = this.nextFd++;
    this.luns.set(fd, lun);
    return fd;
  }

  read(fd: number, into: Uint8Array, at: number, length: number, position: number): number {
    putTags(into, at, this.storage.read(this.lun(fd), position, length));
    return length;
  }

  write(fd: number, data: Uint8Array, at: number, length: number, position: number): number {
    const lun = this.lun(fd);
    if (!this.dropWrites) this.storage.write(lun, position, tagsOf(data, at, length));
    return length;
  }

  async readOnPool(fd: number, into: Uint8Array, at: number, length: number, position: number): Promise<number> {
    await this.poolDelay();
    return this.read(fd, into, at, length, position);
  }

  async writeOnPool(fd: number, data: Uint8Array, at: number, length: number, position: number): Promise<number> {
    await this.poolDelay();
    return this.write(fd, data, at, length, position);
  }

  fdatasync(fd: number): void {
    this.storage.sync(this.lun(fd));
  }

  close(fd: number): void {
    assert(this.luns.delete(fd), `descriptor ${fd} closed twice`);
  }

  private lun(fd: number): number {
    const lun = this.luns.get(fd);
    assert(lun !== undefined, `descriptor ${fd} is not open`);
    return lun;
  }

  /** How long a transfer waits in the I/O pool: mostly short, now and then long. */
  private poolDelay(): Promise<void> {
    const { random } = this;
    return this.scheduler.sleep(random.chance(0.05) ? random.between(2, 30) : random.between(0, 0.5), this.life);
  }
}

