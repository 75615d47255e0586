// Scripted stories for the simulator: the few steps that lead to a rare case, run on the same
// world and checked by the same model as the random workload (and followed by its final reads and
// power loss). Random seeds reach these cases too seldom to show that a canary breaking them is
// caught; each story here reaches its case every time.
import type { Scenario, SimRun } from "./sim.ts";

/** Bounds on waiting for each step, in simulated milliseconds. */
const STEP_MS_MAX = 20_000;

/**
 * A FUA write that is a segment's first write (its mapping comes from a fault the controller
 * commits lazily) is acknowledged; at once the controller dies, and the agent too, before it can
 * hand the mapping back. The write must read back: a FUA is answered only once its mapping is
 * committed.
 */
const fuaWriteOutlivesBothProcesses: Scenario = async (run) => {
  const { world, hosts } = run;
  const { agent, disk, connection } = await firstConnection(run);
  if (!(await run.finish(hosts.write(connection, disk, 0, 1, false, true), STEP_MS_MAX, "a FUA write to a new segment"))) return;
  world.crashController("process");
  world.crashAgent(agent.host, "process");
  world.startController();
  world.startAgent(agent.host);
  if (!(await run.runUntil(() => world.allRegistered, STEP_MS_MAX, "every agent registers again"))) return;
  const again = agent.connect(disk.name);
  if (!again) return world.violate(`disk ${disk.name} is not exported on ${agent.host} after the restarts`);
  await run.finish(hosts.read(again, disk, 0, 1), STEP_MS_MAX, "the block is read");
};

/**
 * A write that is a segment's first is acknowledged; the controller dies before committing its
 * mapping, and the agent cannot reach the next controller before its lease there has run out, so
 * that controller will not take the mapping back: it is lost. A FLUSH on the connection the write
 * was acknowledged on must then fail (NBD: a FLUSH that succeeds covers every write acknowledged
 * before it).
 */
const flushAfterLostMappingFails: Scenario = async (run) => {
  const { world, hosts } = run;
  const { agent, disk, connection } = await firstConnection(run);
  if (!(await run.finish(hosts.write(connection, disk, 0, 1, false, false), STEP_MS_MAX, "a write to a new segment"))) return;
  world.crashController("process");
  world.partition(agent.host, true);
  world.startController();
  const fenced = () => world.liveController !== null && !world.liveController.agents.ids().includes(agent.host);
  if (!(await run.runUntil(fenced, STEP_MS_MAX, `the new controller fences ${agent.host}`))) return;
  world.partition(agent.host, false);
  if (!(await run.runUntil(() => agent.isRegistered, STEP_MS_MAX, `${agent.host} registers again`))) return;
  if (!(await run.finish(hosts.flush(connection, disk), STEP_MS_MAX, "the FLUSH is answered"))) return;
  const again = agent.connect(disk.name);
  if (!again) return world.violate(`disk ${disk.name} is not exported on ${agent.host} after the restart`);
  await run.finish(hosts.read(again, disk, 0, 1), STEP_MS_MAX, "the block is read");
};

/**
 * The first agent, the first disk made at boot (all of it unmapped yet) presented on that agent
 * alone, and a connection to it. With one agent holding the disk, as with one host per disk, the
 * controller answers a first write before it commits the new mapping.
 */
async function firstConnection({ world, finish }: SimRun) {
  const disk = world.disks.all()[0]!;
  const alone = disk.exportedTo?.size === 1 ? [...disk.exportedTo][0]! : null;
  const agent = world.agents[alone === null ? 0 : world.agentHosts.indexOf(alone)]!;
  if (alone === null) {
    // Without a list the disk is on every agent: the first export makes the list that one.
    await finish(
      world.call((controller) => controller.request("disk.export", { name: disk.name, agent: agent.host })),
      STEP_MS_MAX,
      `disk ${disk.name} is presented on ${agent.host} alone`,
    );
    disk.exportedTo = new Set([agent.host]);
  }
  const connection = agent.connect(disk.name);
  if (!connection) throw new Error(`disk ${disk.name} is not exported on ${agent.host} after the boot`);
  return { agent, disk, connection };
}

export const SCENARIOS = {
  "fua-write-outlives-both-processes": fuaWriteOutlivesBothProcesses,
  "flush-after-lost-mapping-fails": flushAfterLostMappingFails,
} satisfies Record<string, Scenario>;

export type ScenarioName = keyof typeof SCENARIOS;
