// The controller: owns the persistent tables (R4), serves ctl requests and agents' faults (R5),
// and pushes table changes to every agent mapping a disk (R6).
import { existsSync, mkdirSync, statSync, closeSync, openSync, ftruncateSync, fsyncSync } from "node:fs";
import { dirname, join, resolve as resolvePath } from "node:path";
import { AppendLog } from "./log/append-log.ts";
import { Catalog, parseRecord, type Disk, type LogRecord } from "./catalog.ts";
import { Pool } from "./pool.ts";
import { KeyedMutex } from "./util/mutex.ts";
import { formatAddress, type Address } from "./util/address.ts";
import { formatSize } from "./util/size.ts";
import {
  agentRequests,
  controllerRequests,
  CONTAINERS_MAX,
  DISKS_MAX,
  PROTOCOL_VERSION,
  type ArgsOf,
  type ControllerRequests,
  type DiskSummary,
  type LunSummary,
} from "./wire/messages.ts";
import { Peer, RequestError } from "./wire/peer.ts";
import { listen, removeStaleSocket, type Listener } from "./wire/transport.ts";
import {
  CONTAINER_BYTES_MAX,
  ZERO_WORD,
  entryContainer,
  entryOffsetBytes,
  hasLocation,
  mappedWord,
  SEGMENT_SHIFT_MAX,
  SEGMENT_SHIFT_MIN,
} from "../wasm/entry.ts";

export const LOG_FILE = "controller.log";
export const DEFAULT_LUN_FILE = "lun0.img";
export const DEFAULT_LUN_BYTES = 64 * 2 ** 30;
export const DEFAULT_SEGMENT_BYTES = 2 ** 20;
export const DISK_ENTRIES_MAX = 2 ** 32;
/** Disk sizes are whole 512-byte sectors, as NBD clients expect. */
export const DISK_SIZE_ALIGN_BYTES = 512;
/** Compact when the log has grown this much beyond the size of the live state. */
export const COMPACT_SLACK_BYTES_DEFAULT = 64 * 2 ** 20;

export interface ControllerOptions {
  dataDir: string;
  control: Address;
  defaultLunBytes?: number;
  compactSlackBytes?: number;
  log?: (line: string) => void;
}

type AgentPeer = Peer<ControllerRequests, typeof agentRequests>;

interface AgentLink {
  id: string;
  nbd: string;
  peer: AgentPeer;
  /** Disks whose table this agent holds. */
  disks: Set<number>;
}

export class Controller {
  private readonly catalog = new Catalog();
  private readonly pool = new Pool(this.catalog);
  private readonly agents = new Map<string, AgentLink>();
  private readonly diskLocks = new KeyedMutex<number>();
  private readonly catalogLock = new KeyedMutex<"catalog">();
  private listener: Listener | null = null;
  private log!: AppendLog;
  private compactedBytes = 0;
  private compacting: Promise<void> | null = null;
  private readonly say: (line: string) => void;

  private constructor(private readonly options: ControllerOptions) {
    this.say = options.log ?? ((line) => console.error(line));
  }

  static async start(options: ControllerOptions): Promise<Controller> {
    const controller = new Controller(options);
    await controller.open();
    return controller;
  }

  /** The address actually listened on (the port is filled in when 0 was asked for). */
  get address(): Address {
    const control = this.options.control;
    if (control.kind === "unix" || !this.listener) return control;
    return { ...control, port: (this.listener as { port: number }).port };
  }

  async stop(): Promise<void> {
    this.listener?.stop(true);
    for (const agent of this.agents.values()) agent.peer.close();
    await this.compacting;
    await this.log?.close();
    this.pool.close();
  }

  private async open(): Promise<void> {
    const dataDir = resolvePath(this.options.dataDir);
    mkdirSync(dataDir, { recursive: true });
    const { log, records, recovery } = AppendLog.open(join(dataDir, LOG_FILE));
    this.log = log;
    if (recovery.truncatedBytes > 0) {
      this.say(`log: dropped a torn tail of ${recovery.truncatedBytes} bytes at offset ${recovery.truncatedAt}`);
    }
    for (const [index, raw] of records.entries()) {
      let record: LogRecord;
      try {
        record = parseRecord(raw);
      } catch (error) {
        throw new Error(`log ${join(dataDir, LOG_FILE)}: record ${index} is not valid: ${(error as Error).message}`);
      }
      this.catalog.apply(record);
    }
    this.pool.rebuild();
    this.compactedBytes = this.log.sizeBytes;
    if (this.catalog.luns.size === 0) {
      await this.addLun(join(dataDir, DEFAULT_LUN_FILE), this.options.defaultLunBytes ?? DEFAULT_LUN_BYTES);
    }
    if (this.options.control.kind === "unix") await removeStaleSocket(this.options.control.path);
    this.listener = listen(this.options.control, (stream) => this.accept(new Peer(stream, controllerRequests, agentRequests)));
    this.say(`controller listening on ${formatAddress(this.address)}`);
  }

