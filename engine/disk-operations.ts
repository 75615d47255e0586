// What ctl asks of disks and snapshots: create, delete, snapshot, consistency group, rollback,
// protect, export and unexport, diff. Each takes the catalog lock, then the lock of the family whose
// tables it changes, and tells the agents that hold them.
import type { Disk } from "./catalog.ts";
import { diskNamed, withFamilies, type ControllerCore } from "./controller-core.ts";
import { presentedTo } from "./agent-fleet.ts";
import { createSnapshots, diff, rollback } from "./snapshots.ts";
import { createdSummary, diskSummary, notExportedWarning, overcommitWarning, warningOf } from "./summaries.ts";
import { assert } from "./util/assert.ts";
import { formatSize } from "./util/size.ts";
import { DIFF_RANGES_MAX, DISKS_MAX, type ArgsOf, type ControllerRequests, type DiskSummary, type ResultOf } from "./wire/messages.ts";
import { RequestError } from "./wire/peer.ts";
import { SEGMENT_SHIFT_MAX, SEGMENT_SHIFT_MIN } from "../wasm/entry.ts";

export const DEFAULT_SEGMENT_BYTES = 2 ** 20;
export const DISK_ENTRIES_MAX = 2 ** 32;
/** Disk sizes are whole 512-byte sectors, as NBD clients expect. */
export const DISK_SIZE_ALIGN_BYTES = 512;
/** How long a consistency group waits for agents to finish their I/O in progress. */
export const GROUP_QUIESCE_TIMEOUT_MS_DEFAULT = 5_000;

type Args<Op extends keyof ControllerRequests> = ArgsOf<ControllerRequests, Op>;
type Result<Op extends keyof ControllerRequests> = ResultOf<ControllerRequests, Op>;

export class DiskOperations {
  constructor(private readonly core: ControllerCore) {}

  async create(args: Args<"disk.create">): Promise<Result<"disk.create">> {
    const { core } = this;
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
    return core.catalogLock.run("catalog", async () => {
      this.checkNewName(args.name);
      const id = core.catalog.newDiskId();
      await core.persist([{ t: "disk", id, name: args.name, size: args.size, segmentShift: shift, mode: args.mode ?? "forward" }]);
      const disk = core.catalog.disk(id);
      const notLoaded = await core.agents.exportDisk(disk);
      return { ...diskSummary(core, disk), warning: warningOf([overcommitWarning(core, disk), notExportedWarning(disk, notLoaded)]) };
    });
  }

  delete({ name, force }: Args<"disk.delete">): Promise<{ freedBytes: number }> {
    const { core } = this;
    return core.catalogLock.run("catalog", async () => {
      const disk = diskNamed(core, name);
      const refuse = (why: string) => new RequestError("EBUSY", `Cannot delete disk "${name}": ${why}`);
      if (disk.protected) throw refuse(`it is protected (ctl snapshot unprotect ${name} first)`);
      if (!force) {
        const children = core.catalog.childrenOf(disk).map((child) => child.name);
        if (children.length > 0) throw refuse(`${children.join(", ")} ${children.length === 1 ? "was" : "were"} taken from it (--force deletes it anyway; they keep their data)`);
        await this.refuseIfOpen(disk, refuse);
      }
      return core.familyLocks.run(disk.family, async () => {
        // Agents drop the table and finish their I/O to it before any segment is freed.
        await Promise.all(core.agents.agentsOf(disk.id).map((agent) => core.agents.dropTable(agent, disk)));
        const freed = await core.persist([{ t: "rmdisk", id: disk.id }]);
        core.release(freed);
        return { freedBytes: freed.reduce((sum, block) => sum + 2 ** block.shift, 0) };
      });
    });
  }

  snapshot(args: Args<"snapshot.create">): Promise<Result<"snapshot.create">> {
    const { core } = this;
    return core.catalogLock.run("catalog", async () => {
      const source = diskNamed(core, args.source);
      this.checkNewName(args.name);
      const [created] = await core.familyLocks.run(source.family, () =>
        createSnapshots(core.context, [
          { source, name: args.name, mode: args.mode ?? source.mode, invalidate: args.invalidate ?? false, protect: args.protect ?? false },
        ]),
      );
      return createdSummary(core, created!);
    });
  }

  /**
   * A consistency group (R12): every agent of every disk in the set holds new I/O and finishes
   * what is in flight, then each disk is snapshotted, then all are activated: one point in time
   * across the disks. On any failure (time limit, agent gone) no snapshot is made and every held
   * I/O is released.
   */
  group(args: Args<"snapshot.group">): Promise<Result<"snapshot.group">> {
    const { core } = this;
    const timeoutMs = args.timeoutMs ?? GROUP_QUIESCE_TIMEOUT_MS_DEFAULT;
    return core.catalogLock.run("catalog", async () => {
      const sources = args.pairs.map((pair) => diskNamed(core, pair.source));
      const names = args.pairs.map((pair) => pair.name);
      if (new Set(names).size !== names.length || new Set(sources).size !== sources.length) {
        throw new RequestError("EINVAL", "a group names each source disk and each new name once");
      }
      for (const name of names) this.checkNewName(name);
      const families = [...new Set(sources.map((disk) => disk.family))].sort((a, b) => a - b);
      const created = await withFamilies(core, families, async () => {
        const quiesced = await core.agents.quiesceAll(sources, timeoutMs);
        try {
          return await createSnapshots(
            core.context,
            sources.map((source, i) => ({ source, name: names[i]!, mode: source.mode, invalidate: false, protect: false })),
          );
        } finally {
          await core.agents.activateAll(quiesced, sources);
        }
      });
      return created.map((snapshot) => createdSummary(core, snapshot));
    });
  }

