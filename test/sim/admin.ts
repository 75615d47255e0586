// The administrator: one stream of control operations (create, snapshot, group snapshot,
// rollback, delete, container repair) against the controller, each reflected in the model. An
// operation that fails or whose controller crashes may or may not have happened: the model
// follows what the (recovered) catalog says.
import type { Disk, DiskMode } from "../../engine/catalog.ts";
import type { Controller } from "../../engine/controller.ts";
import { DiskInfo, type DiskRegistry } from "./disks.ts";
import type { CopyWindow, Model } from "./model.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES } from "./storage.ts";
import type { Trace } from "./trace.ts";

const DISKS_MAX = 10;
const DISK_SEGMENTS_MIN = 4;
const DISK_SEGMENTS_MAX = 12;
/** The share of new disks presented on their writer's agent alone. */
const ONE_HOST_PROBABILITY = 0.5;
/** How long the administrator waits before trying a failed repair of its own mistake again. */
const RETRY_MS = 100;

export type Outcome = { kind: "ok" } | { kind: "error"; message: string } | { kind: "crashed" } | { kind: "down" };

/** How the administrator reaches the controller. */
export interface ControlPlane {
  /** Runs `work` on the live controller: "down" if there is none, "crashed" if it dies first. */
  call(work: (controller: Controller) => Promise<unknown>): Promise<Outcome>;
  /** The live controller, once there is one. */
  live(): Promise<Controller>;
  /** Containers whose storage works again (a failed one among them may be repaired). */
  healthyContainers(): number[];
}

export interface AdminEnv {
  /** The hosts a disk's writes may be given to. */
  hosts: string[];
  scheduler: Scheduler;
  life: Life;
  random: Random;
  trace: Trace;
  model: Model;
  disks: DiskRegistry;
  control: ControlPlane;
}

type AdminOp = "create" | "snapshot" | "group" | "rollback" | "delete" | "move" | "present";
const OP_WEIGHTS: Record<AdminOp, number> = { create: 10, snapshot: 30, group: 10, rollback: 12, delete: 15, move: 10, present: 16 };

export class Admin {
  private stopped = false;
  /** The operation in progress, described (for a report of what is stuck). */
  private working: string | null = null;

  constructor(private readonly env: AdminEnv) {}

  get idle(): boolean {
    return this.working === null;
  }

  describeInFlight(): string[] {
    return this.working === null ? [] : [this.working];
  }

  stop(): void {
    this.stopped = true;
  }

  /** The disks a run starts with, made before hosts and faults begin. */
  async createInitialDisks(count: number): Promise<void> {
    for (let i = 0; i < count; i += 1) await this.create();
  }

  start(): void {
    void this.loop();
  }

  /** Puts back in service every failed container whose storage works again. */
  async repairContainers(): Promise<void> {
    const controller = await this.env.control.live();
    for (const id of this.env.control.healthyContainers()) {
      if (controller.catalog.luns.get(id)?.failed == null) continue;
      const outcome = await this.env.control.call((live) => live.request("lun.repair", { id }));
      this.env.trace.note(`admin: repair container ${id}: ${describe(outcome)}`);
    }
  }

  private async loop(): Promise<void> {
    const { scheduler, random, life } = this.env;
    while (!this.stopped) {
      await scheduler.sleep(random.between(10, 150), life);
      if (this.stopped) return;
      const op = this.env.disks.all().length >= DISKS_MAX ? "delete" : random.weighted(OP_WEIGHTS);
      this.working = `admin ${op} since ${scheduler.now.toFixed(3)}`;
      try {
        await this.repairContainers();
        await this.perform(op);
      } finally {
        this.working = null;
      }
    }
  }

  private perform(op: AdminOp): Promise<void> {
    switch (op) {
      case "create":
        return this.create();
      case "snapshot":
        return this.snapshot();
      case "group":
        return this.group();
      case "rollback":
        return this.rollback();
      case "delete":
        return this.delete();
      case "move":
        return this.move();
      case "present":
        return this.present();
    }
  }

  private async create(): Promise<void> {
    const { random, disks, model } = this.env;
    const name = disks.newName("d");
    const shift = random.chance(0.7) ? 16 : 17;
    const size = random.int(DISK_SEGMENTS_MIN, DISK_SEGMENTS_MAX) * 2 ** shift;
    const mode: DiskMode = random.chance(0.5) ? "forward" : "reverse";
    const outcome = await this.env.control.call((controller) => controller.request("disk.create", { name, size, segmentSize: 2 ** shift, mode }));
    this.note(`create ${name} (${size / 2 ** shift} segments of ${2 ** (shift - 10)} KiB, ${mode})`, outcome);
    if (!(outcome.kind === "ok" || (await this.exists(outcome, name)))) return;
    const disk = new DiskInfo(model.addDisk(name, size / BLOCK_BYTES), shift, name, true);
    this.register(disk);
    // Often one host uses a disk, as a VM's: the controller then commits its mappings lazily.
    if (disk.writer !== null && random.chance(ONE_HOST_PROBABILITY)) await this.changeExports(disk, disk.writer, true);
  }

