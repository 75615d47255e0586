// The controller's commands to the agent (R6), applied to its tables: the tables it holds, in
// which slots of the shared memory, the storage containers, quiesce and activate, and the
// connections hosts have open. Tables are volatile (R4): a new table is all Invalid and entries
// arrive through faults or pushes from the controller.
import { TABLE_SLOTS_MAX, TablesError } from "../wasm/tables.ts";
import { ERR_NO_MEMORY } from "../wasm/assembly/layout.ts";
import { INVALID_WORD } from "../wasm/entry.ts";
import { TableSlots } from "./table-slots.ts";
import { ChangeOrder, checkRange, commandInOrder, stateChange, writeChange } from "./table-edits.ts";
import type { UncommittedChanges } from "./uncommitted.ts";
import type { ContainerEntry, ExportEntry } from "./thread-messages.ts";
import type { AgentMemory, WorkerThreads } from "./worker-threads.ts";
import { formatSize } from "../engine/util/size.ts";
import { assert } from "../engine/util/assert.ts";
import type { AgentRequests, ArgsOf } from "../engine/wire/messages.ts";
import { RequestError } from "../engine/wire/peer.ts";

export interface Table extends ExportEntry {
  entryCount: number;
  changes: ChangeOrder;
}

export class TableApplier {
  private readonly tables = new Map<number, Table>();
  private readonly containers = new Map<number, ContainerEntry>();
  private readonly slots = new TableSlots();
  /** Host connections that have each disk open, over every worker. */
  private readonly openConnections = new Map<number, number>();
  /** Disks whose table the controller sent since the current connection began. */
  private reloaded = new Set<number>();

  constructor(
    private readonly id: string,
    private readonly memory: AgentMemory,
    private readonly threads: WorkerThreads,
    private readonly uncommitted: UncommittedChanges,
    /** Told of each disk exported for the first time. */
    private readonly onNewExport: (name: string) => void,
  ) {}

  find(disk: number): Table | undefined {
    return this.tables.get(disk);
  }

  exportNames(): string[] {
    return [...this.tables.values()].map((table) => table.name);
  }

  /** The slots holding a table, live or retiring. */
  slotsInUse(): number[] {
    return this.slots.inUse();
  }

  /** A host connection opened (+1) or closed (-1) an export of `disk`. */
  countConnection(disk: number, delta: 1 | -1): void {
    const count = (this.openConnections.get(disk) ?? 0) + delta;
    assert(count >= 0, `disk ${disk}: more connections closed than opened`);
    if (count === 0) this.openConnections.delete(disk);
    else this.openConnections.set(disk, count);
  }

  /**
   * Before hello: the controller may have changed any table while we were apart (or restarted and
   * lost track of what we hold), so every entry goes Invalid and I/O already past its lookup
   * finishes. A hello then tells the controller that we hold nothing stale, and changes it held
   * back for us can go ahead (R8). The controller loads every table before it answers hello; a
   * table it did not send belongs to a disk deleted while we were apart.
   */
  async forgetEntries(): Promise<void> {
    this.reloaded = new Set();
    const tables = this.invalidateAll();
    await Promise.all(tables.map((table) => this.memory.inflight.drain(table.slot)));
  }

  /** Every entry reverts to Invalid, so no I/O goes to storage on old mappings (lease expiry). */
  invalidateAll(): Table[] {
    const tables = [...this.tables.values()];
    for (const table of tables) this.memory.tables.fillEntries(table.slot, 0, table.entryCount, INVALID_WORD);
    return tables;
  }

  /** After hello: drops the tables the controller did not send again. */
  async dropTablesNotReloaded(): Promise<void> {
    const stale = [...this.tables.values()].filter((table) => !this.reloaded.has(table.disk));
    for (const table of stale) {
      this.tables.delete(table.disk);
      this.uncommitted.forget(table.disk);
    }
    if (stale.length === 0) return;
    await this.threads.broadcastExports({ removed: stale.map((table) => table.disk) });
    for (const table of stale) await this.retire(table);
  }