  /** A disk goes back only to a snapshot of its own (a descendant in its line): anything else, such
   *  as the arguments swapped, would overwrite the other disk and free its data. */
  rollback(args: Args<"disk.rollback">): Promise<DiskSummary> {
    const { core } = this;
    return core.catalogLock.run("catalog", async () => {
      const disk = diskNamed(core, args.name);
      const snapshot = diskNamed(core, args.snapshot);
      const refuse = (code: string, why: string) => new RequestError(code, `Cannot roll ${disk.name} back to ${snapshot.name}: ${why}`);
      if (!snapshot.ancestors.includes(disk.id)) {
        const swapped = disk.ancestors.includes(snapshot.id) ? ` (it is the other way round: ${disk.name} was taken from ${snapshot.name})` : "";
        throw refuse("EINVAL", `${snapshot.name} is not a snapshot of ${disk.name}${swapped}`);
      }
      assert(disk.family === snapshot.family && disk.size === snapshot.size, "a snapshot has its origin's family and size");
      if (disk.protected) throw refuse("EBUSY", `${disk.name} is protected (ctl snapshot unprotect ${disk.name} first)`);
      if (!args.force) await this.refuseIfOpen(disk, (why) => refuse("EBUSY", why));
      await core.familyLocks.run(disk.family, () => rollback(core.context, disk, snapshot));
      return diskSummary(core, disk);
    });
  }

  /** Protects a disk or lifts it: every agent then serves it from a new table, read-only or
   *  writable again, and a write in flight when the change came has finished before it is answered. */
  protect({ name, on }: Args<"disk.protect">): Promise<DiskSummary> {
    const { core } = this;
    return core.catalogLock.run("catalog", async () => {
      const disk = diskNamed(core, name);
      if (disk.protected !== on) {
        await core.familyLocks.run(disk.family, async () => {
          await core.persist([{ t: "protect", disk: disk.id, on }]);
          await Promise.all(core.agents.agentsOf(disk.id).map((agent) => core.agents.sendTable(agent, disk)));
        });
      }
      return diskSummary(core, disk);
    });
  }

  /**
   * Changes which agents present a disk (R7): those that lose it drop the table and finish their
   * I/O to it (blocking) before the change is answered; those that gain it get a new table.
   */
  present({ name, agent: agentId, force }: Args<"disk.export">, add: boolean): Promise<DiskSummary> {
    const { core } = this;
    return core.catalogLock.run("catalog", async () => {
      const disk = diskNamed(core, name);
      if (!force && !this.knownAgent(agentId)) {
        const known = core.agents.ids();
        throw new RequestError(
          "NOT_FOUND",
          `Cannot ${add ? "export" : "unexport"} ${name} ${add ? "to" : "from"} agent ${agentId}: no such agent has registered ` +
            `(known: ${known.join(", ") || "none"}); --force names an agent that has not registered yet`,
        );
      }
      // A disk without a list is presented everywhere: the first export makes the list just that
      // agent; an unexport makes it every agent known now but that one.
      const after = add ? [...new Set([...(disk.exports ?? []), agentId])] : (disk.exports ?? core.agents.ids()).filter((id) => id !== agentId);
      await core.familyLocks.run(disk.family, async () => {
        await core.persist([{ t: "present", disk: disk.id, agents: after }]);
        await Promise.all(
          core.agents.all().map(async (agent) => {
            const wanted = presentedTo(disk, agent.id);
            if (wanted && !agent.disks.has(disk.id)) await core.agents.sendTable(agent, disk);
            if (!wanted && agent.disks.has(disk.id)) await core.agents.dropTable(agent, disk);
          }),
        );
      });
      return diskSummary(core, disk);
    });
  }

  diff(args: Args<"disk.diff">): Result<"disk.diff"> {
    const a = diskNamed(this.core, args.a);
    const b = diskNamed(this.core, args.b);
    if (a.size !== b.size || a.segmentShift !== b.segmentShift) {
      throw new RequestError("EINVAL", `Cannot diff ${a.name} and ${b.name}: their sizes or segment sizes differ`);
    }
    const ranges = diff(a, b);
    if (ranges.length > DIFF_RANGES_MAX) throw new RequestError("E2BIG", `the diff has more than ${DIFF_RANGES_MAX} ranges`);
    return { segmentSize: 2 ** a.segmentShift, ranges };
  }

  private checkNewName(name: string): void {
    if (this.core.catalog.diskByName(name)) throw new RequestError("EEXIST", `Cannot create disk "${name}": a disk with that name exists`);
    if (this.core.catalog.disks.size >= DISKS_MAX) throw new RequestError("EINVAL", `Cannot create disk "${name}": the limit of ${DISKS_MAX} disks is reached`);
  }

  /** Refuses (unless forced, which the caller checks) while a host has the disk open on any agent. */
  private async refuseIfOpen(disk: Disk, refuse: (why: string) => Error): Promise<void> {
    const users = await this.core.agents.connectionsTo(disk);
    if (users.length === 0) return;
    const who = users.map(({ agent, count }) => (count === null ? `agent ${agent} did not say` : `agent ${agent} has ${count} connection${count === 1 ? "" : "s"}`));
    throw refuse(`it is in use (${who.join("; ")}); --force goes ahead anyway`);
  }

  /** An agent registered now or before a restart, or named in an export list. */
  private knownAgent(id: string): boolean {
    if (this.core.agents.ids().includes(id) || this.core.catalog.agents.has(id)) return true;
    return [...this.core.catalog.disks.values()].some((disk) => disk.exports?.includes(id));
  }
}
