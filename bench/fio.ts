#!/usr/bin/env bun
// End-to-end benchmark: the same fio jobs (fio's nbd engine) against our NBD server and reference
// servers (nbdkit file, qemu-nbd raw, nbdkit memory, nbdkit null), each started here on the same kind of
// backing file in the same temp directory, over a unix socket and TCP loopback; then a Markdown table of
// medians and ours/reference ratios, and the targets (bench/fio-targets.ts).
//
//   bun bench/fio.ts [--quick | --smoke] [--runtime SEC] [--reps N] [--socket unix|tcp|both]
//                    [--servers ours,nbdkit-file,...] [--results DIR] [--keep] [--verbose]
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { FILL_JOB, type FioJob, JOBS, type Timing, runFio } from "./fio-jobs.ts";
import { fioTargets } from "./fio-targets.ts";
import { inTempDir, log, parseBenchArgs, runScript, settle, UsageError } from "./harness.ts";
import { type BenchConfig, type RunRecord, markdownReport, metricValue, resultsTable } from "./report.ts";
import { finishPart, resultsDir, targetsTable } from "./result-files.ts";
import { type RunningServer, SERVER_IDS, SERVERS, type ServerId, TRANSPORTS, type Transport } from "./servers.ts";

const GIB = 2 ** 30;
const MIB = 2 ** 20;

interface ModeDefaults {
  runtimeSec: number;
  rampSec: number;
  reps: number;
  diskBytes: number;
  servers: ServerId[];
}

const MODES: Record<BenchConfig["mode"], ModeDefaults> = {
  full: { runtimeSec: 5, rampSec: 1, reps: 3, diskBytes: GIB, servers: [...SERVER_IDS] },
  quick: { runtimeSec: 2, rampSec: 0.5, reps: 1, diskBytes: GIB, servers: [...SERVER_IDS] },
  // Only checks that numbers come out: every server and job, but very short runs on a small disk.
  smoke: { runtimeSec: 0.2, rampSec: 0, reps: 1, diskBytes: 64 * MIB, servers: [...SERVER_IDS] },
};

const USAGE = `usage: bun bench/fio.ts [--quick | --smoke] [--runtime SEC] [--reps N] [--socket unix|tcp|both]
                       [--servers ${SERVER_IDS.join(",")}] [--results DIR] [--keep] [--verbose]
  --quick        ${MODES.quick.runtimeSec} s per job, ${MODES.quick.reps} repetition (default: ${MODES.full.runtimeSec} s, ${MODES.full.reps} repetitions)
  --smoke        ${MODES.smoke.runtimeSec} s per job; exits 1 unless every number is there
  --socket       unix, tcp or both (default both)
  --results DIR  where fio-latest.{json,md} (fio-smoke.* with --smoke) go (default bench/results)
  --keep         keep the temp directory (backing files, server data) for inspection
  --verbose      echo every server's output`;


interface Options {
  config: BenchConfig;
  resultsDir: string;
  keep: boolean;
  verbose: boolean;
}

function positiveNumber(text: string | undefined, name: string, fallback: number, integer: boolean): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) throw new UsageError(`${name} must be a positive ${integer ? "whole " : ""}number, not "${text}"`);
  return value;
}

function parseTransports(text: string | undefined): Transport[] {
  if (text === undefined || text === "both") return [...TRANSPORTS];
  if (text === "unix") return ["unix"];
  if (text === "tcp") return ["tcp"];
  throw new UsageError(`--socket must be unix, tcp or both, not "${text}"`);
}

function parseServers(text: string | undefined, fallback: ServerId[]): ServerId[] {
  if (text === undefined) return fallback;
  const names = text.split(",").map((name) => name.trim());
  for (const name of names) if (!(SERVER_IDS as readonly string[]).includes(name)) throw new UsageError(`unknown server "${name}"`);
  return SERVER_IDS.filter((id) => names.includes(id));
}

function parseOptions(argv: string[]): Options {
  const args = parseBenchArgs(argv, ["runtime", "reps", "socket", "servers", "results"]);
  const { mode, values } = args;
  const defaults = MODES[mode];
  const config: BenchConfig = {
    mode,
    runtimeSec: positiveNumber(values.runtime, "--runtime", defaults.runtimeSec, false),
    rampSec: defaults.rampSec,
    reps: positiveNumber(values.reps, "--reps", defaults.reps, true),
    diskBytes: defaults.diskBytes,
    transports: parseTransports(values.socket),
    servers: parseServers(values.servers, defaults.servers),
  };
  return { config, resultsDir: resultsDir(values.results), keep: args.keep, verbose: args.verbose };
}

/** Everything one benchmark run collects. */
class Collected {
  readonly records: RunRecord[] = [];
  readonly fills: RunRecord[] = [];
  readonly servers: { transport: Transport; id: ServerId; uri: string; command: string[] }[] = [];
}

