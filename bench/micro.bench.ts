#!/usr/bin/env bun
// Microbenchmarks (tinybench) of the hot paths under the NBD server: the WASM table lookup next to the
// TypeScript reference, a message on the controller–agent wire (encode, decode, validate), and the
// controller's log (append, append + commit, group commit). Writes DIR/micro-{latest,smoke}.{json,md}.
//
//   bun bench/micro.bench.ts [--quick | --smoke] [--results DIR] [--keep]
import { type BenchMode, inTempDir, log, parseBenchArgs, runScript } from "./harness.ts";
import { type MachineInfo, formatMachineInfo } from "./machine-info.ts";
import { GROUP_COMMIT_RECORDS, type LogCase, measureLog } from "./micro-log.ts";
import { type LookupCase, measureLookups } from "./micro-lookup.ts";
import type { MicroSettings } from "./micro-timing.ts";
import { measureWire, type WireCase } from "./micro-wire.ts";
import { finishPart, formatMeasured, markdownTable, resultsDir, targetsTable } from "./result-files.ts";
import { type TargetResult, target } from "./targets.ts";

const LOOKUP_TARGET_NS = 50;
const TARGET_GROUP = "WASM table lookup";

interface Plan extends MicroSettings {
  /** Entries of the lookup table (64 KiB segments). */
  lookupEntries: number;
}

const PLANS: Record<BenchMode, Plan> = {
  full: { timeMs: 1000, warmupMs: 200, lookupEntries: 2 ** 20 },
  quick: { timeMs: 300, warmupMs: 100, lookupEntries: 2 ** 20 },
  // Only checks that every number comes out: minimal time per task, a small table to fill.
  smoke: { timeMs: 10, warmupMs: 5, lookupEntries: 2 ** 14 },
};

const USAGE = `usage: bun bench/micro.bench.ts [--quick | --smoke] [--results DIR] [--keep]
  --quick        ${PLANS.quick.timeMs} ms per task (default ${PLANS.full.timeMs} ms)
  --smoke        as short as possible; exits 1 unless every number is there
  --results DIR  where micro-latest.{json,md} (micro-smoke.* with --smoke) go (default bench/results)
  --keep         keep the temp directory with the log files`;

interface Measured {
  lookups: LookupCase[];
  wire: WireCase[];
  log: LogCase[];
}

function lookupTargets(lookups: LookupCase[]): TargetResult[] {
  const [single, spanning] = lookups;
  if (!single || !spanning) throw new Error("lookup cases missing");
  const detail = (c: LookupCase) => `TypeScript ${formatMeasured(c.tsNs)} ns / WASM ${formatMeasured(c.wasmNs)} ns`;
  return [
    target({
      id: "micro/lookup-1-segment/ts-vs-wasm",
      group: TARGET_GROUP,
      label: "1-segment lookup: TypeScript reference / WASM (WASM no slower)",
      measured: single.tsNs / single.wasmNs,
      unit: "x",
      goal: { op: ">=", value: 1 },
      detail: detail(single),
    }),
    target({
      id: "micro/lookup-16-segments/ts-vs-wasm",
      group: TARGET_GROUP,
      label: "16-segment lookup: TypeScript reference / WASM (WASM faster)",
      measured: spanning.tsNs / spanning.wasmNs,
      unit: "x",
      goal: { op: ">=", value: 1 },
      detail: detail(spanning),
    }),
    target({
      id: "micro/lookup-1-segment/wasm-ns",
      group: TARGET_GROUP,
      label: "1-segment WASM lookup, ns per lookup",
      measured: single.wasmNs,
      unit: "ns",
      goal: { op: "<=", value: LOOKUP_TARGET_NS },
    }),
  ];
}

const ns = (value: number) => formatMeasured(value);
const us = (valueNs: number) => formatMeasured(valueNs / 1e3);