  async serve(op: string, args: unknown): Promise<unknown> {
    const { tables: shared, inflight, gates } = this.memory;
    switch (op) {
      case "add_container": {
        const { id, path } = args as ArgsOf<AgentRequests, "add_container">;
        this.containers.set(id, { id, path, epoch: (this.containers.get(id)?.epoch ?? 0) + 1 });
        this.threads.broadcast({ type: "containers", containers: [...this.containers.values()] });
        return {};
      }
      case "new_table":
        return this.newTable(args as ArgsOf<AgentRequests, "new_table">);
      case "delete_table": {
        const { disk } = args as ArgsOf<AgentRequests, "delete_table">;
        const table = this.table(disk);
        this.tables.delete(disk);
        this.uncommitted.forget(disk);
        await this.threads.broadcastExports({ removed: [disk] });
        // Pages are only reused once no lookup can still be reading them, so always drain here.
        await this.retire(table);
        return {};
      }
      case "get_entry": {
        const { disk, first, count } = args as ArgsOf<AgentRequests, "get_entry">;
        const table = this.table(disk);
        checkRange(table, first, count);
        return { words: Array.from({ length: count }, (_, i) => shared.getEntry(table.slot, first + i)) };
      }
      case "get_connections": {
        const { disk } = args as ArgsOf<AgentRequests, "get_connections">;
        return { count: this.openConnections.get(disk) ?? 0 };
      }
      case "get_status": {
        const { disk, first, count } = args as ArgsOf<AgentRequests, "get_status">;
        const table = this.table(disk);
        checkRange(table, first, count);
        return { states: Array.from({ length: count }, (_, i) => shared.getEntry(table.slot, first + i) % 16) };
      }
      case "quiesce": {
        const { disks, timeoutMs } = args as ArgsOf<AgentRequests, "quiesce">;
        const tables = disks.map((disk) => this.table(disk));
        for (const table of tables) gates.close(table.slot);
        if (!(await inflight.drainWithin(tables.map((table) => table.slot), timeoutMs))) {
          this.openGates(tables);
          throw new RequestError("ETIMEDOUT", `agent ${this.id}: I/O still in progress after ${timeoutMs} ms; quiesce abandoned`);
        }
        return {};
      }
      case "activate": {
        const { disks } = args as ArgsOf<AgentRequests, "activate">;
        this.openGates(disks.flatMap((disk) => this.tables.get(disk) ?? []));
        return {};
      }
      case "set_entry": {
        const { disk, first, runs, blocking, change } = args as ArgsOf<AgentRequests, "set_entry">;
        commandInOrder(writeChange(shared, this.table(disk), first, runs, change), change);
        if (blocking) await inflight.drain(this.table(disk).slot);
        return {};
      }
      case "set_entry_state": {
        const { disk, first, count, set, clear, blocking, change } = args as ArgsOf<AgentRequests, "set_entry_state">;
        const table = this.table(disk);
        commandInOrder(stateChange(shared, table, first, count, set, clear.length > 0, change), change);
        if (blocking) await inflight.drain(table.slot);
        return {};
      }
      default:
        throw new RequestError("EINVAL", `unknown command ${op}`);
    }
  }

  private async newTable(args: ArgsOf<AgentRequests, "new_table">): Promise<object> {
    const entryCount = Math.ceil(args.size / 2 ** args.segmentShift);
    if (entryCount > 2 ** 32 || args.size === 0) throw new RequestError("EINVAL", `table for disk ${args.disk}: bad size ${args.size}`);
    const { slot, generation } = this.createTable(args.disk, entryCount, args.segmentShift);
    // Only a table loaded counts: an older one the controller now thinks this agent lacks goes.
    this.reloaded.add(args.disk);
    const replaced = this.tables.get(args.disk);
    const table: Table = {
      disk: args.disk,
      name: args.name,
      slot,
      generation,
      sizeBytes: args.size,
      segmentShift: args.segmentShift,
      readOnly: args.readOnly,
      entryCount,
      changes: new ChangeOrder(args.change),
    };
    this.tables.set(args.disk, table);
    const { entryCount: _, changes: __, ...entry } = table;
    await this.threads.broadcastExports({ set: [entry] });
    if (replaced) await this.retire(replaced);
    else this.onNewExport(args.name);
    return {};
  }

  /** A new all-Invalid table in a free slot. What can still fail is the memory: the shared
   *  memory is bounded (MEMORY_MAXIMUM_PAGES), and the host may run out before that. */
  private createTable(disk: number, entryCount: number, segmentShift: number): { slot: number; generation: number } {
    const slot = this.slots.take();
    if (slot === null) throw new RequestError("ENOSPC", `agent ${this.id}: no free table slot for disk ${disk} (all ${TABLE_SLOTS_MAX} in use)`);
    try {
      return { slot, generation: this.memory.tables.createTable(slot, entryCount, segmentShift) };
    } catch (error) {
      this.slots.release(slot);
      if (!(error instanceof TablesError)) throw error;
      const { memoryBytes } = this.memory.tables.pageStats();
      const code = error.code === ERR_NO_MEMORY ? "ENOMEM" : "EINVAL";
      throw new RequestError(code, `agent ${this.id}: cannot load the table of disk ${disk}: ${error.message} (table memory ${formatSize(memoryBytes)})`);
    }
  }

  private openGates(tables: Table[]): void {
    for (const table of tables) this.memory.gates.open(table.slot);
    this.threads.broadcast({ type: "activate" });
  }

  /** Stops lookups on an old table, waits for I/O through it to end, then frees its pages. */
  private async retire(table: Table): Promise<void> {
    const { tables: shared, inflight } = this.memory;
    shared.retireTable(table.slot);
    await inflight.drain(table.slot);
    shared.freeTable(table.slot);
    this.slots.release(table.slot);
    // I/O held by a quiesce whose activate never came (the controller died mid-group) wakes and
    // finds its table gone.
    this.openGates([table]);
  }

  private table(disk: number): Table {
    const table = this.tables.get(disk);
    if (!table) throw new RequestError("NOT_FOUND", `no table for disk ${disk}`);
    return table;
  }
}
