// The simulator by command: many seeds, progress as it goes, every failing seed with the command
// that replays it.
//
//   bun test/sim/soak.ts [--seeds N] [--from S] [--duration MS] [--shared-writers] [--no-faults]
//                        [--canary NAME] [--scenario NAME] [--trace]
//
// --trace prints every line of each run's trace (use it with --seeds 1 to replay one seed);
// --canary runs with one of the deliberate breaks of options.ts (to replay how it fails);
// --scenario runs one of the scripted stories of scenarios.ts instead of the random workload.
import { parseArgs } from "node:util";
import { CANARIES, NO_FAULTS, type Canary } from "./options.ts";
import { SCENARIOS, type ScenarioName } from "./scenarios.ts";
import { runSimulation } from "./sim.ts";

const { values } = parseArgs({
  options: {
    seeds: { type: "string", default: "1000" },
    from: { type: "string", default: "1" },
    duration: { type: "string" },
    "shared-writers": { type: "boolean", default: false },
    "no-faults": { type: "boolean", default: false },
    canary: { type: "string" },
    scenario: { type: "string" },
    trace: { type: "boolean", default: false },
  },
});

const count = Number(values.seeds);
const from = Number(values.from);
const durationMs = values.duration === undefined ? undefined : Number(values.duration);
const canary = values.canary as Canary | undefined;
const scenario = values.scenario as ScenarioName | undefined;
if (
  !Number.isSafeInteger(count) ||
  count < 1 ||
  !Number.isSafeInteger(from) ||
  (durationMs !== undefined && !(durationMs > 0)) ||
  (canary !== undefined && !CANARIES.includes(canary)) ||
  (scenario !== undefined && !(scenario in SCENARIOS))
) {
  console.error("usage: bun test/sim/soak.ts [--seeds N] [--from S] [--duration MS] [--shared-writers] [--no-faults] [--canary NAME] [--scenario NAME] [--trace]");
  console.error(`canaries: ${CANARIES.join(", ")}`);
  console.error(`scenarios: ${Object.keys(SCENARIOS).join(", ")}`);
  process.exit(2);
}

const flags = [
  values["shared-writers"] ? " --shared-writers" : "",
  values["no-faults"] ? " --no-faults" : "",
  durationMs ? ` --duration ${durationMs}` : "",
  canary ? ` --canary ${canary}` : "",
  scenario ? ` --scenario ${scenario}` : "",
].join("");
const failed: number[] = [];
const totals = new Map<string, number>();
const started = performance.now();
for (let seed = from; seed < from + count; seed += 1) {
  const result = await runSimulation({
    seed,
    durationMs,
    sharedWriters: values["shared-writers"],
    faults: values["no-faults"] ? NO_FAULTS : undefined,
    canary,
    echo: values.trace ? (line) => console.log(line) : undefined,
  }, scenario && SCENARIOS[scenario]);
  for (const [kind, n] of Object.entries(result.counts)) totals.set(kind, (totals.get(kind) ?? 0) + n);
  if (!result.ok) {
    failed.push(seed);
    console.log(`seed ${seed} FAILED: ${result.failure}`);
    if (!values.trace) console.log(result.lastLines.slice(-40).map((line) => `    ${line}`).join("\n"));
    console.log(`  replay: bun test/sim/soak.ts --from ${seed} --seeds 1 --trace${flags}`);
  }
  const done = seed - from + 1;
  if (done % 50 === 0 || done === count) {
    const seconds = (performance.now() - started) / 1000;
    console.log(`${done}/${count} seeds, ${failed.length} failed, ${seconds.toFixed(1)} s`);
  }
}
console.log(`what the runs did: ${[...totals].sort(([a], [b]) => a.localeCompare(b)).map(([kind, n]) => `${kind} ${n}`).join(", ")}`);
if (failed.length > 0) {
  console.log(`failing seeds: ${failed.join(" ")}`);
  process.exit(1);
}