function tables(measured: Measured, targets: TargetResult[]): string[] {
  return [
    "## WASM table lookup",
    "",
    "A fully mapped table of 64 KiB segments (runs of 4 contiguous segments scattered over two containers); " +
      "one lookup = resolve + reading the first extent, 1000 pseudo-random offsets per iteration. " +
      "The 16-segment request is 1 MiB long and starts 4 KiB into a segment.",
    "",
    markdownTable(
      ["request", "WASM, ns", "TypeScript reference, ns", "reference / WASM"],
      measured.lookups.map((c) => [c.request, ns(c.wasmNs), ns(c.tsNs), `${(c.tsNs / c.wasmNs).toFixed(2)}×`]),
    ),
    "",
    "## Wire messages",
    "",
    "engine/wire as Peer uses it: encode = `encodeFrame` (msgpack + length header); decode = `FrameDecoder.push` " +
      "(reassembly + msgpack); validate = the envelope and the message's schema, which every received message goes through.",
    "",
    markdownTable(
      ["message", "frame bytes", "encode, ns", "decode, ns", "validate, ns", "decode + validate, ns"],
      measured.wire.map((c) => [c.message, String(c.frameBytes), ns(c.encodeNs), ns(c.decodeNs), ns(c.validateNs), ns(c.decodeNs + c.validateNs)]),
    ),
    "",
    "## Controller log",
    "",
    `AppendLog with a typical \`map\` record (one entry); durable cases: one write + fdatasync per commit, on the temp directory's file system. ` +
      `Group commit: ${GROUP_COMMIT_RECORDS} appends, then one commit.`,
    "",
    markdownTable(
      ["case", "µs per record", "µs per commit", "fdatasync per commit", "samples"],
      measured.log.map((c) => [
        c.name,
        us(c.nsPerRecord),
        c.nsPerCommit === null ? "—" : us(c.nsPerCommit),
        c.syncsPerCommit === null ? "—" : c.syncsPerCommit.toFixed(2),
        String(c.samples),
      ]),
    ),
    "",
    "## Targets",
    "",
    targetsTable(targets),
  ];
}

function markdownReport(mode: BenchMode, machine: MachineInfo, startedAt: Date, body: string[]): string {
  return [`# Microbenchmarks (${mode})`, "", `Run ${startedAt.toISOString()}.`, "", ...formatMachineInfo(machine), "", ...body, ""].join("\n");
}

/** Every measured number is a positive finite value. */
function missingNumbers(measured: Measured): string[] {
  const numbers: [string, number][] = [
    ...measured.lookups.flatMap((c): [string, number][] => [[`lookup wasm ${c.request}`, c.wasmNs], [`lookup ts ${c.request}`, c.tsNs]]),
    ...measured.wire.flatMap((c): [string, number][] => [[`encode ${c.message}`, c.encodeNs], [`decode ${c.message}`, c.decodeNs], [`validate ${c.message}`, c.validateNs]]),
    ...measured.log.map((c): [string, number] => [`log ${c.name}`, c.nsPerRecord]),
  ];
  return numbers.filter(([, value]) => !(Number.isFinite(value) && value > 0)).map(([name]) => name);
}

async function main(argv: string[]): Promise<number> {
  const args = parseBenchArgs(argv, ["results"]);
  const plan = PLANS[args.mode];
  const { result: measured, machine, startedAt } = await inTempDir("tabledisk-micro-", args.keep, async (dir): Promise<Measured> => {
    log(`bench: micro, ${args.mode}: lookups`);
    const lookups = await measureLookups(plan, plan.lookupEntries);
    log("bench: wire messages");
    const wire = await measureWire(plan);
    log(`bench: log, in ${dir}`);
    return { lookups, wire, log: await measureLog(plan, dir) };
  });
  const targets = lookupTargets(measured.lookups);
  const body = tables(measured, targets);
  console.log(body.join("\n"));
  const details = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), mode: args.mode, machine, plan, ...measured };
  const markdown = markdownReport(args.mode, machine, startedAt, body);
  return finishPart(resultsDir(args.values.results), "micro", args.mode, { targets, details, markdown }, { missing: missingNumbers(measured), failures: 0 });
}

await runScript(USAGE, () => main(process.argv.slice(2)));
