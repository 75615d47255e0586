// The agent's data path, behind the NBD layer: every request is resolved through the shared
// tables (WebAssembly lookup, R3) and goes straight to the storage containers. Only when an entry's
// state forbids the I/O does the request wait for the controller (a fault, R5); it is then retried.
import { NbdError, type BlockExtent, type ExportHandle, type ExportInfo, type NbdBackend } from "./nbd/backend.ts";
import type { ContainerFiles } from "./storage.ts";
import type { InflightTracker } from "./inflight.ts";
import type { QuiesceGates } from "./gates.ts";
import type { RegistrationEra } from "./registration-era.ts";
import type { ExportEntry } from "./thread-messages.ts";
import type { FaultOp } from "../engine/wire/messages.ts";
import {
  EXTENT_KIND_ZERO,
  OP_BLOCK_STATUS,
  OP_READ,
  OP_WRITE,
  OP_WRITE_ZEROES,
  STATUS_ERROR,
  STATUS_FAULT,
  STATUS_GONE,
  STATUS_OK,
  type SharedTables,
} from "../wasm/tables.ts";

/** Runs steps one after the other, synchronously while they complete synchronously. */
function chain(...steps: (() => void | Promise<void>)[]): void | Promise<void> {
  for (let i = 0; i < steps.length; i += 1) {
    const result = steps[i]!();
    if (result instanceof Promise) return result.then(() => chain(...steps.slice(i + 1)));
  }
}

/** Requests of at least this many bytes move their data on the I/O thread pool (storage.ts). */
export const POOL_TRANSFER_BYTES_MIN = 128 * 1024;

/** Resolves when every transfer has settled (none may still write into a buffer that is given
 *  back), rejecting with the first failure. */
async function allDone(transfers: Promise<void>[]): Promise<void> {
  const failure = (await Promise.allSettled(transfers)).find((outcome) => outcome.status === "rejected");
  if (failure) throw failure.reason;
}

/** A request is retried at most this often after faults before the host gets EIO. */
export const FAULT_RETRIES_MAX = 32;
/** Long WRITE_ZEROES/TRIM requests are resolved this many segments at a time. */
export const SEGMENTS_PER_LOOKUP_MAX = 512;

type Op = typeof OP_READ | typeof OP_WRITE | typeof OP_BLOCK_STATUS | typeof OP_WRITE_ZEROES;
function faultOpOf(op: Op): FaultOp {
  if (op === OP_READ) return "read";
  if (op === OP_WRITE) return "write";
  if (op === OP_WRITE_ZEROES) return "zero";
  return "status";
}

/** What stopped an attempt: a fault for the controller, a table that changed under it, or a
 *  quiesced disk. */
interface Stop {
  gone: boolean;
  quiesced?: boolean;
  first: number;
  last: number;
  state: number;
}

/** How a worker asks its main thread to handle a fault; resolves when the I/O may be retried. */
export type FaultSender = (fault: { disk: number; op: FaultOp; offset: number; length: number } & Stop) => Promise<void>;
/** How a worker has the mapping changes its writes to `disk` relied on committed (at FLUSH), for a
 *  connection opened in registration era `era` (see registration-era.ts). */
export type CommitSender = (disk: number, era: number) => Promise<void>;
/** Told when a host connection opens (+1) or closes (-1) an export of `disk`. */
export type OpenCounter = (disk: number, delta: 1 | -1) => void;

export interface BackendOptions {
  /** Requests of at least this many bytes move their data on the I/O thread pool (default
   *  POOL_TRANSFER_BYTES_MIN; a simulator sets it low, so that its storage delays land there). */
  poolTransferBytesMin?: number;
}

/** How a FLUSH and a FUA write have the mapping changes they relied on committed (the same,
 *  unless a simulator breaks one of them on purpose). */
export interface CommitSenders {
  flush: CommitSender;
  fua: CommitSender;
}

export class MappedBackend implements NbdBackend {
  private readonly byName = new Map<string, ExportEntry>();
  private readonly byDisk = new Map<number, ExportEntry>();

  private gateWaiters: (() => void)[] = [];
  readonly poolTransferBytesMin: number;

