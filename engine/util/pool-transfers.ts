// Positioned reads and writes on the runtime's I/O thread pool, and the lifetime of the
// descriptors they use: a descriptor is closed only once no pool transfer uses it any more, or a
// transfer still queued could land on a file opened later under the same number.
import { closeSync, read, write } from "node:fs";
import { assert } from "./assert.ts";

export class PoolTransfers {
  private readonly inFlight = new Map<number, number>();
  private readonly closeWhenIdle = new Set<number>();

  constructor(private readonly closeFd: (fd: number) => void = closeSync) {}

  /** Runs `work`, whose pool transfers (`read`, `write`) use `fds`: none of them is closed before it ends. */
  async using<T>(fds: number[], work: () => Promise<T>): Promise<T> {
    for (const fd of fds) {
      assert(!this.closeWhenIdle.has(fd), `descriptor ${fd} is being closed`);
      this.inFlight.set(fd, (this.inFlight.get(fd) ?? 0) + 1);
    }
    try {
      return await work();
    } finally {
      for (const fd of fds) this.ended(fd);
    }
  }

  /** Closes `fd` now, or when the last work using it ends. */
  close(fd: number): void {
    if (this.inFlight.has(fd)) this.closeWhenIdle.add(fd);
    else this.closeFd(fd);
  }

  private ended(fd: number): void {
    const left = this.inFlight.get(fd)! - 1;
    assert(left >= 0, "a pool transfer ended twice");
    if (left > 0) {
      this.inFlight.set(fd, left);
      return;
    }
    this.inFlight.delete(fd);
    if (this.closeWhenIdle.delete(fd)) this.closeFd(fd);
  }
}

/** One pread on the I/O pool: bytes read (0 at end of file). Inside `PoolTransfers.using`. */
export function readOnPool(fd: number, into: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return transferOnPool(read, fd, into, at, length, position);
}

/** One pwrite on the I/O pool: bytes written. Inside `PoolTransfers.using`. */
export function writeOnPool(fd: number, data: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return transferOnPool(write, fd, data, at, length, position);
}

function transferOnPool(kind: typeof read | typeof write, fd: number, buffer: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => (kind as typeof read)(fd, buffer, at, length, position, (error, bytes) => (error ? reject(error) : resolve(bytes))));
}
