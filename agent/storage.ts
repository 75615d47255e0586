// The agent's direct path to storage containers: each thread opens the container files itself and
// does positioned reads and writes on them (pread/pwrite), with no controller in the way. Small
// transfers are done on the calling thread (lowest latency); large ones go to the runtime's I/O
// thread pool, so the NBD thread keeps receiving and sending while the copies run elsewhere.
//
// The lease (R8) is checked right before every read and write is made or handed to the pool: a
// worker preempted or stopped between its lookup and its storage I/O for longer than the lease may
// hold stale mappings by then. Bun's pool threads run no JavaScript (fs.read and fs.write with a
// callback queue a native task whose pread/pwrite runs in native code), so for pool transfers the
// check is the last thing before the task is queued; what remains is the task's wait in the pool's
// queue, which the controller's fencing grace after the lease covers.
//
// The raw calls (open, pread, pwrite, on the pool or not, fdatasync, close) are a parameter:
// node:fs in production, a simulator's storage in the simulator.
import { closeSync, existsSync, fdatasyncSync, openSync, readSync, writeSync } from "node:fs";
import { PoolTransfers, readOnPool, writeOnPool } from "../engine/util/pool-transfers.ts";
import { NbdError } from "./nbd/backend.ts";
import type { ContainerEntry } from "./thread-messages.ts";

/** Whether this agent may still do I/O (agent/lease.ts). */
export interface LeaseCheck {
  valid(): boolean;
}

/** The calls on container files, on descriptors as node:fs numbers them. Reads return the bytes
 *  read (0 at the end of the file), writes the bytes written; failures throw. */
export interface FileCalls {
  open(path: string): number;
  read(fd: number, into: Uint8Array, at: number, length: number, position: number): number;
  write(fd: number, data: Uint8Array, at: number, length: number, position: number): number;
  /** `read` on the runtime's I/O thread pool. */
  readOnPool(fd: number, into: Uint8Array, at: number, length: number, position: number): Promise<number>;
  /** `write` on the runtime's I/O thread pool. */
  writeOnPool(fd: number, data: Uint8Array, at: number, length: number, position: number): Promise<number>;
  fdatasync(fd: number): void;
  close(fd: number): void;
}

export const nodeFiles: FileCalls = {
  open: (path) => openSync(path, "r+"),
  read: readSync,
  write: writeSync,
  readOnPool,
  writeOnPool,
  fdatasync: fdatasyncSync,
  close: closeSync,
};

const ZERO_CHUNK_BYTES = 1024 * 1024;

// Test-only: while the file named by TABLEDISK_STALL_WRITES_WHILE (or _READS_WHILE) exists,
// storage writes (reads) stall in flight, inside the I/O's window, so tests can show what waits for
// in-flight I/O.
const stallFlags = { write: process.env.TABLEDISK_STALL_WRITES_WHILE ?? "", read: process.env.TABLEDISK_STALL_READS_WHILE ?? "" };
const STALL_POLL_MS = 5;
const stallClock = new Int32Array(new SharedArrayBuffer(4));

function stallWhileFlagged(kind: "read" | "write"): void {
  const flag = stallFlags[kind];
  if (flag === "" || !existsSync(flag)) return;
  console.error(`storage ${kind} stalled (test flag)`);
  while (existsSync(flag)) Atomics.wait(stallClock, 0, 0, STALL_POLL_MS);
}

export class ContainerFiles {
  private readonly paths = new Map<number, string>();
  private readonly epochs = new Map<number, number>();
  private readonly fds = new Map<number, number>();
  private readonly pool: PoolTransfers;
  private zeroChunk: Uint8Array | null = null;

  /** `onError` hears of every failed storage operation (the caller gets an EIO NbdError). */
  constructor(
    private readonly onError: (container: number, message: string) => void,
    private readonly lease: LeaseCheck,
    private readonly calls: FileCalls = nodeFiles,
  ) {
    this.pool = new PoolTransfers((fd) => calls.close(fd));
  }