  /** Its writes go to another host (the VM moved). */
  private async move(): Promise<void> {
    const { random, disks, scheduler, life } = this.env;
    const candidates = disks.usable().filter((disk) => disk.writable);
    if (candidates.length === 0) return;
    const disk = random.pick(candidates);
    const presenting = this.env.hosts.filter((host) => disk.presentedTo(host));
    if (presenting.length === 0) return;
    const to = random.pick(presenting);
    await disks.move(disk, to, scheduler, life);
    this.env.trace.note(`admin: writes to ${disk.name} move to ${to}`);
  }

  /** Exports a disk to one more agent, or unexports it from one that its writer does not use
   *  (some agent always presents it). Hosts stop using an agent before it may lose the disk and
   *  start once it surely has it. */
  private async present(): Promise<void> {
    const { random, disks } = this.env;
    const candidates = disks.usable();
    if (candidates.length === 0) return;
    const partial = candidates.filter((candidate) => candidate.exportedTo !== null && candidate.exportedTo.size < this.env.hosts.length);
    const disk = random.pick(partial.length > 0 && random.chance(0.5) ? partial : candidates);
    const absent = this.env.hosts.filter((other) => !disk.presentedTo(other));
    const host = absent.length > 0 && random.chance(0.6) ? random.pick(absent) : random.pick(this.env.hosts);
    const add = !disk.presentedTo(host);
    const presenting = this.env.hosts.filter((other) => disk.presentedTo(other));
    if (!add && (host === disk.writer || disk.writer === null || presenting.length <= 1)) return;
    // A disk without a list unexported from one agent stays on the agents registered now: not on
    // one fenced meanwhile.
    const registered = (await this.env.control.live()).agents.ids();
    if (!add && disk.exportedTo === null && this.env.hosts.some((other) => !registered.includes(other))) return;
    if (!add) disk.exportedTo = new Set(presenting.filter((other) => other !== host));
    await this.changeExports(disk, host, add);
  }

  /** Exports `disk` to `host`'s agent (or unexports it from there); then hosts use the agents the
   *  controller lists for it, as far as they used them before. */
  private async changeExports(disk: DiskInfo, host: string, add: boolean): Promise<void> {
    const outcome = await this.env.control.call((controller) => controller.request(add ? "disk.export" : "disk.unexport", { name: disk.name, agent: host }));
    this.note(`${add ? "export" : "unexport"} ${disk.name} ${add ? "to" : "from"} ${host}`, outcome);
    if (outcome.kind === "down") return;
    const listed = (await this.env.control.live()).catalog.diskByName(disk.name)?.exports;
    if (!listed) return;
    const before = this.env.hosts.filter((other) => disk.presentedTo(other) || (add && outcome.kind === "ok" && other === host));
    disk.exportedTo = new Set(before.filter((other) => listed.includes(other)));
    // An agent fenced meanwhile left it on none: export it again, as its operator would.
    while (disk.exportedTo.size === 0) {
      const again = await this.env.control.call((controller) => controller.request("disk.export", { name: disk.name, agent: host, force: true }));
      this.note(`export ${disk.name} to ${host} (it was on no agent)`, again);
      if (again.kind === "ok") disk.exportedTo.add(host);
      else await this.env.scheduler.sleep(RETRY_MS, this.env.life);
    }
  }

  private register(disk: DiskInfo): void {
    const presenting = this.env.hosts.filter((host) => disk.presentedTo(host));
    if (disk.writable && presenting.length > 0) disk.writer = this.env.random.pick(presenting);
    this.env.disks.add(disk);
  }

  private async snapshot(): Promise<void> {
    const { random, disks } = this.env;
    const candidates = disks.usable();
    if (candidates.length === 0) return;
    const source = random.pick(candidates);
    const name = disks.newName("s");
    const frozen = random.chance(0.6);
    const mode: DiskMode = random.chance(0.5) ? "forward" : "reverse";
    const invalidate = random.chance(0.2);
    const window = this.env.model.beginCopy(source.model);
    const outcome = await this.env.control.call((controller) => controller.request("snapshot.create", { source: source.name, name, mode, invalidate }));
    this.note(`snapshot ${source.name} -> ${name} (${mode}${invalidate ? ", invalidate" : ""}${frozen ? "" : ", clone"})`, outcome);
    if (outcome.kind === "ok" || (await this.exists(outcome, name))) this.addCopy(source, window, name, frozen);
  }

