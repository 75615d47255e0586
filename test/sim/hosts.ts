// The hosts: each agent's host runs a few streams of random requests (writes, some FUA, reads,
// flushes, TRIMs, WRITE_ZEROES) against the disks, through its agent, and every answer goes
// through the model. A read that returns what the model does not allow is a violation. Each
// stream holds a connection per disk (an export handle of the agent), opened when first needed,
// opened again once its agent incarnation has died or a FLUSH on it failed.
import type { HostConnection, SimAgent } from "./agent.ts";
import type { DiskInfo, DiskRegistry } from "./disks.ts";
import type { Model } from "./model.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES } from "./storage.ts";
import type { Trace } from "./trace.ts";

const WRITE_BLOCKS_MAX = 4;
/** Tries of one final read before the disk counts as unreadable (a liveness failure). */
const FINAL_READ_TRIES_MAX = 20;
const FINAL_READ_RETRY_MS = 200;
/** The share of writes and WRITE_ZEROES sent with FUA. */
const FUA_PROBABILITY = 0.2;

export interface HostsEnv {
  scheduler: Scheduler;
  life: Life;
  random: Random;
  trace: Trace;
  model: Model;
  disks: DiskRegistry;
  agents: SimAgent[];
  /** Every host writes to every disk at once (else each disk has one writer host at a time). */
  sharedWriters: boolean;
  violation(message: string): void;
}

type HostOp = "write" | "read" | "flush" | "trim" | "zero";
const OP_WEIGHTS: Record<HostOp, number> = { write: 45, read: 25, flush: 10, trim: 6, zero: 6 };

export class Hosts {
  private stopped = false;
  /** Requests in flight, described, with when they began (for a report of what is stuck). */
  private readonly inFlight = new Set<string>();
  private nextTag = 1;

  constructor(private readonly env: HostsEnv) {}

  start(streamsPerHost: number): void {
    for (const agent of this.env.agents) {
      for (let i = 0; i < streamsPerHost; i += 1) void this.stream(agent);
    }
  }

  stop(): void {
    this.stopped = true;
  }

  /** No stream is in the middle of a request. */
  get idle(): boolean {
    return this.inFlight.size === 0;
  }

  /** What is in flight, for a report. */
  describeInFlight(): string[] {
    return [...this.inFlight];
  }

  /** Reads every block of every disk (through agents picked at random) and checks it. */
  async readEverything(): Promise<void> {
    const { random } = this.env;
    for (const disk of this.env.disks.all()) {
      for (let first = 0; first < disk.blockCount; first += disk.segmentBlocks) {
        const count = Math.min(disk.segmentBlocks, disk.blockCount - first);
        await this.finalRead(disk, first, count, random);
      }
    }
  }

  private async finalRead(disk: DiskInfo, first: number, count: number, random: Random): Promise<void> {
    for (let tries = 0; tries < FINAL_READ_TRIES_MAX; tries += 1) {
      const up = this.env.agents.filter((agent) => agent.isUp && disk.presentedTo(agent.host));
      const connection = up.length > 0 ? random.pick(up).connect(disk.name) : null;
      if (connection) {
        const read = await this.read(connection, disk, first, count);
        connection.close();
        if (read) return;
      }
      await this.env.scheduler.sleep(FINAL_READ_RETRY_MS, this.env.life);
    }
    this.env.violation(`disk ${disk.name} blocks ${first}..${first + count - 1} cannot be read after the faults healed`);
  }

