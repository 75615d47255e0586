// The controller: owns the persistent tables (R4), serves ctl requests and agents' faults (R5),
// and pushes table changes to every agent mapping a disk (R6).
import { existsSync, mkdirSync, statSync, closeSync, openSync, ftruncateSync, fsyncSync } from "node:fs";
import { dirname, isAbsolute, join, resolve as resolvePath } from "node:path";
import { lockDataDir, type DataLock } from "./data-lock.ts";
import { fsyncDirSync } from "./log/log-io.ts";
import { Catalog, type Disk, type Freed, type LogRecord } from "./catalog.ts";
import { TablesLog } from "./tables-log.ts";
import { checkConsistency } from "./check.ts";
import { ContainerHealth, HEALTH_CHECK_INTERVAL_MS } from "./container-health.ts";
import { failpoint } from "./failpoints.ts";
import { FaultQueue } from "./fault-queue.ts";
import { FaultResolver, type FaultAnswer } from "./faults.ts";
import { restoreEntries } from "./restore.ts";
import { createSnapshots, diff, rollback, type CreatedSnapshot, type SnapshotContext } from "./snapshots.ts";
import { Pool } from "./pool.ts";
import { ensureSecret, secretsMatch, SECRET_FILE } from "./secret.ts";
import { KeyedMutex } from "./util/mutex.ts";
import { formatAddress, type Address } from "./util/address.ts";
import { formatSize } from "./util/size.ts";
import {
  AGENTS_MAX,
  agentRequests,
  controllerRequests,
  CONTAINERS_MAX,
  DIFF_RANGES_MAX,
  DISKS_MAX,
  LEASE_MS_DEFAULT,
  LUN_FAILURE_LENGTH_MAX,
  LEASE_MS_MIN,
  PROTOCOL_VERSION,
  WARNING_LENGTH_MAX,
  type ArgsOf,
  type ControllerRequests,
  type DiskSummary,
  type AgentSummary,
  type LunSummary,
  type ResultOf,
} from "./wire/messages.ts";
import { Peer, RequestError } from "./wire/peer.ts";
import { assert } from "./util/assert.ts";
import type { AgentLink, AgentPeer } from "./agent-link.ts";
import { AgentFleet, presentedTo } from "./agent-fleet.ts";
import { listen, removeStaleSocket, type Listener } from "./wire/transport.ts";
import { FRAME_BYTES_MAX } from "./wire/frame.ts";
import {
  entryContainer,
  CONTAINER_BYTES_MAX,
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
/** How long a consistency group waits for agents to finish their I/O in progress. */
export const GROUP_QUIESCE_TIMEOUT_MS_DEFAULT = 5_000;
/** A connection that has not said hello by then is closed (it holds a socket and nothing else). */
const HELLO_TIMEOUT_MS = 10_000;
/** Until hello has proved the secret, a connection may send only small frames. */
const HELLO_FRAME_BYTES_MAX = 64 * 1024;
/** Connections beyond this are closed at once (agents and ctl together need few). */
export const CONNECTIONS_MAX = 1024;

/** ctl requests that change existing tables. */
const TABLE_CHANGES = new Set(["disk.delete", "disk.protect", "snapshot.create", "snapshot.group", "disk.rollback", "disk.export", "disk.unexport"]);

export interface ControllerOptions {
  dataDir: string;
  control: Address;
  /** The control secret's file (created when absent); default SECRET_FILE in the data directory. */
  secretFile?: string;
  defaultLunBytes?: number;
  compactSlackBytes?: number;
  log?: (line: string) => void;
  /** The controller cannot go on (its log failed): it has stopped taking changes and must exit.
   *  Without it, the controller only says so and refuses every change from then on. */
  onFatal?: (error: Error) => void;
}

export class Controller {
  private readonly catalog = new Catalog();
  private readonly pool = new Pool(this.catalog);
  private readonly agents = new AgentFleet({
    catalog: this.catalog,
    persist: (records) => this.persistRecords(records),
    say: (line) => this.say(line),
    fenced: (agent) => this.say(`agent ${agent.id}: lease expired; fenced until it registers again`),
  });
  /** Disks of one family may share segments, so their table changes are serialised together. */
  private readonly familyLocks = new KeyedMutex<number>();
  private readonly context: SnapshotContext = {
    catalog: this.catalog,
    pool: this.pool,
    persist: (records) => this.persistRecords(records),
    record: (records) => this.recordLater(records),
    isDurable: (position) => this.tables.isDurable(position),
    runPosition: () => this.catalog.runPosition,
    commit: () => this.tables.commit(),
    run: newRunId(),
    onlyHolder: (disk, agent) => this.agents.onlyHolder(disk, agent),
    tablesSettled: () => this.agents.knownAgentsSettled(),
    release: (freed) => this.releaseSegments(freed),
    pushEntries: (disk, segments, options) => this.agents.pushEntries(disk, segments, options),
    dropEntries: (agent, disk, segments) => this.agents.invalidate([agent as AgentLink], disk, segments, true),
    moveEntries: (disk, segments, options) => this.agents.moveEntries(disk, segments, options),
    nextChange: (disk) => this.agents.nextChange(disk),
    pushStates: (disk, set, blocking) => this.agents.pushStates(disk, set, blocking),
    exportDisk: (disk) => this.agents.exportDisk(disk),
    newDiskId: () => this.catalog.newDiskId(),
    failpoint,
  };
  private readonly faults = new FaultResolver(this.context);
  private readonly faultQueue = new FaultQueue(this.familyLocks, this.faults);
  private readonly catalogLock = new KeyedMutex<"catalog">();
  private listener: Listener | null = null;
  private tables!: TablesLog;
  private dataLock: DataLock | null = null;
  private controlSecret = "";
  private readonly health = new ContainerHealth();
  private healthTimer: Timer | undefined;
  private checkingHealth = false;
  private connections = 0;
  private readonly say: (line: string) => void;

  private constructor(private readonly options: ControllerOptions) {
    this.say = options.log ?? ((line) => console.error(line));
  }

  static async start(options: ControllerOptions): Promise<Controller> {
    const controller = new Controller(options);
    try {
      await controller.open();
    } catch (error) {
      await controller.stop();
      throw error;
    }
    return controller;
  }

  /** The address actually listened on (the port is filled in when 0 was asked for). */
  get address(): Address {
    const control = this.options.control;
    if (control.kind === "unix" || !this.listener) return control;
    return { ...control, port: (this.listener as { port: number }).port };
  }

  /** For an agent in the same process (`ctl up`). */
  get secret(): string {
    return this.controlSecret;
  }

  async stop(): Promise<void> {
    clearInterval(this.healthTimer);
    this.listener?.stop(true);
    this.agents.endAll();
    await this.tables?.close();
    this.pool.close();
    this.dataLock?.release();
  }

  private async open(): Promise<void> {
    const dataDir = resolvePath(this.options.dataDir);
    mkdirSync(dataDir, { recursive: true });
    this.dataLock = lockDataDir(dataDir);
    this.controlSecret = ensureSecret(this.options.secretFile ?? join(dataDir, SECRET_FILE));
    const { tables, recovery } = TablesLog.open(join(dataDir, LOG_FILE), this.catalog, {
      compactSlackBytes: this.options.compactSlackBytes,
      say: this.say,
      onFatal: this.options.onFatal ?? ((error) => this.say(error.message)),
    });
    this.tables = tables;
    if (recovery.truncatedBytes > 0) {
      this.say(`log: dropped a torn tail of ${recovery.truncatedBytes} bytes at offset ${recovery.truncatedAt}`);
    }
    this.pool.rebuild();
    this.agents.expectKnownAgents();
    // This run's first record: from here the log counts its records, so that a later run can tell
    // which of them were durable when agents hand back what this run left uncommitted (restore.ts).
    await this.persistRecords([{ t: "run", id: this.context.run, at: 0 }]);
    if (this.catalog.luns.size === 0) {
      await this.addLun(join(dataDir, DEFAULT_LUN_FILE), this.options.defaultLunBytes ?? DEFAULT_LUN_BYTES);
    }
    await this.checkContainers();
    this.healthTimer = setInterval(() => this.checkContainers(), HEALTH_CHECK_INTERVAL_MS);
    if (this.options.control.kind === "unix") await removeStaleSocket(this.options.control.path);
    this.listener = listen(this.options.control, (stream) => this.accept(new Peer(stream, controllerRequests, agentRequests)));
    this.say(`controller listening on ${formatAddress(this.address)}`);
  }

  private accept(peer: AgentPeer): void {
    if (this.connections >= CONNECTIONS_MAX) {
      peer.close(new Error("too many connections"));
      return;
    }
    this.connections += 1;
    peer.onClosed(() => (this.connections -= 1));
    peer.limitFrames(HELLO_FRAME_BYTES_MAX);
    let role: "agent" | "ctl" | null = null;
    let agent: AgentLink | null = null;
    const helloTimer = setTimeout(() => peer.close(new Error("no hello in time")), HELLO_TIMEOUT_MS);
    peer.onClosed(() => clearTimeout(helloTimer));
    peer.serve(async (op, args) => {
      if (op === "hello") {
        const hello = args as ArgsOf<ControllerRequests, "hello">;
        if (role) throw new RequestError("EPROTO", "hello sent twice", true);
        clearTimeout(helloTimer);
        if (!secretsMatch(hello.secret, this.controlSecret)) throw new RequestError("EACCES", "the control secret is missing or wrong", true);
        peer.limitFrames(FRAME_BYTES_MAX);
        if (hello.version !== PROTOCOL_VERSION) {
          throw new RequestError("EVERSION", `protocol version ${hello.version} is not supported (this controller speaks ${PROTOCOL_VERSION})`, true);
        }
        role = hello.role;
        if (role === "agent") {
          if (!hello.agentId || !hello.nbd) throw new RequestError("EINVAL", "an agent must give agentId and nbd", true);
          if (hello.leaseMs !== undefined && hello.leaseMs < LEASE_MS_MIN) throw new RequestError("EINVAL", `a lease of ${hello.leaseMs} ms is shorter than ${LEASE_MS_MIN} ms`, true);
          const handingBack = (hello.heldRuns ?? []).some((run) => run !== this.context.run);
          agent = await this.registerAgent(hello.agentId, hello.instance ?? "", hello.nbd, hello.leaseMs ?? LEASE_MS_DEFAULT, peer, handingBack);
        }
        return { version: PROTOCOL_VERSION, controller: "tabledisk", run: this.context.run };
      }
      if (!role) throw new RequestError("EPROTO", `${op} before hello`, true);
      if (op === "renew") {
        if (!agent) throw new RequestError("EPROTO", "only agents hold leases");
        agent.renewedAt = performance.now();
        return {};
      }
      if (op === "fault") {
        if (!agent) throw new RequestError("EPROTO", "only agents send faults");
        return this.fault(agent, args as ArgsOf<ControllerRequests, "fault">);
      }
      if (op === "commit") {
        if (!agent) throw new RequestError("EPROTO", "only agents commit");
        await this.faults.commit((args as ArgsOf<ControllerRequests, "commit">).run);
        return {};
      }
      if (op === "restore") {
        if (!agent) throw new RequestError("EPROTO", "only agents restore mappings");
        return restoreEntries({ ...this.context, agents: this.agents, say: this.say }, agent, args as ArgsOf<ControllerRequests, "restore">);
      }
      if (op === "restored") {
        if (!agent) throw new RequestError("EPROTO", "only agents restore mappings");
        this.agents.restored(agent);
        return {};
      }
      if (op === "storage_error") {
        if (!agent) throw new RequestError("EPROTO", "only agents report storage errors");
        const { container, message } = args as ArgsOf<ControllerRequests, "storage_error">;
        if (!this.catalog.luns.has(container)) throw new RequestError("NOT_FOUND", `no container ${container}`);
        await this.failContainer(container, `agent ${agent.id}: ${message}`);
        return {};
      }
      return this.serveCtl(op, args);
    });
  }

  /** Registers an agent and loads it (containers, then a table per disk) before hello is answered. */
  private async registerAgent(id: string, instance: string, nbd: string, leaseMs: number, peer: AgentPeer, handingBack: boolean): Promise<AgentLink> {
    if (!this.catalog.agents.has(id) && this.catalog.agents.size >= AGENTS_MAX) {
      throw new RequestError("ENOSPC", `the limit of ${AGENTS_MAX} agents is reached`, true);
    }
    const agent = await this.agents.register(id, instance, nbd, leaseMs, peer, handingBack);
    await this.catalogLock.run("catalog", async () => {
      for (const lun of this.catalog.luns.values()) await peer.request("add_container", { id: lun.id, path: lun.path });
      // A table the agent cannot load (out of memory) leaves that disk out, not the others.
      for (const disk of this.catalog.disks.values()) {
        if (!presentedTo(disk, id)) continue;
        const failure = await this.agents.loadTable(agent, disk);
        if (failure) this.say(`disk ${disk.name} is not exported on agent ${id}: ${failure}`);
      }
    });
    this.say(`agent ${id} registered (nbd ${nbd})`);
    return agent;
  }

  private async serveCtl(op: string, args: unknown): Promise<unknown> {
    // After a restart, agents hand back mapping changes the old run had not committed against the
    // tables as they were recovered (restore.ts): nothing changes them before that is done.
    if (TABLE_CHANGES.has(op)) await this.agents.knownAgentsSettled();
    switch (op) {
      case "disk.create":
        return this.createDisk(args as ArgsOf<ControllerRequests, "disk.create">);
      case "disk.list":
        return [...this.catalog.disks.values()].map((disk) => this.summary(disk));
      case "disk.info":
        return this.summary(this.diskNamed((args as { name: string }).name));
      case "disk.delete":
        return this.deleteDisk(args as ArgsOf<ControllerRequests, "disk.delete">);
      case "disk.protect":
        return this.protectDisk(args as ArgsOf<ControllerRequests, "disk.protect">);
      case "snapshot.create":
        return this.createSnapshot(args as ArgsOf<ControllerRequests, "snapshot.create">);
      case "snapshot.group":
        return this.createGroup(args as ArgsOf<ControllerRequests, "snapshot.group">);
      case "disk.rollback":
        return this.rollbackDisk(args as ArgsOf<ControllerRequests, "disk.rollback">);
      case "disk.diff":
        return this.diffDisks(args as ArgsOf<ControllerRequests, "disk.diff">);
      case "lun.add": {
        const { path, size } = args as ArgsOf<ControllerRequests, "lun.add">;
        // ctl resolves a relative path in its own working directory; the controller's means nothing to the user.
        if (!isAbsolute(path)) throw new RequestError("EINVAL", `Cannot add ${path}: the path must be absolute`);
        return this.catalogLock.run("catalog", () => this.addLun(resolvePath(path), size));
      }
      case "check":
        return checkConsistency(this.catalog, this.pool);
      case "lun.list":
        return [...this.catalog.luns.values()].map((lun) => this.lunSummary(lun.id));
      case "lun.repair":
        return this.repairContainer((args as ArgsOf<ControllerRequests, "lun.repair">).id);
      case "agent.list":
        return this.agentSummaries();
      case "disk.export":
      case "disk.unexport":
        return this.present(args as ArgsOf<ControllerRequests, "disk.export">, op === "disk.export");
      case "status":
        return this.status();
      default:
        throw new RequestError("EINVAL", `unknown request ${op}`);
    }
  }

  private diskNamed(name: string): Disk {
    const disk = this.catalog.diskByName(name);
    if (!disk) throw new RequestError("NOT_FOUND", `no disk named "${name}"`);
    return disk;
  }

  private createdSummary({ disk, notLoaded }: CreatedSnapshot): ResultOf<ControllerRequests, "snapshot.create"> {
    return { ...this.summary(disk), warning: warningOf([notExportedWarning(disk, notLoaded)]) };
  }

  private summary(disk: Disk): DiskSummary {
    const segmentSize = 2 ** disk.segmentShift;
    let exclusive = 0;
    for (const [, word] of disk.table.locations()) if (this.catalog.references(word) === 1) exclusive += 1;
    return {
      id: disk.id,
      name: disk.name,
      size: disk.size,
      segmentSize,
      mode: disk.mode,
      parent: disk.deletedParent ?? (disk.parent === null ? undefined : this.catalog.disks.get(disk.parent)?.name),
      // (A log from before deleted parents were named knows only that the parent is gone.)
      parentDeleted: (disk.parent !== null && !this.catalog.disks.has(disk.parent)) || undefined,
      protected: disk.protected,
      exports: disk.exports ?? undefined,
      allocatedBytes: disk.table.locatedCount * segmentSize,
      exclusiveBytes: exclusive * segmentSize,
      sharedBytes: (disk.table.locatedCount - exclusive) * segmentSize,
    };
  }

  private lunSummary(id: number): LunSummary {
    const lun = this.catalog.luns.get(id)!;
    let errorEntries = 0;
    if (lun.failed !== null) for (const disk of this.catalog.disks.values()) errorEntries += segmentsOn(disk, id).length;
    return {
      id,
      path: lun.path,
      size: lun.size,
      usedBytes: this.pool.usedBytes(id),
      freeBytes: this.pool.freeBytes(id),
      failed: lun.failed ?? undefined,
      errorEntries,
    };
  }

  // ---- Failing containers (R14) ----

  /** Takes every container that fails its check out of service. */
  private async checkContainers(): Promise<void> {
    if (this.checkingHealth) return;
    this.checkingHealth = true;
    try {
      for (const lun of this.catalog.luns.values()) {
        if (lun.failed !== null) continue;
        const problem = this.health.problem(lun.id, lun.path);
        if (problem !== null) await this.failContainer(lun.id, problem);
      }
    } catch (error) {
      this.say(`container check failed: ${(error as Error).message}`);
    } finally {
      this.checkingHealth = false;
    }
  }

  /** The container's segments turn E for every agent (their tables keep the locations); hosts get
   *  EIO there and only there, and nothing new is allocated on it. */
  private async failContainer(id: number, reason: string): Promise<void> {
    await this.catalogLock.run("catalog", async () => {
      const lun = this.catalog.luns.get(id)!;
      if (lun.failed !== null) return;
      await this.persistRecords([{ t: "lunhealth", lun: id, failed: reason.slice(0, LUN_FAILURE_LENGTH_MAX) }]);
      this.say(`container ${id} (${lun.path}) is out of service: ${reason}`);
      await this.pushSegmentsOn(id);
    });
  }

  /** Puts a failed container back once it passes the check: agents reopen it and get its
   *  segments' locations again. */
  private repairContainer(id: number): Promise<LunSummary> {
    return this.catalogLock.run("catalog", async () => {
      const lun = this.catalog.luns.get(id);
      if (!lun) throw new RequestError("NOT_FOUND", `no container ${id}`);
      if (lun.failed === null) return this.lunSummary(id);
      this.health.forget(id);
      const problem = this.health.problem(id, lun.path);
      if (problem !== null) throw new RequestError("EIO", `container ${id} still fails its check: ${problem}`);
      this.pool.reopen(id);
      await Promise.all(this.agents.all().map((agent) => agent.call((peer) => peer.request("add_container", { id, path: lun.path }))));
      await this.persistRecords([{ t: "lunhealth", lun: id }]);
      this.say(`container ${id} (${lun.path}) is back in service`);
      await this.pushSegmentsOn(id);
      return this.lunSummary(id);
    });
  }

  /** Sends every disk's entries on container `id` to its agents, as they now stand. */
  private async pushSegmentsOn(id: number): Promise<void> {
    for (const disk of this.catalog.disks.values()) {
      const segments = segmentsOn(disk, id);
      if (segments.length > 0) await this.familyLocks.run(disk.family, () => this.agents.pushEntries(disk, segments, { blocking: false }));
    }
  }

  private async createDisk(args: ArgsOf<ControllerRequests, "disk.create">): Promise<ResultOf<ControllerRequests, "disk.create">> {
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
      this.checkNewName(args.name);
      const id = this.catalog.newDiskId();
      await this.persistRecords([{ t: "disk", id, name: args.name, size: args.size, segmentShift: shift, mode: args.mode ?? "forward" }]);
      const disk = this.catalog.disk(id);
      const notLoaded = await this.agents.exportDisk(disk);
      return { ...this.summary(disk), warning: warningOf([this.overcommitWarning(disk), notExportedWarning(disk, notLoaded)]) };
    });
  }

  /** Thin disks may be larger than the pool (as LVM thin volumes may); a disk larger than the space
   *  still free is accepted with a warning, since writes fail with ENOSPC once the pool is full. */
  private overcommitWarning(disk: Disk): string | undefined {
    const { freeBytes, provisionedBytes, sizeBytes } = this.poolFigures();
    if (disk.size <= freeBytes) return undefined;
    return (
      `disk ${disk.name} (${formatSize(disk.size)}) is larger than the pool's free space (${formatSize(freeBytes)}); ` +
      `the pool is overcommitted ${overcommitRatio(provisionedBytes, sizeBytes).toFixed(2)}x: writes fail with ENOSPC once it is full (add storage with ctl lun add)`
    );
  }

  private poolFigures(): ResultOf<ControllerRequests, "status">["pool"] {
    const luns = [...this.catalog.luns.values()];
    const sizeBytes = luns.reduce((sum, lun) => sum + lun.size, 0);
    const usedBytes = luns.reduce((sum, lun) => sum + this.pool.usedBytes(lun.id), 0);
    const freeBytes = luns.reduce((sum, lun) => sum + (lun.failed === null ? this.pool.freeBytes(lun.id) : 0), 0);
    let provisionedBytes = 0;
    for (const disk of this.catalog.disks.values()) provisionedBytes += disk.size;
    return { sizeBytes, usedBytes, freeBytes, containers: luns.length, provisionedBytes, overcommit: overcommitRatio(provisionedBytes, sizeBytes) };
  }

  private async deleteDisk({ name, force }: ArgsOf<ControllerRequests, "disk.delete">): Promise<{ freedBytes: number }> {
    return this.catalogLock.run("catalog", async () => {
      const disk = this.diskNamed(name);
      const refuse = (why: string) => new RequestError("EBUSY", `Cannot delete disk "${name}": ${why}`);
      if (disk.protected) throw refuse(`it is protected (ctl snapshot unprotect ${name} first)`);
      if (!force) {
        const children = this.catalog.childrenOf(disk).map((child) => child.name);
        if (children.length > 0) throw refuse(`${children.join(", ")} ${children.length === 1 ? "was" : "were"} taken from it (--force deletes it anyway; they keep their data)`);
        await this.refuseIfOpen(disk, refuse);
      }
      return this.familyLocks.run(disk.family, async () => {
        // Agents drop the table and finish their I/O to it before any segment is freed.
        await Promise.all(
          this.agents.agentsOf(disk.id).map((agent) => this.agents.dropTable(agent, disk)),
        );
        const freed = await this.persistRecords([{ t: "rmdisk", id: disk.id }]);
        this.releaseSegments(freed);
        return { freedBytes: freed.reduce((sum, block) => sum + 2 ** block.shift, 0) };
      });
    });
  }

  private async createSnapshot(args: ArgsOf<ControllerRequests, "snapshot.create">): Promise<ResultOf<ControllerRequests, "snapshot.create">> {
    return this.catalogLock.run("catalog", async () => {
      const source = this.diskNamed(args.source);
      this.checkNewName(args.name);
      const [created] = await this.familyLocks.run(source.family, () =>
        createSnapshots(this.context, [
          { source, name: args.name, mode: args.mode ?? source.mode, invalidate: args.invalidate ?? false, protect: args.protect ?? false },
        ]),
      );
      return this.createdSummary(created!);
    });
  }

  /**
   * A consistency group (R12): every agent of every disk in the set holds new I/O and finishes
   * what is in flight, then each disk is snapshotted, then all are activated: one point in time
   * across the disks. On any failure (time limit, agent gone) no snapshot is made and every held
   * I/O is released.
   */
  private async createGroup(args: ArgsOf<ControllerRequests, "snapshot.group">): Promise<ResultOf<ControllerRequests, "snapshot.group">> {
    const timeoutMs = args.timeoutMs ?? GROUP_QUIESCE_TIMEOUT_MS_DEFAULT;
    return this.catalogLock.run("catalog", async () => {
      const sources = args.pairs.map((pair) => this.diskNamed(pair.source));
      const names = args.pairs.map((pair) => pair.name);
      if (new Set(names).size !== names.length || new Set(sources).size !== sources.length) {
        throw new RequestError("EINVAL", "a group names each source disk and each new name once");
      }
      for (const name of names) this.checkNewName(name);
      const families = [...new Set(sources.map((disk) => disk.family))].sort((a, b) => a - b);
      const created = await this.withFamilies(families, async () => {
        const quiesced = await this.agents.quiesceAll(sources, timeoutMs);
        try {
          return await createSnapshots(
            this.context,
            sources.map((source, i) => ({ source, name: names[i]!, mode: source.mode, invalidate: false, protect: false })),
          );
        } finally {
          await this.agents.activateAll(quiesced, sources);
        }
      });
      return created.map((snapshot) => this.createdSummary(snapshot));
    });
  }

  /** Runs `work` holding the locks of several families, taken in one order (no deadlock). */
  private withFamilies<T>(families: number[], work: () => Promise<T>): Promise<T> {
    const [first, ...rest] = families;
    if (first === undefined) return work();
    return this.familyLocks.run(first, () => this.withFamilies(rest, work));
  }

  /** A disk goes back only to a snapshot of its own (a descendant in its line): anything else, such
   *  as the arguments swapped, would overwrite the other disk and free its data. */
  private async rollbackDisk(args: ArgsOf<ControllerRequests, "disk.rollback">): Promise<DiskSummary> {
    return this.catalogLock.run("catalog", async () => {
      const disk = this.diskNamed(args.name);
      const snapshot = this.diskNamed(args.snapshot);
      const refuse = (code: string, why: string) => new RequestError(code, `Cannot roll ${disk.name} back to ${snapshot.name}: ${why}`);
      if (!snapshot.ancestors.includes(disk.id)) {
        const swapped = disk.ancestors.includes(snapshot.id) ? ` (it is the other way round: ${disk.name} was taken from ${snapshot.name})` : "";
        throw refuse("EINVAL", `${snapshot.name} is not a snapshot of ${disk.name}${swapped}`);
      }
      assert(disk.family === snapshot.family && disk.size === snapshot.size, "a snapshot has its origin's family and size");
      if (disk.protected) throw refuse("EBUSY", `${disk.name} is protected (ctl snapshot unprotect ${disk.name} first)`);
      if (!args.force) await this.refuseIfOpen(disk, (why) => refuse("EBUSY", why));
      await this.familyLocks.run(disk.family, () => rollback(this.context, disk, snapshot));
      return this.summary(disk);
    });
  }

  /** Refuses (unless forced, which the caller checks) while a host has the disk open on any agent. */
  private async refuseIfOpen(disk: Disk, refuse: (why: string) => Error): Promise<void> {
    const users = await this.agents.connectionsTo(disk);
    if (users.length === 0) return;
    const who = users.map(({ agent, count }) => (count === null ? `agent ${agent} did not say` : `agent ${agent} has ${count} connection${count === 1 ? "" : "s"}`));
    throw refuse(`it is in use (${who.join("; ")}); --force goes ahead anyway`);
  }

  /** Protects a disk or lifts it: every agent then serves it from a new table, read-only or
   *  writable again, and a write in flight when the change came has finished before it is answered. */
  private protectDisk({ name, on }: ArgsOf<ControllerRequests, "disk.protect">): Promise<DiskSummary> {
    return this.catalogLock.run("catalog", async () => {
      const disk = this.diskNamed(name);
      if (disk.protected !== on) {
        await this.familyLocks.run(disk.family, async () => {
          await this.persistRecords([{ t: "protect", disk: disk.id, on }]);
          await Promise.all(this.agents.agentsOf(disk.id).map((agent) => this.agents.sendTable(agent, disk)));
        });
      }
      return this.summary(disk);
    });
  }

  private diffDisks(args: ArgsOf<ControllerRequests, "disk.diff">): { segmentSize: number; ranges: { offset: number; length: number }[] } {
    const a = this.diskNamed(args.a);
    const b = this.diskNamed(args.b);
    if (a.size !== b.size || a.segmentShift !== b.segmentShift) {
      throw new RequestError("EINVAL", `Cannot diff ${a.name} and ${b.name}: their sizes or segment sizes differ`);
    }
    const ranges = diff(a, b);
    if (ranges.length > DIFF_RANGES_MAX) throw new RequestError("E2BIG", `the diff has more than ${DIFF_RANGES_MAX} ranges`);
    return { segmentSize: 2 ** a.segmentShift, ranges };
  }

  private checkNewName(name: string): void {
    if (this.catalog.diskByName(name)) throw new RequestError("EEXIST", `Cannot create disk "${name}": a disk with that name exists`);
    if (this.catalog.disks.size >= DISKS_MAX) throw new RequestError("EINVAL", `Cannot create disk "${name}": the limit of ${DISKS_MAX} disks is reached`);
  }


  /**
   * Changes which agents present a disk (R7): those that lose it drop the table and finish their
   * I/O to it (blocking) before the change is answered; those that gain it get a new table.
   */
  private async present({ name, agent: agentId, force }: ArgsOf<ControllerRequests, "disk.export">, add: boolean): Promise<DiskSummary> {
    return this.catalogLock.run("catalog", async () => {
      const disk = this.diskNamed(name);
      if (!force && !this.knownAgent(agentId)) {
        const known = this.agents.ids();
        throw new RequestError(
          "NOT_FOUND",
          `Cannot ${add ? "export" : "unexport"} ${name} ${add ? "to" : "from"} agent ${agentId}: no such agent has registered ` +
            `(known: ${known.join(", ") || "none"}); --force names an agent that has not registered yet`,
        );
      }
      // A disk without a list is presented everywhere: the first export makes the list just that
      // agent; an unexport makes it every agent known now but that one.
      const after = add
        ? [...new Set([...(disk.exports ?? []), agentId])]
        : (disk.exports ?? this.agents.ids()).filter((id) => id !== agentId);
      await this.familyLocks.run(disk.family, async () => {
        await this.persistRecords([{ t: "present", disk: disk.id, agents: after }]);
        await Promise.all(
          this.agents.all().map(async (agent) => {
            const wanted = presentedTo(disk, agent.id);
            if (wanted && !agent.disks.has(disk.id)) await this.agents.sendTable(agent, disk);
            if (!wanted && agent.disks.has(disk.id)) await this.agents.dropTable(agent, disk);
          }),
        );
      });
      return this.summary(disk);
    });
  }

  /** An agent registered now or before a restart, or named in an export list. */
  private knownAgent(id: string): boolean {
    if (this.agents.ids().includes(id) || this.catalog.agents.has(id)) return true;
    return [...this.catalog.disks.values()].some((disk) => disk.exports?.includes(id));
  }

  private agentSummaries(): AgentSummary[] {
    return this.agents.all().map((agent) => ({
      id: agent.id,
      nbd: agent.nbd,
      connected: agent.connected,
      disks: [...agent.disks].flatMap((id) => this.catalog.disks.get(id)?.name ?? []),
    }));
  }

  private status(): ResultOf<ControllerRequests, "status"> {
    return {
      controller: { disks: this.catalog.disks.size, logBytes: this.tables.sizeBytes },
      agents: this.agentSummaries(),
      pool: this.poolFigures(),
      disks: [...this.catalog.disks.values()].map((disk) => this.summary(disk)),
    };
  }

  private async addLun(path: string, size: number): Promise<LunSummary> {
    if (this.catalog.luns.size >= CONTAINERS_MAX) throw new RequestError("EINVAL", `Cannot add ${path}: the limit of ${CONTAINERS_MAX} containers is reached`);
    if ([...this.catalog.luns.values()].some((lun) => lun.path === path)) throw new RequestError("EEXIST", `Cannot add ${path}: it is already in the pool`);
    if (size <= 0 || size % 2 ** SEGMENT_SHIFT_MIN !== 0 || size > CONTAINER_BYTES_MAX) {
      throw new RequestError("EINVAL", `Cannot add ${path}: size ${size} must be a positive multiple of 64 KiB up to ${formatSize(CONTAINER_BYTES_MAX)}`);
    }
    const created = createContainerFile(path, size);
    const id = this.catalog.newLunId();
    await this.persistRecords([{ t: "lun", id, path, size, knownZero: created }]);
    this.pool.addLun(this.catalog.luns.get(id)!);
    await Promise.all(this.agents.all().map((agent) => agent.call((peer) => peer.request("add_container", { id, path }))));
    return this.lunSummary(id);
  }

  // ---- Table changes shared by faults and snapshots ----

  private async fault(agent: AgentLink, args: ArgsOf<ControllerRequests, "fault">): Promise<FaultAnswer> {
    const disk = this.catalog.disks.get(args.disk);
    if (!disk) return { action: "error", errno: "EIO" };
    // The agents serve a protected disk read-only; this holds even for one that has not heard yet.
    if (disk.protected && args.op !== "read" && args.op !== "status") return { action: "error", errno: "EPERM" };
    if (args.first > args.last || args.last >= disk.table.entryCount || args.offset + args.length > disk.size) {
      throw new RequestError("EINVAL", `fault on disk ${disk.name}: segments ${args.first}..${args.last} or range outside the disk`);
    }
    return this.faultQueue.submit(disk, args, agent);
  }

  private persistRecords(records: LogRecord[]): Promise<Freed[]> {
    return this.tables.persist(records);
  }

  private recordLater(records: LogRecord[]): number {
    return this.tables.record(records);
  }

  private releaseSegments(freed: Freed[]): void {
    for (const { lun, offset, shift } of freed) this.pool.release(lun, offset, shift);
  }
}