  private accept(peer: AgentPeer): void {
    let role: "agent" | "ctl" | null = null;
    let agent: AgentLink | null = null;
    peer.serve(async (op, args) => {
      if (op === "hello") {
        const hello = args as ArgsOf<ControllerRequests, "hello">;
        if (role) throw new RequestError("EPROTO", "hello sent twice", true);
        if (hello.version !== PROTOCOL_VERSION) {
          throw new RequestError("EVERSION", `protocol version ${hello.version} is not supported (this controller speaks ${PROTOCOL_VERSION})`, true);
        }
        role = hello.role;
        if (role === "agent") {
          if (!hello.agentId || !hello.nbd) throw new RequestError("EINVAL", "an agent must give agentId and nbd", true);
          agent = await this.registerAgent(hello.agentId, hello.nbd, peer);
        }
        return { version: PROTOCOL_VERSION, controller: "tabledisk" };
      }
      if (!role) throw new RequestError("EPROTO", `${op} before hello`, true);
      if (op === "fault") {
        if (!agent) throw new RequestError("EPROTO", "only agents send faults");
        return this.fault(agent, args as ArgsOf<ControllerRequests, "fault">);
      }
      return this.serveCtl(op, args);
    });
  }

  /** Registers an agent and loads it (containers, then a table per disk) before hello is answered. */
  private async registerAgent(id: string, nbd: string, peer: AgentPeer): Promise<AgentLink> {
    this.agents.get(id)?.peer.close();
    const agent: AgentLink = { id, nbd, peer, disks: new Set() };
    this.agents.set(id, agent);
    peer.onClosed(() => {
      if (this.agents.get(id) === agent) this.agents.delete(id);
    });
    await this.catalogLock.run("catalog", async () => {
      for (const lun of this.catalog.luns.values()) await peer.request("add_container", { id: lun.id, path: lun.path });
      for (const disk of this.catalog.disks.values()) await this.sendTable(agent, disk);
    });
    this.say(`agent ${id} registered (nbd ${nbd})`);
    return agent;
  }

  private async sendTable(agent: AgentLink, disk: Disk): Promise<void> {
    await agent.peer.request("new_table", {
      disk: disk.id,
      name: disk.name,
      size: disk.size,
      segmentShift: disk.segmentShift,
      readOnly: false,
    });
    agent.disks.add(disk.id);
  }

  private agentsOf(diskId: number, except?: AgentLink): AgentLink[] {
    return [...this.agents.values()].filter((agent) => agent !== except && agent.disks.has(diskId) && !agent.peer.isClosed);
  }

  private async serveCtl(op: string, args: unknown): Promise<unknown> {
    switch (op) {
      case "disk.create":
        return this.createDisk(args as ArgsOf<ControllerRequests, "disk.create">);
      case "disk.list":
        return [...this.catalog.disks.values()].map((disk) => this.summary(disk));
      case "disk.info":
        return this.summary(this.diskNamed((args as { name: string }).name));
      case "disk.delete":
        return this.deleteDisk((args as { name: string }).name);
      case "lun.add": {
        const { path, size } = args as ArgsOf<ControllerRequests, "lun.add">;
        return this.catalogLock.run("catalog", () => this.addLun(resolvePath(path), size));
      }
      case "lun.list":
        return [...this.catalog.luns.values()].map((lun) => this.lunSummary(lun.id));
      case "agent.list":
        return [...this.agents.values()].map((agent) => ({
          id: agent.id,
          nbd: agent.nbd,
          disks: [...agent.disks].flatMap((id) => this.catalog.disks.get(id)?.name ?? []),
        }));
      default:
        throw new RequestError("EINVAL", `unknown request ${op}`);
    }
  }

  private diskNamed(name: string): Disk {
    const disk = this.catalog.diskByName(name);
    if (!disk) throw new RequestError("NOT_FOUND", `no disk named "${name}"`);
    return disk;
  }

  private summary(disk: Disk): DiskSummary {
    return {
      id: disk.id,
      name: disk.name,
      size: disk.size,
      segmentSize: 2 ** disk.segmentShift,
      allocatedBytes: disk.table.locatedCount * 2 ** disk.segmentShift,
    };
  }