  private async stream(agent: SimAgent): Promise<void> {
    const { scheduler, random, life } = this.env;
    const connections = new Map<string, HostConnection>();
    while (!this.stopped) {
      await scheduler.sleep(random.chance(0.1) ? random.between(5, 40) : random.between(0, 2), life);
      // A host reconnects (and opens its exports) once its agent is registered.
      if (this.stopped || !agent.isRegistered) continue;
      const zombie = random.chance(0.3) ? this.zombieSegment(agent) : undefined;
      const op = zombie ? "trim" : random.weighted(OP_WEIGHTS);
      const writes = op !== "read";
      const disk = zombie?.disk ?? this.pickDisk(writes ? this.writerName(agent) : undefined, agent.host);
      if (!disk) continue;
      const connection = this.connection(agent, connections, disk);
      if (!connection) continue;
      const request = `${op} ${disk.name} through ${agent.host} since ${scheduler.now.toFixed(3)}`;
      this.inFlight.add(request);
      disk.busy += 1;
      if (writes) disk.writing += 1;
      try {
        if (!(await this.perform(connection, op, disk, zombie?.segment))) {
          connections.delete(disk.name);
          connection.close();
        }
      } finally {
        if (writes) disk.writing -= 1;
        disk.busy -= 1;
        this.inFlight.delete(request);
      }
    }
  }

  /** The stream's connection to `disk` through `agent`, opened if it has none that lives. */
  private connection(agent: SimAgent, connections: Map<string, HostConnection>, disk: DiskInfo): HostConnection | null {
    const open = connections.get(disk.name);
    if (open?.alive) return open;
    const connection = agent.connect(disk.name);
    if (connection) connections.set(disk.name, connection);
    else connections.delete(disk.name);
    return connection;
  }

  /** Whose writes `agent`'s host may make: its own disks', or any disk's. */
  private writerName(agent: SimAgent): string {
    return this.env.sharedWriters ? "*" : agent.host;
  }

  private pickDisk(writer: string | undefined, through: string): DiskInfo | undefined {
    const usable = this.env.disks.usable(writer, through);
    return usable.length > 0 ? this.env.random.pick(usable) : undefined;
  }

  /** A segment an unmap of which failed: TRIM it again, so the model may stop expecting zeros. */
  private zombieSegment(agent: SimAgent): { disk: DiskInfo; segment: number } | undefined {
    for (const disk of this.env.disks.usable(this.writerName(agent), agent.host)) {
      const index = disk.model.blocks.findIndex((block) => block.zombieZero);
      if (index >= 0) return { disk, segment: Math.floor(index / disk.segmentBlocks) };
    }
    return undefined;
  }

  /** Performs one request on `connection`; false if the connection is to be dropped (a FLUSH on
   *  it failed: writes acknowledged on it may be lost, and a new one starts afresh). */
  private async perform(connection: HostConnection, op: HostOp, disk: DiskInfo, segment?: number): Promise<boolean> {
    const { random } = this.env;
    switch (op) {
      case "read": {
        const first = random.int(0, disk.blockCount - 1);
        await this.read(connection, disk, first, Math.min(random.int(1, 2 * disk.segmentBlocks), disk.blockCount - first));
        return true;
      }
      case "write": {
        const whole = random.chance(0.2);
        const first = whole ? random.int(0, disk.blockCount / disk.segmentBlocks - 1) * disk.segmentBlocks : random.int(0, disk.blockCount - 1);
        const count = whole ? disk.segmentBlocks : Math.min(random.int(1, WRITE_BLOCKS_MAX), disk.blockCount - first);
        await this.write(connection, disk, first, count, false);
        return true;
      }
      case "zero": {
        // Inside one segment and shorter than it: zeros written through the data path.
        const start = random.int(0, disk.blockCount / disk.segmentBlocks - 1) * disk.segmentBlocks;
        const first = start + random.int(0, disk.segmentBlocks - 2);
        await this.write(connection, disk, first, random.int(1, start + disk.segmentBlocks - first - 1), true);
        return true;
      }
      case "trim": {
        const segments = disk.blockCount / disk.segmentBlocks;
        const from = segment ?? random.int(0, segments - 1);
        await this.trim(connection, disk, from, Math.min(segment === undefined ? random.int(1, 2) : 1, segments - from));
        return true;
      }
      case "flush":
        return this.flush(connection, disk);
    }
  }