  update(containers: ContainerEntry[]): void {
    for (const { id, path, epoch } of containers) {
      if (this.paths.get(id) === path && this.epochs.get(id) === epoch) continue;
      this.paths.set(id, path);
      this.epochs.set(id, epoch);
      const fd = this.fds.get(id);
      if (fd !== undefined) this.pool.close(fd);
      this.fds.delete(id);
    }
  }

  read(container: number, into: Uint8Array, at: number, length: number, position: number): void {
    stallWhileFlagged("read");
    const fd = this.fd(container);
    let done = 0;
    while (done < length) {
      this.checkLease();
      const got = this.io(container, () => this.calls.read(fd, into, at + done, length - done, position + done));
      if (got === 0) {
        // Past the end of a container file reads as zeros (it may be sparse and shorter).
        into.fill(0, at + done, at + length);
        return;
      }
      done += got;
    }
  }

  write(container: number, data: Uint8Array, at: number, length: number, position: number): void {
    stallWhileFlagged("write");
    const fd = this.fd(container);
    let done = 0;
    while (done < length) {
      this.checkLease();
      done += this.io(container, () => this.calls.write(fd, data, at + done, length - done, position + done));
    }
  }

  /** `read` on the I/O thread pool. */
  async readOnPool(container: number, into: Uint8Array, at: number, length: number, position: number): Promise<void> {
    stallWhileFlagged("read");
    const fd = this.fd(container);
    await this.pool.using([fd], async () => {
      let done = 0;
      while (done < length) {
        this.checkLease();
        const got = await this.ioOnPool(container, this.calls.readOnPool(fd, into, at + done, length - done, position + done));
        if (got === 0) {
          into.fill(0, at + done, at + length);
          return;
        }
        done += got;
      }
    });
  }

  /** `write` on the I/O thread pool. */
  async writeOnPool(container: number, data: Uint8Array, at: number, length: number, position: number): Promise<void> {
    stallWhileFlagged("write");
    const fd = this.fd(container);
    await this.pool.using([fd], async () => {
      let done = 0;
      while (done < length) {
        this.checkLease();
        done += await this.ioOnPool(container, this.calls.writeOnPool(fd, data, at + done, length - done, position + done));
      }
    });
  }

  writeZeroes(container: number, position: number, length: number): void {
    this.zeroChunk ??= new Uint8Array(ZERO_CHUNK_BYTES);
    for (let done = 0; done < length; ) {
      const piece = Math.min(ZERO_CHUNK_BYTES, length - done);
      this.write(container, this.zeroChunk, 0, piece, position + done);
      done += piece;
    }
  }

  sync(container: number): void {
    const fd = this.fd(container);
    this.io(container, () => this.calls.fdatasync(fd));
  }

  /** Makes every write this thread has done durable (FLUSH). Writes by other threads to the same
   *  files are covered too: fdatasync works on the file, not on the descriptor. */
  syncAll(): void {
    for (const id of this.paths.keys()) this.sync(id);
  }

  close(): void {
    for (const fd of this.fds.values()) this.pool.close(fd);
    this.fds.clear();
  }

  /** Refuses I/O once the lease has run out: the mappings it was looked up with may be stale. */
  private checkLease(): void {
    if (!this.lease.valid()) throw new NbdError("EIO", "this agent's lease has expired");
  }

  private fd(container: number): number {
    let fd = this.fds.get(container);
    if (fd === undefined) {
      const path = this.paths.get(container);
      if (path === undefined) throw new NbdError("EIO", `storage container ${container} is unknown to this agent`);
      fd = this.io(container, () => this.calls.open(path));
      this.fds.set(container, fd);
    }
    return fd;
  }

  private io<T>(container: number, operation: () => T): T {
    try {
      return operation();
    } catch (error) {
      throw this.failed(container, error);
    }
  }

  private async ioOnPool<T>(container: number, operation: Promise<T>): Promise<T> {
    try {
      return await operation;
    } catch (error) {
      throw this.failed(container, error);
    }
  }

  private failed(container: number, error: unknown): NbdError {
    const message = (error as Error).message;
    this.onError(container, message);
    return new NbdError("EIO", `storage container ${container}: ${message}`);
  }
}