  private lunSummary(id: number): LunSummary {
    const lun = this.catalog.luns.get(id)!;
    return { id, path: lun.path, size: lun.size, usedBytes: this.pool.usedBytes(id), freeBytes: this.pool.freeBytes(id) };
  }

  private async createDisk(args: ArgsOf<ControllerRequests, "disk.create">): Promise<DiskSummary> {
    const segmentSize = args.segmentSize ?? DEFAULT_SEGMENT_BYTES;
    const shift = Math.log2(segmentSize);
    const refuse = (why: string) => new RequestError("EINVAL", `Cannot create disk "${args.name}": ${why}`);
    if (!Number.isInteger(shift) || shift < SEGMENT_SHIFT_MIN || shift > SEGMENT_SHIFT_MAX) {
      throw refuse(`segment size ${segmentSize} is not a power of two from ${formatSize(2 ** SEGMENT_SHIFT_MIN)} to ${formatSize(2 ** SEGMENT_SHIFT_MAX)}`);
    }
    if (args.size === 0 || args.size % DISK_SIZE_ALIGN_BYTES !== 0) throw refuse(`size ${args.size} is not a positive multiple of ${DISK_SIZE_ALIGN_BYTES}`);
    if (Math.ceil(args.size / segmentSize) > DISK_ENTRIES_MAX) {
      throw refuse(`size ${formatSize(args.size)} needs more than ${DISK_ENTRIES_MAX} segments of ${formatSize(segmentSize)}`);
    }
    return this.catalogLock.run("catalog", async () => {
      if (this.catalog.diskByName(args.name)) throw new RequestError("EEXIST", `Cannot create disk "${args.name}": a disk with that name exists`);
      if (this.catalog.disks.size >= DISKS_MAX) throw refuse(`the limit of ${DISKS_MAX} disks is reached`);
      const id = this.catalog.newDiskId();
      await this.persist([{ t: "disk", id, name: args.name, size: args.size, segmentShift: shift }]);
      const disk = this.catalog.disks.get(id)!;
      await Promise.all([...this.agents.values()].map((agent) => this.sendTable(agent, disk)));
      return this.summary(disk);
    });
  }

  private async deleteDisk(name: string): Promise<{ freedBytes: number }> {
    return this.catalogLock.run("catalog", async () => {
      const disk = this.diskNamed(name);
      return this.diskLocks.run(disk.id, async () => {
        // Agents drop the table and finish their I/O to it before any segment is freed.
        await Promise.all(
          this.agentsOf(disk.id).map(async (agent) => {
            await agent.peer.request("delete_table", { disk: disk.id, blocking: true });
            agent.disks.delete(disk.id);
          }),
        );
        const freed: [lun: number, offset: number][] = [];
        for (const [, word] of disk.table.nonZero()) {
          if (hasLocation(word)) freed.push([entryContainer(word), entryOffsetBytes(word)]);
        }
        await this.persist([{ t: "rmdisk", id: disk.id }]);
        for (const [lun, offset] of freed) this.pool.release(lun, offset, disk.segmentShift);
        return { freedBytes: freed.length * 2 ** disk.segmentShift };
      });
    });
  }

  private async addLun(path: string, size: number): Promise<LunSummary> {
    if (this.catalog.luns.size >= CONTAINERS_MAX) throw new RequestError("EINVAL", `Cannot add ${path}: the limit of ${CONTAINERS_MAX} containers is reached`);
    if ([...this.catalog.luns.values()].some((lun) => lun.path === path)) throw new RequestError("EEXIST", `Cannot add ${path}: it is already in the pool`);
    if (size <= 0 || size % 2 ** SEGMENT_SHIFT_MIN !== 0 || size > CONTAINER_BYTES_MAX) {
      throw new RequestError("EINVAL", `Cannot add ${path}: size ${size} must be a positive multiple of 64 KiB up to ${formatSize(CONTAINER_BYTES_MAX)}`);
    }
    const created = createContainerFile(path, size);
    const id = this.catalog.newLunId();
    await this.persist([{ t: "lun", id, path, size, knownZero: created }]);
    this.pool.addLun(this.catalog.luns.get(id)!);
    await Promise.all([...this.agents.values()].map((agent) => agent.peer.request("add_container", { id, path })));
    return this.lunSummary(id);
  }

  /** Appends records, applies them, and waits until they are durable. */
  private async persist(records: LogRecord[]): Promise<void> {
    for (const record of records) this.log.append(record);
    for (const record of records) this.catalog.apply(record);
    await this.log.commit();
    this.maybeCompact();
  }

