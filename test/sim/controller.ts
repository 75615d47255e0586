// The simulated controller's environment: the real Controller (engine/controller.ts, every service
// of it) runs on the simulated clock, network, log disk and storage. One incarnation per start; a
// crash ends its Life, so its timers and messages never run again, and halts its tables, so what
// of its code still runs (a promise settled as it died) changes nothing.
import { Controller } from "../../engine/controller.ts";
import type { ControllerEnv } from "../../engine/controller-env.ts";
import type { ContainerIo } from "../../engine/pool.ts";
import type { SnapshotContext } from "../../engine/snapshots.ts";
import type { CrashKind, SimLogDisk } from "./log-disk.ts";
import type { SimNetwork } from "./network.ts";
import type { Random } from "./random.ts";
import { Life, type Scheduler } from "./scheduler.ts";
import { BLOCK_BYTES, CONTROLLER_HOST, HostStorage, type SimStorage } from "./storage.ts";
import type { Trace } from "./trace.ts";

/** What agents and controller share as the control secret in the simulation. */
export const SIM_SECRET = "simulated control secret";
/** How often a fault's answer is held back, and for how long at most. */
const LATE_ANSWER_PROBABILITY = 0.05;
const LATE_ANSWER_MS_MAX = 5;

export interface ContainerSpec {
  id: number;
  path: string;
  sizeBytes: number;
}

export interface SimControllerParts {
  scheduler: Scheduler;
  random: Random;
  trace: Trace;
  network: SimNetwork;
  storage: SimStorage;
  logDisk: SimLogDisk;
  /** The containers the pool starts with (added at the first start). */
  containers: ContainerSpec[];
  /** At a failpoint of the engine: the world may crash the controller right there (it throws). */
  failpoint(name: string): void;
  /** What the pool's container I/O becomes (the canary breaks it); identity by default. */
  containerIo(io: ContainerIo): ContainerIo;
  /** What the table-change context becomes (the canary breaks it); identity by default. */
  context(context: SnapshotContext): SnapshotContext;
  /** A name for a new controller run, different from every earlier one. */
  newRunId(): number;
  /** How much the log grows past its compacted size before it is compacted, live. */
  compactSlackBytes: number;
}

/** One incarnation of the controller. */
export class SimController {
  readonly life = new Life("controller");
  /** Resolves when this incarnation crashes. */
  readonly died: Promise<void>;
  readonly controller: Controller;
  private die!: () => void;

  /** Recovery: the real controller opens the log (its image as the last incarnation left it). */
  constructor(private readonly parts: SimControllerParts) {
    this.died = new Promise((resolve) => (this.die = resolve));
    this.controller = Controller.open(this.env(), {
      secret: SIM_SECRET,
      firstContainers: parts.containers.map(({ path, sizeBytes }) => ({ path, size: sizeBytes })),
      compactSlackBytes: parts.compactSlackBytes,
    });
  }

  crash(kind: CrashKind): void {
    this.life.end();
    this.die();
    // The dead log fails what it was writing; then the controller's tables refuse every change.
    this.parts.logDisk.crash(kind);
    this.controller.halt();
    this.parts.network.controllerDown(kind);
    if (kind === "host") this.parts.storage.crashHost(CONTROLLER_HOST);
  }

  private env(): ControllerEnv {
    const { scheduler, random, trace, network, storage, logDisk } = this.parts;
    const life = this.life;
    const host = new HostStorage(storage, CONTROLLER_HOST, life);
    return {
      clock: { now: () => scheduler.now, after: (ms, run) => scheduler.after(ms, life, run) },
      listen: async (accept) => {
        network.listen(life, accept);
        return { stop: () => undefined };
      },
      logPath: logDisk.path,
      logIo: logDisk.open(life),
      containerIo: () => this.parts.containerIo(poolIo(host, trace)),
      containerProbe: {
        problem: (id) => {
          try {
            host.read(id, 0, BLOCK_BYTES);
            return null;
          } catch (error) {
            return (error as Error).message;
          }
        },
        forget: () => undefined,
      },
      // The simulated containers exist from the start, all zeros.
      createContainer: () => true,
      failpoint: (name) => this.parts.failpoint(name),
      newRunId: () => this.parts.newRunId(),
      say: (line) => {
        trace.note(`controller: ${line}`);
        if (line.includes("fenced until it registers again")) trace.count("agent fenced");
        if (line.includes("is out of service")) trace.count("container out of service");
        if (line.startsWith("log: dropped a torn tail")) trace.count("torn log tail");
      },
      // Agents apply changes by their numbers, not in the order they arrive: now and then an answer
      // leaves after commands sent later.
      beforeAnswer: async (op) => {
        if (op === "fault" && random.chance(LATE_ANSWER_PROBABILITY)) await scheduler.sleep(random.between(0, LATE_ANSWER_MS_MAX), life);
      },
      adjustContext: (context) => this.parts.context(context),
    };
  }
}

/** The controller host's container I/O, as the pool wants it. */
function poolIo(storage: HostStorage, trace: Trace): ContainerIo {
  return {
    zero: (lun, offset, length) => {
      storage.zero(lun, offset, length);
      trace.count("segment zeroed for reuse");
    },
    copy: (fromLun, fromOffset, toLun, toOffset, length) => {
      storage.copy(fromLun, fromOffset, toLun, toOffset, length);
      trace.count("copy-on-write copy");
    },
    sync: (lun) => storage.sync(lun),
    reopen: () => undefined,
    close: () => undefined,
  };
}
