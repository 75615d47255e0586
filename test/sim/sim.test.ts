// The deterministic simulator (see sim.ts): a fixed range of seeds under injected faults, the
// determinism of a seed, the canaries that must make it fail, the seeds of product bugs it found,
// and those not fixed yet (skipped, each reproducible from its seed).
import { expect, test } from "bun:test";
import { CANARIES, NO_FAULTS, type SimOptions } from "./options.ts";
import { runSimulation, type SimResult } from "./sim.ts";

const CI_SEEDS = 200;
/** What the CI seeds together must have done at least this often, or the checks prove little. */
const COVERAGE_MIN = 10;
const COVERED = [
  "admin snapshot ok",
  "admin group ok",
  "admin group crashed",
  "admin rollback ok",
  "admin delete ok",
  "admin create ok",
  "admin snapshot crashed",
  "copy-on-write copy",
  "segment zeroed for reuse",
  "host write ok",
  "host write failed",
  "host trim ok",
  "host zero ok",
  "host flush ok",
  "controller process crash",
  "controller host crash",
  "crash at a failpoint",
  "torn log tail",
  "log compaction",
  "agent process crash",
  "agent host crash",
  "agent lease expired",
  "agent fenced",
  "partition",
  "message lost",
  "container failure",
  "container out of service",
];

function replayFlags(options: Omit<SimOptions, "seed">): string {
  return [
    options.sharedWriters ? " --shared-writers" : "",
    options.faults === NO_FAULTS ? " --no-faults" : "",
    options.canary ? ` --canary ${options.canary}` : "",
  ].join("");
}

function describeFailure(result: SimResult, options: Omit<SimOptions, "seed"> = {}): string {
  return [
    `seed ${result.seed} failed: ${result.failure}`,
    ...result.lastLines.slice(-30).map((line) => `    ${line}`),
    `  replay: bun test/sim/soak.ts --from ${result.seed} --seeds 1 --trace${replayFlags(options)}`,
  ].join("\n");
}

test(`simulator: ${CI_SEEDS} seeds of random workloads under injected faults keep every invariant`, async () => {
  const failures: string[] = [];
  const totals = new Map<string, number>();
  for (let seed = 1; seed <= CI_SEEDS; seed += 1) {
    const result = await runSimulation({ seed });
    for (const [kind, count] of Object.entries(result.counts)) totals.set(kind, (totals.get(kind) ?? 0) + count);
    if (!result.ok) failures.push(describeFailure(result));
  }
  if (failures.length > 0) console.error(failures.join("\n\n"));
  expect(failures).toEqual([]);
  const rare = COVERED.filter((kind) => (totals.get(kind) ?? 0) < COVERAGE_MIN).map((kind) => `${kind}: ${totals.get(kind) ?? 0}`);
  expect(rare).toEqual([]);
});

test("simulator: a seed replays exactly (the same trace twice, another seed another trace)", async () => {
  const first = await runSimulation({ seed: 4242 });
  const again = await runSimulation({ seed: 4242 });
  const other = await runSimulation({ seed: 4243 });
  expect(first.ok).toBe(true);
  expect(first.traceLines).toBeGreaterThan(100);
  expect(again.traceHash).toBe(first.traceHash);
  expect(again.events).toBe(first.events);
  expect(other.traceHash).not.toBe(first.traceHash);
});

for (const canary of CANARIES) {
  test(`simulator: the canary "${canary}" (a deliberate break in its wiring) makes some seed fail`, async () => {
    let failed: SimResult | null = null;
    for (let seed = 1; seed <= CI_SEEDS && !failed; seed += 1) {
      const result = await runSimulation({ seed, canary });
      if (!result.ok) failed = result;
    }
    expect(failed?.failure ?? null).not.toBeNull();
  });
}

// Product bugs the simulator found: each failed from its seed. Those not fixed yet are skipped;
// unskip once fixed.

async function expectPasses(seed: number, options: Omit<SimOptions, "seed">): Promise<void> {
  const result = await runSimulation({ seed, ...options });
  expect(result.ok ? null : describeFailure(result, options)).toBeNull();
}

test.skip("bug: a faulting agent still reads through its old entry while another agent writes through the new one (seed 1, every host writing every disk, no faults)", async () => {
  // A write fault pushes the new entry to the disk's other agents, then answers the faulting one:
  // another agent can write and acknowledge meanwhile, and a read at the faulting agent goes
  // through its old entry (Z here) and misses the acknowledged write. (The simulator's workloads
  // give each disk one writer host at a time, which avoids it.)
  await expectPasses(1, { sharedWriters: true, faults: NO_FAULTS });
});

test("fixed: a read past its lookup returns another disk's data after a forward-delta move (seed 163, no faults)", async () => {
  // The faulting disk's move off a shared segment now waits (blocking) for that disk's reads in
  // flight at every agent. (The seed no longer fails without that: the workload has changed since;
  // test/forward-delta-read.test.ts shows the race through a real agent.)
  await expectPasses(163, { faults: NO_FAULTS });
});