/** The segments of `disk` whose storage lies on container `lun`. */
/** A created disk exists whatever its agents say: the caller learns where it is not exported. */
function notExportedWarning(disk: Disk, notLoaded: string[]): string | undefined {
  if (notLoaded.length === 0) return undefined;
  return `disk ${disk.name} was created, but ${notLoaded.join("; ")}: it is not exported there until that agent registers again`;
}

/** The warnings of a create as one, cut to what the wire carries. */
function warningOf(parts: (string | undefined)[]): string | undefined {
  const warning = parts.filter((part) => part !== undefined).join("; ");
  if (warning === "") return undefined;
  return warning.length <= WARNING_LENGTH_MAX ? warning : `${warning.slice(0, WARNING_LENGTH_MAX - 3)}...`;
}

function segmentsOn(disk: Disk, lun: number): number[] {
  const segments: number[] = [];
  for (const [index, word] of disk.table.locations()) if (entryContainer(word) === lun) segments.push(index);
  return segments;
}



/** A name for this controller run, so agents can tell a commit of it from one of a later run. */
function newRunId(): number {
  const [high, low] = crypto.getRandomValues(new Uint32Array(2));
  return (high! & 0x1fffff) * 2 ** 32 + low!;
}

/** Disks provisioned per byte of pool. */
function overcommitRatio(provisionedBytes: number, poolBytes: number): number {
  return poolBytes === 0 ? 0 : provisionedBytes / poolBytes;
}

/** Creates a sparse container file of `size` bytes; returns false when the path already existed.
 *  Its directory must exist: a mistyped path must not become a new directory tree. */
function createContainerFile(path: string, size: number): boolean {
  if (existsSync(path)) {
    const stat = statSync(path);
    if (stat.isFile() && stat.size < size) {
      throw new RequestError("EINVAL", `Cannot add ${path}: the file has ${stat.size} bytes, fewer than the ${size} asked for`);
    }
    return false;
  }
  const directory = dirname(path);
  if (!existsSync(directory) || !statSync(directory).isDirectory()) {
    throw new RequestError("ENOENT", `Cannot add ${path}: directory ${directory} does not exist`);
  }
  const fd = openSync(path, "wx");
  try {
    ftruncateSync(fd, size);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  fsyncDirSync(path);
  return true;
}