  private maybeCompact(): void {
    const slack = this.options.compactSlackBytes ?? COMPACT_SLACK_BYTES_DEFAULT;
    if (this.compacting || this.log.sizeBytes < this.compactedBytes + slack) return;
    this.compacting = this.log
      .compact(this.catalog.snapshot())
      .then(() => {
        this.compactedBytes = this.log.sizeBytes;
      })
      .catch((error: Error) => this.say(`log compaction failed: ${error.message}`))
      .finally(() => {
        this.compacting = null;
      });
  }

  // ---- Faults (R5) ----

  private async fault(agent: AgentLink, args: ArgsOf<ControllerRequests, "fault">) {
    const disk = this.catalog.disks.get(args.disk);
    if (!disk) return { action: "error" as const, errno: "EIO" as const };
    const entryCount = disk.table.entryCount;
    if (args.first > args.last || args.last >= entryCount || args.offset + args.length > disk.size) {
      throw new RequestError("EINVAL", `fault on disk ${disk.name}: segments ${args.first}..${args.last} or range outside the disk`);
    }
    return this.diskLocks.run(disk.id, async () => {
      if (!this.catalog.disks.has(disk.id)) return { action: "error" as const, errno: "EIO" as const };
      if (args.op === "write") {
        const allocated = await this.allocateZeroSegments(disk, args.first, args.last, args.offset, args.length);
        if (!allocated) return { action: "error" as const, errno: "ENOSPC" as const };
        if (allocated.length > 0) await this.pushEntries(disk, allocated, agent);
      }
      return { action: "retry" as const, first: args.first, runs: disk.table.runs(args.first, args.last - args.first + 1) };
    });
  }

  /**
   * Gives every Z segment in [first, last] a fresh storage segment (R13). Parts the host write
   * does not cover are zeroed when the block may hold old data. Returns the changed segments, or
   * null when the pool is full (nothing is changed then).
   */
  private async allocateZeroSegments(disk: Disk, first: number, last: number, offset: number, length: number): Promise<number[] | null> {
    const segmentSize = 2 ** disk.segmentShift;
    const records: LogRecord[] = [];
    const taken: { segment: number; lun: number; offset: number }[] = [];
    const dirtyLuns = new Set<number>();
    for (let segment = first; segment <= last; segment += 1) {
      if (disk.table.get(segment) !== ZERO_WORD) continue;
      const block = this.pool.allocate(disk.segmentShift);
      if (!block) {
        for (const undo of taken) this.pool.release(undo.lun, undo.offset, disk.segmentShift);
        return null;
      }
      taken.push({ segment, lun: block.lun, offset: block.offset });
      const highWater = this.pool.highWaterNeeded(block.lun, block.offset + segmentSize);
      if (highWater !== null) records.push({ t: "hwm", lun: block.lun, bytes: highWater });
      if (block.dirty) {
        const segmentStart = segment * segmentSize;
        const coveredFrom = Math.max(offset, segmentStart) - segmentStart;
        const coveredTo = Math.min(offset + length, segmentStart + segmentSize) - segmentStart;
        if (coveredFrom > 0) this.pool.zero(block.lun, block.offset, coveredFrom);
        if (coveredTo < segmentSize) this.pool.zero(block.lun, block.offset + coveredTo, segmentSize - coveredTo);
        dirtyLuns.add(block.lun);
      }
      records.push({ t: "map", disk: disk.id, first: segment, runs: [[mappedWord(block.lun, block.offset), 1]] });
    }
    // Zeroes must be on disk before the mapping that exposes them is.
    for (const lun of dirtyLuns) this.pool.sync(lun);
    if (records.length > 0) await this.persist(records);
    return taken.map((block) => block.segment);
  }

  /** Sends the new entries to every other agent mapping the disk and waits until they apply them. */
  private async pushEntries(disk: Disk, segments: number[], except: AgentLink): Promise<void> {
    const others = this.agentsOf(disk.id, except);
    await Promise.all(
      others.flatMap((agent) =>
        segments.map((segment) =>
          agent.peer
            .request("set_entry", { disk: disk.id, first: segment, runs: disk.table.runs(segment, 1), blocking: false })
            .catch((error: Error) => this.say(`agent ${agent.id}: set_entry failed: ${error.message}`)),
        ),
      ),
    );
  }
}

/** Creates a sparse container file of `size` bytes; returns false when the path already existed. */
function createContainerFile(path: string, size: number): boolean {
  if (existsSync(path)) {
    const stat = statSync(path);
    if (stat.isFile() && stat.size < size) {
      throw new RequestError("EINVAL", `Cannot add ${path}: the file has ${stat.size} bytes, fewer than the ${size} asked for`);
    }
    return false;
  }
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, "wx");
  try {
    ftruncateSync(fd, size);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const dir = openSync(dirname(path), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
  return true;
}

