#!/usr/bin/env bun
// The whole benchmark suite in one command (`npm run bench`): runs every part (bench/summary.ts PARTS)
// one after the other as a child process with the same mode and results directory, then gathers their
// targets into one summary: DIR/summary-<latest|smoke>.{md,json,svg} and DIR/readme-<latest|smoke>.md
// (the same Markdown with links from the repository root, for the README).
//
//   bun bench/run.ts [--quick | --smoke] [--results DIR] [--parts fio,first-write,...] [--keep] [--verbose]
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type BenchMode, EXIT_FAILED, EXIT_INTERRUPTED, isInterrupted, log, makeTempDir, onInterrupt, parseBenchArgs, runScript, UsageError } from "./harness.ts";
import { machineInfo } from "./machine-info.ts";
import { targetsPlot } from "./plot.ts";
import { ManagedProcess, reapAll, withTimeout } from "./processes.ts";
import { resultsDir } from "./result-files.ts";
import { REPO } from "./servers.ts";
import {
  type CaseValue,
  type DetailTables,
  PARTS,
  type Part,
  type PartId,
  type PartOutcome,
  type PartResults,
  type SuiteSummary,
  fioCases,
  firstWriteCases,
  missingNumbers,
  readTargets,
  readmeLinkDir,
  resultsFileName,
  summaryMarkdown,
} from "./summary.ts";
import type { TargetResult } from "./targets.ts";

/** Bound on one part, by mode: a part that hangs is killed and reported, and the suite goes on. */
const PART_TIMEOUT_MS: Record<BenchMode, number> = { full: 90 * 60_000, quick: 15 * 60_000, smoke: 5 * 60_000 };

const USAGE = `usage: bun bench/run.ts [--quick | --smoke] [--results DIR] [--parts ${PARTS.map((part) => part.id).join(",")}] [--keep] [--verbose]
  (none)         full run: every part with its full repetitions (tens of minutes)
  --quick        every part in its quick mode (under 10 minutes on 2 cores)
  --smoke        every part in its smoke mode: checks that every number comes out, exits 1 otherwise
  --results DIR  where every part and the summary write (default bench/results)
  --parts LIST   only these parts (comma-separated)
  --keep         keep each part's temp directory
  --verbose      echo every server's output`;

interface Options {
  mode: BenchMode;
  dir: string;
  parts: Part[];
  /** Flags every part gets, but --results. */
  flags: string[];
}

function parseParts(text: string | undefined): Part[] {
  if (text === undefined) return [...PARTS];
  const names = text.split(",").map((name) => name.trim());
  for (const name of names) if (!PARTS.some((part) => part.id === name)) throw new UsageError(`unknown part "${name}"`);
  return PARTS.filter((part) => names.includes(part.id));
}

function parseOptions(argv: string[]): Options {
  const args = parseBenchArgs(argv, ["results", "parts"]);
  const flags = [...(args.mode === "full" ? [] : [`--${args.mode}`]), ...(args.keep ? ["--keep"] : []), ...(args.verbose ? ["--verbose"] : [])];
  return { mode: args.mode, dir: resultsDir(args.values.results), parts: parseParts(args.values.parts), flags };
}

/** A part's results file, if the run that just ended (started at `startedMs`) wrote it. */
function readFreshResults(path: string, startedMs: number): PartResults {
  if (!existsSync(path)) throw new Error(`wrote no ${path}`);
  if (statSync(path).mtimeMs < startedMs) throw new Error(`did not rewrite ${path} (it is from an earlier run)`);
  const raw = JSON.parse(readFileSync(path, "utf8")) as PartResults & { targets: unknown };
  return { ...raw, targets: readTargets(raw.targets) };
}

