// One simulation run, a pure function of its options: boot, a workload under injected faults,
// then everything heals, settles and is checked; then a power loss of every host and the checks
// again after recovery. The result says whether every invariant held, and carries the hash of the
// trace (equal for equal seeds) and its last lines.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SharedTables } from "../../wasm/tables.ts";
import { Admin } from "./admin.ts";
import { recoveryProblems, stateProblems } from "./checks.ts";
import { DiskRegistry } from "./disks.ts";
import { Hosts } from "./hosts.ts";
import { Injector } from "./injector.ts";
import { SimLogDisk } from "./log-disk.ts";
import { Model } from "./model.ts";
import { SimNetwork } from "./network.ts";
import { DEFAULT_FAULTS, DURATION_MS_DEFAULT, type SimOptions } from "./options.ts";
import { Random } from "./random.ts";
import { Scheduler } from "./scheduler.ts";
import { SimStorage } from "./storage.ts";
import { Trace } from "./trace.ts";
import { World } from "./world.ts";

const SEGMENT_BYTES_MIN = 2 ** 16;
const CONTAINERS = 2;
const STREAMS_PER_HOST = 3;
/** How long each phase may take (simulated) before the run fails for want of progress. */
const BOOT_MS_MAX = 20_000;
const SETTLE_MS_MAX = 120_000;
const REPAIR_ROUNDS_MAX = 5;
/** How long the settled state must hold before it is checked. */
const QUIET_CHECK_MS = 200;
/** How often the controller's state is checked during the workload, when it is quiet. */
const CHECK_EVERY_MS = 100;

export interface SimResult {
  seed: number;
  ok: boolean;
  /** The first violated invariant, or null. */
  failure: string | null;
  traceHash: string;
  traceLines: number;
  /** How often each kind of operation, outcome and fault happened. */
  counts: Record<string, number>;
  events: number;
  simulatedMs: number;
  lastLines: string[];
}

/** What a scenario drives: the world and its hosts and administrator, after the boot. */
export interface SimRun {
  scheduler: Scheduler;
  world: World;
  hosts: Hosts;
  /** Runs events until `done` or the first violation; a deadline passed is a liveness failure. */
  runUntil(done: () => boolean, limitMs: number, what: string): Promise<boolean>;
  /** Runs events until `work` settles (as runUntil). */
  finish(work: Promise<unknown>, limitMs: number, what: string): Promise<boolean>;
}

/** A scripted run instead of the random workload: the steps of one story, checked as any run. */
export type Scenario = (run: SimRun) => Promise<void>;