  constructor(
    readonly tables: SharedTables,
    readonly inflight: InflightTracker,
    readonly gates: QuiesceGates,
    readonly era: RegistrationEra,
    readonly files: ContainerFiles,
    readonly sendFault: FaultSender,
    readonly sendCommit: CommitSenders,
    readonly countOpen: OpenCounter,
    options: BackendOptions = {},
  ) {
    this.poolTransferBytesMin = options.poolTransferBytesMin ?? POOL_TRANSFER_BYTES_MIN;
  }

  /** Resolves at the next activate (the caller then looks at its gate again). */
  gateOpened(): Promise<void> {
    return new Promise((resolve) => this.gateWaiters.push(resolve));
  }

  activate(): void {
    for (const waiter of this.gateWaiters.splice(0)) waiter();
  }

  /** Applies a change of the export list: `set` adds or replaces (by disk), `removed` drops.
   *  A name stays with the latest table given it, whichever disk went since. */
  changeExports(set: ExportEntry[], removed: number[]): void {
    for (const disk of removed) this.forget(disk);
    for (const entry of set) {
      this.forget(entry.disk);
      this.byName.set(entry.name, entry);
      this.byDisk.set(entry.disk, entry);
    }
  }

  private forget(disk: number): void {
    const entry = this.byDisk.get(disk);
    if (!entry) return;
    this.byDisk.delete(disk);
    if (this.byName.get(entry.name) === entry) this.byName.delete(entry.name);
  }

  current(disk: number): ExportEntry | undefined {
    return this.byDisk.get(disk);
  }

  listExports(): ExportInfo[] {
    return [...this.byName.values()].map(infoOf);
  }

  openExport(name: string): ExportHandle | null {
    const entry = name === "" ? this.byName.values().next().value : this.byName.get(name);
    return entry ? new MappedExport(this, entry) : null;
  }
}

function infoOf(entry: ExportEntry): ExportInfo {
  return { name: entry.name, sizeBytes: entry.sizeBytes, readOnly: entry.readOnly };
}

/** A connection opened before its disk was protected still has a writable export: the current
 *  table's read-only flag refuses its writes (the NBD layer refuses them on later connections). */
function refuseIfReadOnly(entry: ExportEntry): void {
  if (entry.readOnly) throw new NbdError("EPERM", `disk ${entry.name} is protected (read-only)`);
}

const STOPPED = Symbol("stopped");
const NO_TOKEN = -1;

class MappedExport implements ExportHandle {
  readonly info: ExportInfo;
  private readonly disk: number;
  /** The registration era this connection opened in. */
  private readonly era: number;
  private stop: Stop = { gone: false, first: 0, last: 0, state: 0 };

  constructor(
    private readonly backend: MappedBackend,
    entry: ExportEntry,
  ) {
    this.info = infoOf(entry);
    this.disk = entry.disk;
    this.era = backend.era.current;
    backend.countOpen(this.disk, 1);
  }

  read(offset: number, into: Uint8Array): Uint32Array | undefined | Promise<Uint32Array | undefined> {
    return this.run(OP_READ, offset, into.length, () => {
      const { tables, files } = this.backend;
      const onPool = into.length >= this.backend.poolTransferBytesMin;
      const transfers: Promise<void>[] = [];
      let holes: number[] | null = null;
      let at = 0;
      for (let i = 0, n = tables.extentCount; i < n; i += 1) {
        const length = tables.extentLength(i);
        if (tables.extentKind(i) === EXTENT_KIND_ZERO) {
          into.fill(0, at, at + length);
          (holes ??= []).push(at, length);
        } else if (onPool) {
          transfers.push(files.readOnPool(tables.extentContainer(i), into, at, length, tables.extentOffset(i)));
        } else {
          files.read(tables.extentContainer(i), into, at, length, tables.extentOffset(i));
        }
        at += length;
      }
      const result = holes ? Uint32Array.from(holes) : undefined;
      return transfers.length > 0 ? allDone(transfers).then(() => result) : result;
    });
  }

  write(offset: number, data: Uint8Array, fua: boolean): void | Promise<void> {
    return this.durableIf(fua, this.writeData(offset, data, fua));
  }