async function startServers(config: BenchConfig, transport: Transport, dir: string, verbose: boolean, collected: Collected): Promise<Map<ServerId, RunningServer>> {
  const running = new Map<ServerId, RunningServer>();
  for (const id of config.servers) {
    const serverDir = join(dir, transport, id);
    mkdirSync(serverDir, { recursive: true });
    try {
      const server = await SERVERS[id].start({ dir: serverDir, transport, diskBytes: config.diskBytes, verbose });
      running.set(id, server);
      collected.servers.push({ transport, id, uri: server.uri, command: server.command });
      log(`${transport} ${id}: serving ${server.uri} (pid ${server.process.pid})`);
    } catch (error) {
      const message = `did not start: ${(error as Error).message}`;
      log(`${transport} ${id}: ${message}`);
      collected.fills.push({ transport, server: id, job: FILL_JOB.id, rep: 0, error: message });
    }
  }
  return running;
}

/** One fio run, recorded as a result or an error (a dead server is not run against again). */
async function measure(server: RunningServer, job: FioJob, timing: Timing, outputPath: string): Promise<Pick<RunRecord, "result" | "error">> {
  if (!server.process.running) return { error: `server had exited (${server.process.exitDescription}) before this run` };
  try {
    return { result: await runFio(server.uri, job, timing, outputPath) };
  } catch (error) {
    let message = (error as Error).message;
    if (!server.process.running) message += `; server exited (${server.process.exitDescription}): ${server.process.tail(5)}`;
    return { error: message };
  }
}

function describe(outcome: Pick<RunRecord, "result" | "error">): string {
  if (!outcome.result) return `FAILED: ${outcome.error}`;
  return `${Math.round(outcome.result.iops)} IOPS, ${(outcome.result.bandwidthBytes / MIB).toFixed(1)} MiB/s`;
}

async function fillAll(running: Map<ServerId, RunningServer>, transport: Transport, dir: string, collected: Collected): Promise<void> {
  for (const [id, server] of running) {
    await settle(dir);
    const outcome = await measure(server, FILL_JOB, { runtimeSec: null, rampSec: 0 }, join(dir, `fill-${transport}-${id}.json`));
    collected.fills.push({ transport, server: id, job: FILL_JOB.id, rep: 0, ...outcome });
    log(`${transport} ${id} fill: ${describe(outcome)}`);
  }
}

/**
 * Repetitions outermost, servers innermost, so slow drift of the machine hits every server alike; the
 * file system is synced before each run.
 */
async function measureAll(config: BenchConfig, running: Map<ServerId, RunningServer>, transport: Transport, dir: string, collected: Collected): Promise<void> {
  const timing: Timing = { runtimeSec: config.runtimeSec, rampSec: config.rampSec };
  for (let rep = 1; rep <= config.reps; rep++) {
    for (const job of JOBS) {
      for (const [id, server] of running) {
        await settle(dir);
        const outcome = await measure(server, job, timing, join(dir, `run-${transport}-${id}.json`));
        collected.records.push({ transport, server: id, job: job.id, rep, ...outcome });
        log(`${transport} #${rep} ${job.label} ${id}: ${describe(outcome)}`);
      }
    }
  }
}

async function benchTransport(options: Options, transport: Transport, dir: string, collected: Collected): Promise<void> {
  const running = await startServers(options.config, transport, dir, options.verbose, collected);
  try {
    await fillAll(running, transport, dir, collected);
    await measureAll(options.config, running, transport, dir, collected);
  } finally {
    await Promise.all([...running.values()].map((server) => server.stop()));
    for (const [id, server] of running) log(`${transport} ${id}: stopped (${server.process.exitDescription})`);
  }
}

/** In smoke mode every job of every server must have produced a positive number. */
function smokeProblems(config: BenchConfig, collected: Collected): string[] {
  const problems: string[] = [];
  for (const transport of config.transports) {
    for (const server of config.servers) {
      for (const job of [...JOBS, FILL_JOB]) {
        const pool = job === FILL_JOB ? collected.fills : collected.records;
        const ok = pool.some((r) => r.transport === transport && r.server === server && r.job === job.id && r.result && metricValue(job, r.result) > 0);
        if (!ok) problems.push(`${transport} ${server} ${job.id}: no result`);
      }
    }
  }
  return problems;
}

async function main(argv: string[]): Promise<number> {
  const options = parseOptions(argv);
  const { config } = options;
  const collected = new Collected();
  const { machine, startedAt } = await inTempDir("tabledisk-fio-", options.keep, async (dir) => {
    log(`bench: ${config.mode}, ${config.runtimeSec} s per job, ${config.reps} repetition(s), servers ${config.servers.join(", ")}, in ${dir}`);
    for (const transport of config.transports) await benchTransport(options, transport, dir, collected);
  });
  const targets = fioTargets(config.transports, collected.records);
  const report = markdownReport({ machine, config, records: collected.records, fills: collected.fills, startedAt });
  const markdown = `${report}\n## Targets\n\n${targetsTable(targets)}\n`;
  for (const transport of config.transports) console.log(`\n${transport}:\n\n${resultsTable(transport, config.servers, collected.records, collected.fills)}`);
  const details = { startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), machine, config, servers: collected.servers, fills: collected.fills, runs: collected.records };
  const failures = [...collected.fills, ...collected.records].filter((record) => record.error).length;
  const missing = config.mode === "smoke" ? smokeProblems(config, collected) : [];
  return finishPart(options.resultsDir, "fio", config.mode, { targets, details, markdown }, { missing, failures });
}

await runScript(USAGE, () => main(process.argv.slice(2)));