  private async group(): Promise<void> {
    const { random, disks } = this.env;
    const candidates = disks.usable();
    const count = Math.min(candidates.length, random.int(2, 3));
    if (count < 2) return;
    const sources: DiskInfo[] = [];
    while (sources.length < count) {
      const pick = random.pick(candidates);
      if (!sources.includes(pick)) sources.push(pick);
    }
    const pairs = sources.map((source) => ({ source, name: disks.newName("s"), window: this.env.model.beginCopy(source.model) }));
    const timeoutMs = random.int(100, 2000);
    const outcome = await this.env.control.call((controller) =>
      controller.request("snapshot.group", { pairs: pairs.map(({ source, name }) => ({ source: source.name, name })), timeoutMs }),
    );
    this.note(`group ${pairs.map(({ source, name }) => `${source.name}->${name}`).join(" ")} (${timeoutMs} ms)`, outcome);
    for (const { source, name, window } of pairs) {
      if (outcome.kind === "ok" || (await this.exists(outcome, name))) this.addCopy(source, window, name, true);
    }
  }

  private async rollback(): Promise<void> {
    const { random, disks, scheduler, life } = this.env;
    const targets = disks.usable("*");
    if (targets.length === 0) return;
    const disk = random.pick(targets);
    // A disk goes back only to a snapshot taken from it, or from one of its snapshots.
    const { catalog } = await this.env.control.live();
    const descends = (other: DiskInfo) => catalog.diskByName(other.name)?.ancestors.includes(catalog.diskByName(disk.name)?.id ?? -1) ?? false;
    const snapshots = disks.usable().filter((other) => other !== disk && other.family === disk.family && descends(other));
    if (snapshots.length === 0) return;
    const snapshot = random.pick(snapshots);
    await disks.pause([disk, snapshot], scheduler, life);
    const window = this.env.model.beginCopy(snapshot.model);
    const outcome = await this.env.control.call((controller) => controller.request("disk.rollback", { name: disk.name, snapshot: snapshot.name, force: true }));
    this.note(`rollback ${disk.name} to ${snapshot.name}`, outcome);
    if (outcome.kind === "ok" || (await this.rolledBack(outcome, disk.name, snapshot.name))) this.env.model.capture(window, disk.model);
    disks.resume([disk, snapshot]);
  }

  private async delete(): Promise<void> {
    const { random, disks, scheduler, life } = this.env;
    const all = disks.usable();
    if (all.length === 0) return;
    const disk = random.pick(all);
    // Keep something for the hosts to write to.
    if (disk.writable && disks.usable("*").length <= 1) return;
    await disks.pause([disk], scheduler, life);
    // Forced: its snapshots keep their data, and hosts may still have it open (they get EIO).
    const outcome = await this.env.control.call((controller) => controller.request("disk.delete", { name: disk.name, force: true }));
    this.note(`delete ${disk.name}`, outcome);
    if (outcome.kind === "ok" || !(await this.exists(outcome, disk.name))) {
      disks.remove(disk.name);
      this.env.model.deleteDisk(disk.name);
    } else {
      disks.resume([disk]);
    }
  }

  private addCopy(source: DiskInfo, window: CopyWindow, name: string, frozen: boolean): void {
    const model = this.env.model.addCopy(window, name);
    const copy = new DiskInfo(model, source.segmentShift, source.family, !frozen);
    // A snapshot is presented where its source is.
    copy.exportedTo = source.exportedTo && new Set(source.exportedTo);
    this.register(copy);
  }

  /** After an operation that did not say "ok": does disk `name` exist now? */
  private async exists(outcome: Outcome, name: string): Promise<boolean> {
    if (outcome.kind === "down") return false;
    return (await this.env.control.live()).catalog.diskByName(name) !== undefined;
  }

  /** After a rollback that did not say "ok": is the disk's table the snapshot's now? */
  private async rolledBack(outcome: Outcome, name: string, snapshot: string): Promise<boolean> {
    if (outcome.kind === "down") return false;
    const { catalog } = await this.env.control.live();
    return sameTable(catalog.diskByName(name), catalog.diskByName(snapshot));
  }

  private note(what: string, outcome: Outcome): void {
    this.env.trace.note(`admin: ${what}: ${describe(outcome)}`);
    this.env.trace.count(`admin ${what.split(" ")[0]} ${outcome.kind}`);
  }
}

function describe(outcome: Outcome): string {
  return outcome.kind === "error" ? `error: ${outcome.message}` : outcome.kind;
}

function sameTable(a: Disk | undefined, b: Disk | undefined): boolean {
  if (!a || !b || a.table.entryCount !== b.table.entryCount) return false;
  for (let i = 0; i < a.table.entryCount; i += 1) if (a.table.get(i) !== b.table.get(i)) return false;
  return true;
}