  private writeData(offset: number, data: Uint8Array, fua: boolean): void | Promise<void> {
    return this.run(OP_WRITE, offset, data.length, () => {
      const { tables, files } = this.backend;
      const onPool = data.length >= this.backend.poolTransferBytesMin;
      const transfers: Promise<void>[] = [];
      const toSync = fua ? new Set<number>() : null;
      let at = 0;
      for (let i = 0, n = tables.extentCount; i < n; i += 1) {
        const length = tables.extentLength(i);
        const container = tables.extentContainer(i);
        if (onPool) transfers.push(files.writeOnPool(container, data, at, length, tables.extentOffset(i)));
        else files.write(container, data, at, length, tables.extentOffset(i));
        toSync?.add(container);
        at += length;
      }
      const sync = () => toSync?.forEach((container) => files.sync(container));
      if (transfers.length === 0) return sync();
      return allDone(transfers).then(sync);
    });
  }

  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): void | Promise<void> {
    return this.durableIf(fua, this.zeroes(offset, length, fua, noHole));
  }

  /** A FUA request is answered only once the mapping changes it relies on are committed too: its
   *  data is synced, but the mapping may come from an earlier fault whose change is still
   *  uncommitted (faults commit lazily), and a controller crash would lose the write with it. */
  private durableIf(fua: boolean, done: void | Promise<void>): void | Promise<void> {
    if (!fua) return done;
    return chain(
      () => done,
      () => this.backend.sendCommit.fua(this.disk, this.era),
    );
  }

  private zeroes(offset: number, length: number, fua: boolean, noHole: boolean): void | Promise<void> {
    if (noHole) return this.zeroData(offset, length, fua, true);
    // Whole segments go back to Z (unmapped, R15); only the partial ends are written with zeros.
    const whole = this.wholeSegments(offset, length);
    if (!whole) return this.zeroData(offset, length, fua, false);
    const segmentBytes = 2 ** this.entry().segmentShift;
    const wholeStart = whole.first * segmentBytes;
    const wholeEnd = Math.min((whole.last + 1) * segmentBytes, offset + length);
    return chain(
      () => this.zeroData(offset, wholeStart - offset, fua, false),
      () => this.unmap(whole.first, whole.last, offset, length),
      () => this.zeroData(wholeEnd, offset + length - wholeEnd, fua, false),
    );
  }

  /** Writes zeros over data segments. With NO_HOLE the range must be allocated, so it is resolved
   *  like a write and Z segments fault to get storage; otherwise Z segments are already zeros. */
  private zeroData(offset: number, length: number, fua: boolean, allocate: boolean): void | Promise<void> {
    if (length <= 0) return;
    const op = allocate ? OP_WRITE : OP_WRITE_ZEROES;
    return this.inPieces(offset, length, (pieceOffset, pieceLength) =>
      this.run(op, pieceOffset, pieceLength, () => {
        const { tables, files } = this.backend;
        for (let i = 0, n = tables.extentCount; i < n; i += 1) {
          if (tables.extentKind(i) === EXTENT_KIND_ZERO) continue;
          files.writeZeroes(tables.extentContainer(i), tables.extentOffset(i), tables.extentLength(i));
          if (fua) files.sync(tables.extentContainer(i));
        }
      }),
    );
  }

  /** TRIM unmaps the whole segments of the range (they read as zeros afterwards); partial
   *  segments are left as they are, which the protocol allows. */
  trim(offset: number, length: number): void | Promise<void> {
    const whole = this.wholeSegments(offset, length);
    if (whole) return this.unmap(whole.first, whole.last, offset, length);
  }

  /** The segments lying wholly inside [offset, offset+length) (the disk's last, short segment
   *  counts as whole when the range reaches the end of the disk), or null. */
  private wholeSegments(offset: number, length: number): { first: number; last: number } | null {
    const entry = this.entry();
    const segmentBytes = 2 ** entry.segmentShift;
    const end = offset + length;
    const first = Math.ceil(offset / segmentBytes);
    const last = (end >= entry.sizeBytes ? Math.ceil(end / segmentBytes) : Math.floor(end / segmentBytes)) - 1;
    return first <= last ? { first, last } : null;
  }

  /** Asks the controller to unmap segments; it updates every agent's table, this one's too. */
  private unmap(first: number, last: number, offset: number, length: number): Promise<void> {
    refuseIfReadOnly(this.entry());
    return this.backend.sendFault({ disk: this.disk, op: "trim", offset, length, gone: false, first, last, state: 0 });
  }

  /** The controller commits the mapping changes this disk's writes relied on (allocations and
   *  copy-on-write are not made durable one by one), then the containers are synced. */
  async flush(): Promise<void> {
    await this.backend.sendCommit.flush(this.disk, this.era);
    this.backend.files.syncAll();
  }

  blockStatus(offset: number, length: number): BlockExtent[] | Promise<BlockExtent[]> {
    return this.run(OP_BLOCK_STATUS, offset, length, () => {
      const { tables } = this.backend;
      const extents: BlockExtent[] = [];
      for (let i = 0, n = tables.extentCount; i < n; i += 1) {
        const zero = tables.extentKind(i) === EXTENT_KIND_ZERO;
        const last = extents[extents.length - 1];
        if (last && last.zero === zero) last.length += tables.extentLength(i);
        else extents.push({ length: tables.extentLength(i), hole: zero, zero });
      }
      return extents;
    });
  }

  close(): void {
    this.backend.countOpen(this.disk, -1);
  }

  private entry(): ExportEntry {
    const entry = this.backend.current(this.disk);
    if (!entry) throw new NbdError("EIO", `disk ${this.info.name} is no longer exported`);
    return entry;
  }

  /** Splits a long request at segment boundaries so each lookup stays within its extent limit. */
  private inPieces(offset: number, length: number, piece: (offset: number, length: number) => void | Promise<void>): void | Promise<void> {
    const segmentBytes = 2 ** this.entry().segmentShift;
    const step = segmentBytes * SEGMENTS_PER_LOOKUP_MAX;
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const next = Math.min(end, (Math.floor(at / step) + 1) * step);
      const result = piece(at, next - at);
      at = next;
      if (result instanceof Promise) return result.then(() => (at < end ? this.inPieces(at, end - at, piece) : undefined));
    }
  }

  /** Resolves and performs one request, synchronously unless it faults or moves its data on the I/O
   *  pool. */
  private run<T>(op: Op, offset: number, length: number, perform: () => T | Promise<T>): T | Promise<T> {
    const result = this.attempt(op, offset, length, perform);
    return result === STOPPED ? this.retry(op, offset, length, perform) : result;
  }

  /** One try. The I/O counts as in flight for its table slot (inflight.ts) from before its lookup
   *  until its storage transfers are done, also when they finish later on the I/O pool. Storage
   *  checks the lease right before each transfer (storage.ts). */
  private attempt<T>(op: Op, offset: number, length: number, perform: () => T | Promise<T>): T | Promise<T> | typeof STOPPED {
    const entry = this.entry();
    if (op === OP_WRITE || op === OP_WRITE_ZEROES) refuseIfReadOnly(entry);
    const { tables, inflight } = this.backend;
    let token = inflight.begin(entry.slot);
    try {
      if (this.backend.gates.isClosed(entry.slot)) {
        this.stop = { gone: false, quiesced: true, first: 0, last: 0, state: 0 };
        return STOPPED;
      }
      const status = tables.resolve(entry.slot, entry.generation, offset, length, op);
      if (status === STATUS_OK) {
        const performed = perform();
        if (!(performed instanceof Promise)) return performed;
        const held = token;
        token = NO_TOKEN; // ended when the transfers are done, not now
        return performed.finally(() => inflight.end(held));
      }
      if (status === STATUS_FAULT) {
        this.stop = { gone: false, first: tables.faultFirst, last: tables.faultLast, state: tables.faultState };
        return STOPPED;
      }
      if (status === STATUS_GONE) {
        this.stop = { gone: true, first: 0, last: 0, state: 0 };
        return STOPPED;
      }
      if (status === STATUS_ERROR) throw new NbdError("EIO", `disk ${this.info.name}: segment ${tables.faultFirst} is in the error state`);
      throw new NbdError("EIO", `disk ${this.info.name}: lookup failed with status ${status}`);
    } finally {
      if (token !== NO_TOKEN) inflight.end(token);
    }
  }

  private async retry<T>(op: Op, offset: number, length: number, perform: () => T | Promise<T>): Promise<T> {
    for (let attempt = 0; attempt < FAULT_RETRIES_MAX; ) {
      if (this.stop.quiesced) {
        // Held until activate; this is not a fault and does not count as a retry.
        await this.backend.gateOpened();
      } else {
        const { quiesced: _, ...stop } = this.stop;
        await this.backend.sendFault({ disk: this.disk, op: faultOpOf(op), offset, length, ...stop });
        attempt += 1;
      }
      const result = this.attempt(op, offset, length, perform);
      if (result !== STOPPED) return result;
    }
    throw new NbdError("EIO", `disk ${this.info.name}: request still faults after ${FAULT_RETRIES_MAX} retries`);
  }
}