  /** A FLUSH; true if it succeeded. */
  async flush(connection: HostConnection, disk: DiskInfo): Promise<boolean> {
    const mark = this.env.model.flushMark();
    const outcome = await settle(connection.flush());
    this.note(`host ${connection.id}: flush ${disk.name}: ${outcome}`, "flush", outcome);
    if (outcome === "ok") this.env.model.flushed(disk.model, connection.id, mark);
    return outcome === "ok";
  }

  /** Reads blocks and checks them against the model; false if the read failed. */
  async read(connection: HostConnection, disk: DiskInfo, first: number, count: number): Promise<boolean> {
    const window = this.env.model.beginRead(disk.model, first, count);
    let values: number[];
    try {
      values = await connection.read(first * BLOCK_BYTES, count * BLOCK_BYTES);
    } catch (error) {
      this.note(`host ${connection.id}: read ${disk.name}[${first}+${count}]: ${(error as Error).message}`, "read", "failed");
      return false;
    }
    this.note(`host ${connection.id}: read ${disk.name}[${first}+${count}] = ${values.join(",")}`, "read", "ok");
    const violation = this.env.model.checkRead(window, values);
    if (violation) this.env.violation(`${violation} (read through ${connection.id})`);
    return true;
  }

  /** Writes blocks (zeros: WRITE_ZEROES), with FUA as asked or at random. */
  async write(connection: HostConnection, disk: DiskInfo, first: number, count: number, zeros: boolean, withFua?: boolean): Promise<void> {
    if (!disk.tryLock(first, count)) return;
    const op = zeros ? "zero" : "write";
    const fua = withFua ?? this.env.random.chance(FUA_PROBABILITY);
    const tags = Array.from({ length: count }, () => (zeros ? 0 : this.nextTag++));
    const what = `${op}${fua ? " fua" : ""} ${disk.name}[${first}+${count}]`;
    this.env.trace.note(`host ${connection.id}: ${what} begins`);
    const pending = this.env.model.beginWrite(disk.model, first, tags, connection.host, connection.id);
    const offset = first * BLOCK_BYTES;
    const outcome = await settle(zeros ? connection.zero(offset, count * BLOCK_BYTES, fua) : connection.write(offset, tags, fua));
    this.env.model.endWrite(pending, outcome === "ok", fua);
    disk.unlock(first, count);
    this.note(`host ${connection.id}: ${what} ${zeros ? "" : tags.join(",")}: ${outcome}`, op, outcome);
    if (fua) this.env.trace.count(`host ${op} fua ${outcome === "ok" ? "ok" : "failed"}`);
  }

  private async trim(connection: HostConnection, disk: DiskInfo, segment: number, segments: number): Promise<void> {
    const first = segment * disk.segmentBlocks;
    const count = segments * disk.segmentBlocks;
    if (!disk.tryLock(first, count)) return;
    this.env.trace.note(`host ${connection.id}: trim ${disk.name} segments ${segment}+${segments} begins`);
    const pending = this.env.model.beginUnmap(disk.model, first, count);
    const outcome = await settle(connection.trim(first * BLOCK_BYTES, count * BLOCK_BYTES));
    this.env.model.endUnmap(pending, outcome === "ok");
    disk.unlock(first, count);
    this.note(`host ${connection.id}: trim ${disk.name} segments ${segment}+${segments}: ${outcome}`, "trim", outcome);
  }

  private note(line: string, op: HostOp, outcome: string): void {
    this.env.trace.note(line);
    this.env.trace.count(`host ${op} ${outcome === "ok" ? "ok" : "failed"}`);
  }
}

/** "ok", or the error a request failed with. */
async function settle(request: Promise<unknown>): Promise<string> {
  try {
    await request;
    return "ok";
  } catch (error) {
    return (error as Error).message;
  }
}
