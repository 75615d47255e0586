// The storage containers of the pool (R14): adding one, the health check that takes a failing one
// out of service (its segments turn E for every agent), and the repair that puts it back.
import type { ControllerCore } from "./controller-core.ts";
import { HEALTH_CHECK_INTERVAL_MS } from "./container-health.ts";
import { lunSummary, segmentsOn } from "./summaries.ts";
import { formatSize } from "./util/size.ts";
import { CONTAINERS_MAX, LUN_FAILURE_LENGTH_MAX, type LunSummary } from "./wire/messages.ts";
import { RequestError } from "./wire/peer.ts";
import { CONTAINER_BYTES_MAX, SEGMENT_SHIFT_MIN } from "../wasm/entry.ts";

export class Containers {
  private checking = false;
  private cancelCheck: (() => void) | null = null;

  constructor(private readonly core: ControllerCore) {}

  /** A health check is running. */
  get busy(): boolean {
    return this.checking;
  }

  /** Checks every container now and then from now on. */
  watch(): void {
    this.cancelCheck = this.core.env.clock.after(HEALTH_CHECK_INTERVAL_MS, () => {
      void this.check();
      this.watch();
    });
  }

  unwatch(): void {
    this.cancelCheck?.();
  }

  /** Adds a container (creating its file when there is none); the caller holds the catalog lock. */
  async add(path: string, size: number): Promise<LunSummary> {
    const { core } = this;
    if (core.catalog.luns.size >= CONTAINERS_MAX) throw new RequestError("EINVAL", `Cannot add ${path}: the limit of ${CONTAINERS_MAX} containers is reached`);
    if ([...core.catalog.luns.values()].some((lun) => lun.path === path)) throw new RequestError("EEXIST", `Cannot add ${path}: it is already in the pool`);
    if (size <= 0 || size % 2 ** SEGMENT_SHIFT_MIN !== 0 || size > CONTAINER_BYTES_MAX) {
      throw new RequestError("EINVAL", `Cannot add ${path}: size ${size} must be a positive multiple of 64 KiB up to ${formatSize(CONTAINER_BYTES_MAX)}`);
    }
    const created = core.env.createContainer(path, size);
    const id = core.catalog.newLunId();
    await core.persist([{ t: "lun", id, path, size, knownZero: created }]);
    core.pool.addLun(core.catalog.luns.get(id)!);
    await Promise.all(core.agents.all().map((agent) => agent.call((peer) => peer.request("add_container", { id, path }))));
    return lunSummary(core, id);
  }

  /** Takes every container that fails its check out of service. */
  async check(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      for (const lun of this.core.catalog.luns.values()) {
        if (lun.failed !== null) continue;
        const problem = this.core.env.containerProbe.problem(lun.id, lun.path);
        if (problem !== null) await this.fail(lun.id, problem);
      }
    } catch (error) {
      this.core.say(`container check failed: ${(error as Error).message}`);
    } finally {
      this.checking = false;
    }
  }

  /** The container's segments turn E for every agent (their tables keep the locations); hosts get
   *  EIO there and only there, and nothing new is allocated on it. */
  async fail(id: number, reason: string): Promise<void> {
    const { core } = this;
    if (!core.catalog.luns.has(id)) throw new RequestError("NOT_FOUND", `no container ${id}`);
    await core.catalogLock.run("catalog", async () => {
      const lun = core.catalog.luns.get(id)!;
      if (lun.failed !== null) return;
      await core.persist([{ t: "lunhealth", lun: id, failed: reason.slice(0, LUN_FAILURE_LENGTH_MAX) }]);
      core.say(`container ${id} (${lun.path}) is out of service: ${reason}`);
      await this.pushSegmentsOn(id);
    });
  }

  /** Puts a failed container back once it passes the check: agents reopen it and get its
   *  segments' locations again. */
  repair(id: number): Promise<LunSummary> {
    const { core } = this;
    return core.catalogLock.run("catalog", async () => {
      const lun = core.catalog.luns.get(id);
      if (!lun) throw new RequestError("NOT_FOUND", `no container ${id}`);
      if (lun.failed === null) return lunSummary(core, id);
      core.env.containerProbe.forget(id);
      const problem = core.env.containerProbe.problem(id, lun.path);
      if (problem !== null) throw new RequestError("EIO", `container ${id} still fails its check: ${problem}`);
      core.pool.reopen(id);
      await Promise.all(core.agents.all().map((agent) => agent.call((peer) => peer.request("add_container", { id, path: lun.path }))));
      await core.persist([{ t: "lunhealth", lun: id }]);
      core.say(`container ${id} (${lun.path}) is back in service`);
      await this.pushSegmentsOn(id);
      return lunSummary(core, id);
    });
  }

  /** Sends every disk's entries on container `id` to its agents, as they now stand. */
  private async pushSegmentsOn(id: number): Promise<void> {
    for (const disk of this.core.catalog.disks.values()) {
      const segments = segmentsOn(disk, id);
      if (segments.length > 0) await this.core.familyLocks.run(disk.family, () => this.core.agents.pushEntries(disk, segments, { blocking: false }));
    }
  }
}