/** Runs one part as `bun SCRIPT FLAGS --results DIR`, its output echoed with its name; never throws. */
async function runPart(part: Part, options: Options): Promise<{ outcome: PartOutcome; results?: PartResults }> {
  const startedMs = Date.now();
  const seconds = () => (Date.now() - startedMs) / 1000;
  const script = join(REPO, part.script);
  const failed = (error: string, exit = "not run"): { outcome: PartOutcome } => ({ outcome: { id: part.id, ok: false, exit, seconds: seconds(), targets: 0, error } });
  if (!existsSync(script)) return failed(`${part.script} does not exist`);
  log(`suite: ${part.id}: ${part.about}`);
  const child = ManagedProcess.start(part.id, [process.execPath, script, ...options.flags, "--results", options.dir], { cwd: REPO, verbose: true });
  let error: string | undefined;
  try {
    await withTimeout(part.id, child.exited, PART_TIMEOUT_MS[options.mode]);
  } catch (timeout) {
    error = (timeout as Error).message;
    await child.stop();
  }
  const exit = child.exitDescription;
  if (!error && exit !== "exit code 0") error = `${exit}: ${child.tail(3).replace(/\n/g, " | ")}`;
  try {
    const results = readFreshResults(join(options.dir, resultsFileName(part.id, options.mode, "json")), startedMs);
    return { outcome: { id: part.id, ok: !error, exit, seconds: seconds(), targets: results.targets.length, ...(error ? { error } : {}) }, results };
  } catch (readError) {
    return failed(error ?? (readError as Error).message, exit);
  }
}

function summaryFiles(dir: string, mode: BenchMode): { json: string; md: string; svg: string; readme: string } {
  const suffix = mode === "smoke" ? "smoke" : "latest";
  return { json: join(dir, `summary-${suffix}.json`), md: join(dir, `summary-${suffix}.md`), svg: join(dir, `summary-${suffix}.svg`), readme: join(dir, `readme-${suffix}.md`) };
}

async function main(argv: string[]): Promise<number> {
  const options = parseOptions(argv);
  onInterrupt(() => undefined);
  mkdirSync(options.dir, { recursive: true });
  const startedAt = new Date();
  const probeDir = makeTempDir("tabledisk-suite-");
  const machine = await machineInfo(probeDir).finally(() => rmSync(probeDir, { recursive: true, force: true }));
  log(`suite: ${options.mode}, parts ${options.parts.map((part) => part.id).join(", ")}, results in ${options.dir}`);
  const outcomes: PartOutcome[] = [];
  const targets: TargetResult[] = [];
  const cases: CaseValue[] = [];
  const details: DetailTables = {};
  const caseReaders: Partial<Record<PartId, (results: PartResults) => CaseValue[]>> = { fio: fioCases, "first-write": firstWriteCases };
  try {
    for (const part of options.parts) {
      // The signal handler is reaping the children and will exit; a part started now would outlive it.
      if (isInterrupted()) return EXIT_INTERRUPTED;
      const { outcome, results } = await runPart(part, options);
      outcomes.push(outcome);
      log(`suite: ${part.id}: ${outcome.ok ? "done" : `FAILED (${outcome.error})`} in ${outcome.seconds.toFixed(0)} s`);
      if (!results) continue;
      targets.push(...results.targets);
      cases.push(...(caseReaders[part.id]?.(results) ?? []));
      if (part.id === "fio") details.fio = results;
      if (part.id === "first-write") details.firstWrite = results;
    }
  } finally {
    await reapAll();
  }
  const finishedAt = new Date();
  const partial = { parts: outcomes, targets, cases };
  const summary: SuiteSummary = {
    mode: options.mode,
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    wallSeconds: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    machine,
    ...partial,
    missing: missingNumbers(partial),
  };
  const files = summaryFiles(options.dir, options.mode);
  const markdown = summaryMarkdown(summary, details, options.dir, options.dir);
  writeFileSync(files.json, `${JSON.stringify(summary, null, 2)}\n`);
  writeFileSync(files.md, markdown);
  writeFileSync(files.readme, summaryMarkdown(summary, details, options.dir, readmeLinkDir(options.dir)));
  writeFileSync(files.svg, targetsPlot(targets, `Targets, ${options.mode} run ${summary.startedAt.slice(0, 10)}: ${targets.filter((t) => t.met).length} of ${targets.length} met`));
  console.log(markdown);
  for (const path of Object.values(files)) log(`suite: wrote ${path}`);
  for (const what of summary.missing) log(`suite: missing ${what}`);
  log(`suite: done in ${summary.wallSeconds.toFixed(0)} s`);
  return outcomes.every((outcome) => outcome.ok) && summary.missing.length === 0 ? 0 : EXIT_FAILED;
}

await runScript(USAGE, () => main(process.argv.slice(2)));
