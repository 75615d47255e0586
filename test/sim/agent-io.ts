// The simulated agent's data path, modelled on agent/mapped-backend.ts: every host request is
// resolved through the real WebAssembly tables and goes to storage, or faults to the controller
// and is retried. Between the lookup and the storage I/O some simulated time passes (a worker
// thread can be descheduled there too), which is the window the blocking flag exists for.
import { FAULT_RETRIES_MAX } from "../../agent/mapped-backend.ts";
import type { FaultOp } from "../../engine/wire/messages.ts";
import {
  EXTENT_KIND_ZERO,
  OP_READ,
  OP_WRITE,
  OP_WRITE_ZEROES,
  STATUS_ERROR,
  STATUS_FAULT,
  STATUS_GONE,
  STATUS_OK,
  type SharedTables,
} from "../../wasm/tables.ts";
import type { QuiesceGates } from "../../agent/gates.ts";
import type { SimInflight } from "./inflight.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES, type HostStorage } from "./storage.ts";

/** What a host sees when a request fails. */
export class HostError extends Error {
  override name = "HostError";
  constructor(
    readonly errno: string,
    message: string,
  ) {
    super(`${errno}: ${message}`);
  }
}

export interface ExportedTable {
  disk: number;
  name: string;
  slot: number;
  generation: number;
  sizeBytes: number;
  segmentShift: number;
}

export interface FaultRequest {
  disk: number;
  op: FaultOp;
  offset: number;
  length: number;
  first: number;
  last: number;
  state: number;
}

/** What the data path needs from its agent process. */
export interface DataPathContext {
  readonly scheduler: Scheduler;
  readonly life: Life;
  readonly random: Random;
  readonly tables: SharedTables;
  readonly gates: QuiesceGates;
  readonly inflight: SimInflight;
  readonly storage: HostStorage;
  exported(name: string): ExportedTable | undefined;
  knowsContainer(id: number): boolean;
  leaseValid(): boolean;
  /** Resolves when the controller has answered (the request is then retried); throws a HostError. */
  fault(request: FaultRequest): Promise<void>;
  /** Resolves when the mapping changes writes to `disk` relied on are committed; throws a HostError. */
  commit(disk: number): Promise<void>;
  /** Resolves at the next activate. */
  gateOpened(): Promise<void>;
  reportStorageError(container: number, message: string): void;
}

type Op = typeof OP_READ | typeof OP_WRITE | typeof OP_WRITE_ZEROES;

interface Extent {
  zero: boolean;
  container: number;
  offset: number;
  length: number;
}

type Attempt<T> = { done: true; value: T } | { done: false; quiesced: boolean; gone: boolean; first: number; last: number; state: number };

export class DataPath {
  constructor(private readonly ctx: DataPathContext) {}

  read(name: string, offset: number, length: number): Promise<number[]> {
    return this.run(name, OP_READ, offset, length, (extents) =>
      extents.flatMap((extent) =>
        extent.zero ? new Array<number>(extent.length / BLOCK_BYTES).fill(0) : this.storageIo(extent, () => this.ctx.storage.read(extent.container, extent.offset, extent.length)),
      ),
    );
  }

  write(name: string, offset: number, tags: readonly number[]): Promise<void> {
    return this.run(name, OP_WRITE, offset, tags.length * BLOCK_BYTES, (extents) => {
      let at = 0;
      for (const extent of extents) {
        const blocks = extent.length / BLOCK_BYTES;
        this.storageIo(extent, () => this.ctx.storage.write(extent.container, extent.offset, tags.slice(at, at + blocks)));
        at += blocks;
      }
    });
  }

  /** WRITE_ZEROES without NO_HOLE: whole segments are unmapped (they become Z), the partial ends
   *  are written with zeros where they hold data. */
  async zero(name: string, offset: number, length: number): Promise<void> {
    const table = this.table(name);
    const whole = wholeSegments(table, offset, length);
    if (!whole) return this.zeroData(name, offset, length);
    const segmentBytes = 2 ** table.segmentShift;
    const wholeStart = whole.first * segmentBytes;
    const wholeEnd = Math.min((whole.last + 1) * segmentBytes, offset + length);
    await this.zeroData(name, offset, wholeStart - offset);
    await this.unmap(table, whole.first, whole.last, offset, length);
    await this.zeroData(name, wholeEnd, offset + length - wholeEnd);
  }

  /** TRIM unmaps the whole segments of the range; partial segments are left as they are. */
  async trim(name: string, offset: number, length: number): Promise<void> {
    const table = this.table(name);
    const whole = wholeSegments(table, offset, length);
    if (whole) await this.unmap(table, whole.first, whole.last, offset, length);
  }

  /** FLUSH (on an open export, as every request): the controller commits the mappings the disk's
   *  writes relied on, then every container this agent knows is synced. */
  async flush(name: string, containers: Iterable<number>): Promise<void> {
    const table = this.table(name);
    await this.ctx.commit(table.disk);
    await this.ctx.scheduler.sleep(this.ctx.random.between(0.05, 1), this.ctx.life);
    for (const container of containers) {
      this.storageIo({ zero: false, container, offset: 0, length: 0 }, () => this.ctx.storage.sync(container));
    }
  }

