// The simulator by command: many seeds, progress as it goes, every failing seed with the command
// that replays it.
//
//   bun test/sim/soak.ts [--seeds N] [--from S] [--duration MS] [--shared-writers] [--no-faults]
//                        [--reproduce BUG]... [--trace]
//
// --trace prints every line of each run's trace (use it with --seeds 1 to replay one seed);
// --reproduce runs with a known product bug as it is instead of working around it (options.ts).
import { parseArgs } from "node:util";
import { KNOWN_BUGS, NO_FAULTS, type KnownBug } from "./options.ts";
import { runSimulation } from "./sim.ts";

const { values } = parseArgs({
  options: {
    seeds: { type: "string", default: "1000" },
    from: { type: "string", default: "1" },
    duration: { type: "string" },
    "shared-writers": { type: "boolean", default: false },
    "no-faults": { type: "boolean", default: false },
    reproduce: { type: "string", multiple: true, default: [] },
    trace: { type: "boolean", default: false },
  },
});

const count = Number(values.seeds);
const from = Number(values.from);
const durationMs = values.duration === undefined ? undefined : Number(values.duration);
const reproduce = values.reproduce as KnownBug[];
if (
  !Number.isSafeInteger(count) ||
  count < 1 ||
  !Number.isSafeInteger(from) ||
  (durationMs !== undefined && !(durationMs > 0)) ||
  reproduce.some((bug) => !KNOWN_BUGS.includes(bug))
) {
  console.error("usage: bun test/sim/soak.ts [--seeds N] [--from S] [--duration MS] [--shared-writers] [--no-faults] [--reproduce BUG]... [--trace]");
  console.error(`known bugs: ${KNOWN_BUGS.join(", ")}`);
  process.exit(2);
}

const flags = [
  values["shared-writers"] ? " --shared-writers" : "",
  values["no-faults"] ? " --no-faults" : "",
  durationMs ? ` --duration ${durationMs}` : "",
  ...reproduce.map((bug) => ` --reproduce ${bug}`),
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
    reproduce,
    echo: values.trace ? (line) => console.log(line) : undefined,
  });
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