/** One run of the random workload, or of `scenario` after the same boot. */
export async function runSimulation(options: SimOptions, scenario?: Scenario): Promise<SimResult> {
  const dir = mkdtempSync(join(tmpdir(), "tabledisk-sim-"));
  const scheduler = new Scheduler();
  const trace = new Trace(scheduler, options.echo ?? null, dir);
  let failure: string | null = null;
  try {
    failure = await simulate(options, scheduler, trace, dir, scenario);
  } catch (error) {
    failure = `the simulator threw: ${(error as Error).stack ?? error}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (failure) trace.note(`FAILED: ${failure}`);
  return {
    seed: options.seed,
    ok: failure === null,
    failure,
    traceLines: trace.lineCount,
    counts: Object.fromEntries(trace.counts),
    traceHash: trace.digest(),
    events: scheduler.eventCount,
    simulatedMs: scheduler.now,
    lastLines: trace.lastLines(),
  };
}

async function simulate(options: SimOptions, scheduler: Scheduler, trace: Trace, dir: string, scenario: Scenario | undefined): Promise<string | null> {
  const random = new Random(options.seed);
  const rates = { ...DEFAULT_FAULTS, ...options.faults };
  const storage = new SimStorage(random.fork());
  const containers = Array.from({ length: CONTAINERS }, (_, id) => ({ id, path: `sim/lun${id}`, sizeBytes: random.int(24, 64) * SEGMENT_BYTES_MIN }));
  for (const { id, sizeBytes } of containers) storage.addContainer(id, sizeBytes);
  const world = new World({
    scheduler,
    random: random.fork(),
    trace,
    network: new SimNetwork(scheduler, random.fork(), trace),
    storage,
    logDisk: new SimLogDisk(scheduler, random.fork(), trace, join(dir, "controller.log")),
    model: new Model(),
    disks: new DiskRegistry(),
    containers,
    canary: options.canary,
  });
  world.injector = new Injector(scheduler, random.fork(), trace, world, rates);
  const restoreConsole = captureConsole(trace, (text) => world.violate(`internal error: ${text}`));
  try {
    return await runPhases(options, scheduler, trace, random, world, scenario);
  } finally {
    restoreConsole();
  }
}

/** Boot, the workload under faults (or the scenario), settling and checks, the power loss and
 *  checks again. */
async function runPhases(options: SimOptions, scheduler: Scheduler, trace: Trace, random: Random, world: World, scenario: Scenario | undefined): Promise<string | null> {
  const { model, disks } = world;
  const agentCount = random.int(2, 3);
  for (let i = 0; i < agentCount; i += 1) world.addAgent(`a${i}`, await SharedTables.create());
  const env = { scheduler, life: world.life, random: random.fork(), trace, model, disks };
  const hosts = new Hosts({ ...env, agents: world.agents, sharedWriters: options.sharedWriters ?? false, violation: (message) => world.violate(message) });
  const admin = new Admin({ ...env, hosts: world.agentHosts, random: random.fork(), control: world });

  /** Runs events until `done` or the first violation; a deadline passed is a liveness failure. */
  const runUntil = async (done: () => boolean, limitMs: number, what: string | (() => string)): Promise<boolean> => {
    const reached = await scheduler.run(() => done() || world.violation !== null, scheduler.now + limitMs);
    if (reached && world.violation === null) return true;
    if (world.violation === null) world.violate(`no progress: ${typeof what === "string" ? what : what()} within ${limitMs} ms`);
    return false;
  };
  const finish = async (work: Promise<unknown>, limitMs: number, what: string): Promise<boolean> => {
    let done = false;
    void work.finally(() => (done = true));
    return runUntil(() => done, limitMs, what);
  };
  /** The invariants of a quiet controller: its state is consistent and what its log recovers to. */
  const checkQuiet = (when: string) => {
    const controller = world.controllerQuiet ? world.liveController : null;
    if (!controller) return;
    const problems = [...stateProblems(controller.catalog, controller.pool), ...recoveryProblems(controller.catalog, world.durableRecords())];
    for (const problem of problems) world.violate(`${when}: ${problem}`);
  };
  /** Heals everything, waits for every request to finish and every container to be back (a
   *  report of an agent's I/O error can arrive late and take one out of service again). */
  const settle = async (): Promise<boolean> => {
    world.healAll();
    const inFlight = () => [...hosts.describeInFlight(), ...admin.describeInFlight()].join("; ");
    if (!(await runUntil(() => hosts.idle && admin.idle, SETTLE_MS_MAX, () => `every request finishes after the faults heal (in flight: ${inFlight()})`))) return false;
    for (let round = 0; round < REPAIR_ROUNDS_MAX; round += 1) {
      if (!(await finish(admin.repairContainers(), SETTLE_MS_MAX, "failed containers are repaired"))) return false;
      if (!(await runUntil(() => world.allRegistered && world.controllerQuiet, SETTLE_MS_MAX, "every agent registers and the controller goes quiet"))) return false;
      await scheduler.run(() => world.violation !== null, scheduler.now + QUIET_CHECK_MS);
      if (world.violation === null && world.allRegistered && world.controllerQuiet && !world.containerOutOfService) return true;
    }
    world.violate(`containers are still out of service after ${REPAIR_ROUNDS_MAX} repairs`);
    return false;
  };

  // Boot: the controller, the agents, the first disks.
  world.startController();
  for (const host of world.agentHosts) scheduler.after(random.between(0, 50), null, () => world.startAgent(host));
  if (!(await runUntil(() => world.allRegistered, BOOT_MS_MAX, "the agents register"))) return world.violation;
  if (!(await finish(admin.createInitialDisks(random.int(2, 3)), BOOT_MS_MAX, "the first disks are created"))) return world.violation;

  if (scenario) {
    await scenario({ scheduler, world, hosts, runUntil, finish });
  } else {
    // The workload under faults.
    const durationMs = options.durationMs ?? DURATION_MS_DEFAULT;
    const end = scheduler.now + durationMs;
    hosts.start(STREAMS_PER_HOST);
    admin.start();
    world.injector.plan(durationMs);
    const checker = () => {
      checkQuiet("during the run");
      if (scheduler.now < end) scheduler.after(CHECK_EVERY_MS, world.life, checker);
    };
    checker();
    await scheduler.run(() => world.violation !== null, end);
    hosts.stop();
    admin.stop();
    world.injector.stop();
  }
  if (world.violation) return world.violation;

  // Everything heals: the state must be consistent and every disk read what the model allows.
  if (!(await settle())) return world.violation;
  checkQuiet("after the run");
  if (!(await finish(hosts.readEverything(), SETTLE_MS_MAX, "every disk is read"))) return world.violation;

  // A power loss of every host: flushed writes and acknowledged operations must survive it.
  trace.note("power loss of every host");
  world.crashEverything();
  if (!(await settle())) return world.violation;
  checkQuiet("after the power loss");
  await finish(hosts.readEverything(), SETTLE_MS_MAX, "every disk is read after the power loss");
  return world.violation;
}

/** Errors that are bugs wherever they are thrown (storage EIO and the like are not). */
const INTERNAL_ERRORS = new Set(["AssertionError", "TypeError", "RangeError", "ReferenceError", "TablesError", "WireError"]);

/** Routes console.error (the engine's Peer reports failed requests there) into the trace; an
 *  internal error anywhere goes to `internal`. */
function captureConsole(trace: Trace, internal: (text: string) => void): () => void {
  const original = console.error;
  console.error = (...args: unknown[]) => {
    const text = args.map((arg) => (arg instanceof Error ? `${arg.name}: ${arg.message}` : String(arg))).join(" ");
    trace.note(`console: ${text}`);
    if (args.some((arg) => arg instanceof Error && INTERNAL_ERRORS.has(arg.name))) internal(text);
  };
  return () => {
    console.error = original;
  };
}