  private zeroData(name: string, offset: number, length: number): Promise<void> {
    if (length <= 0) return Promise.resolve();
    return this.run(name, OP_WRITE_ZEROES, offset, length, (extents) => {
      for (const extent of extents) {
        if (!extent.zero) this.storageIo(extent, () => this.ctx.storage.zero(extent.container, extent.offset, extent.length));
      }
    });
  }

  private unmap(table: ExportedTable, first: number, last: number, offset: number, length: number): Promise<void> {
    return this.ctx.fault({ disk: table.disk, op: "trim", offset, length, first, last, state: 0 });
  }

  private table(name: string): ExportedTable {
    const table = this.ctx.exported(name);
    if (!table) throw new HostError("EIO", `disk ${name} is not exported`);
    return table;
  }

  /** Resolves and performs one request, retrying after faults (modelled on MappedExport.run). */
  private async run<T>(name: string, op: Op, offset: number, length: number, perform: (extents: Extent[]) => T): Promise<T> {
    for (let attempt = 0; ; ) {
      const table = this.table(name);
      const result = await this.attempt(table, op, offset, length, perform);
      if (result.done) return result.value;
      if (result.quiesced) {
        // Held until activate; this is not a fault and does not count as a retry.
        await this.ctx.gateOpened();
        continue;
      }
      if (attempt >= FAULT_RETRIES_MAX) throw new HostError("EIO", `disk ${name}: request still faults after ${FAULT_RETRIES_MAX} retries`);
      attempt += 1;
      if (result.gone) continue;
      await this.ctx.fault({ disk: table.disk, op: faultOpOf(op), offset, length, first: result.first, last: result.last, state: result.state });
    }
  }

  private async attempt<T>(table: ExportedTable, op: Op, offset: number, length: number, perform: (extents: Extent[]) => T): Promise<Attempt<T>> {
    const { tables, inflight } = this.ctx;
    const token = inflight.begin(table.slot);
    try {
      if (this.ctx.gates.isClosed(table.slot)) return { done: false, quiesced: true, gone: false, first: 0, last: 0, state: 0 };
      const status = tables.resolve(table.slot, table.generation, offset, length, op);
      if (status === STATUS_OK) {
        const extents = Array.from({ length: tables.extentCount }, (_, i) => ({
          zero: tables.extentKind(i) === EXTENT_KIND_ZERO,
          container: tables.extentContainer(i),
          offset: tables.extentOffset(i),
          length: tables.extentLength(i),
        }));
        await this.ctx.scheduler.sleep(this.ioDelay(), this.ctx.life);
        // Checked right before storage, as the real worker does: a lapsed lease means fenced.
        if (!this.ctx.leaseValid()) throw new HostError("EIO", `disk ${table.name}: this agent's lease has expired`);
        return { done: true, value: perform(extents) };
      }
      if (status === STATUS_FAULT) return { done: false, quiesced: false, gone: false, first: tables.faultFirst, last: tables.faultLast, state: tables.faultState };
      if (status === STATUS_GONE) return { done: false, quiesced: false, gone: true, first: 0, last: 0, state: 0 };
      if (status === STATUS_ERROR) throw new HostError("EIO", `disk ${table.name}: segment ${tables.faultFirst} is in the error state`);
      throw new HostError("EIO", `disk ${table.name}: lookup failed with status ${status}`);
    } finally {
      inflight.end(token);
    }
  }

  /** How long a looked-up request waits before its storage I/O: mostly short, now and then long. */
  private ioDelay(): number {
    const { random } = this.ctx;
    return random.chance(0.05) ? random.between(2, 30) : random.between(0, 0.5);
  }

  private storageIo<T>(extent: Extent, operation: () => T): T {
    if (!this.ctx.knowsContainer(extent.container)) throw new HostError("EIO", `storage container ${extent.container} is unknown to this agent`);
    try {
      return operation();
    } catch (error) {
      const message = (error as Error).message;
      this.ctx.reportStorageError(extent.container, message);
      throw new HostError("EIO", `storage container ${extent.container}: ${message}`);
    }
  }
}

function faultOpOf(op: Op): FaultOp {
  if (op === OP_READ) return "read";
  if (op === OP_WRITE) return "write";
  return "zero";
}

/** The segments lying wholly inside [offset, offset+length), or null (as MappedExport does). */
function wholeSegments(table: ExportedTable, offset: number, length: number): { first: number; last: number } | null {
  const segmentBytes = 2 ** table.segmentShift;
  const end = offset + length;
  const first = Math.ceil(offset / segmentBytes);
  const last = (end >= table.sizeBytes ? Math.ceil(end / segmentBytes) : Math.floor(end / segmentBytes)) - 1;
  return first <= last ? { first, last } : null;
}
