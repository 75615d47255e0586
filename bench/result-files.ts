// Where a benchmark part writes its results: `DIR/<part>-smoke.{json,md}` for a smoke run, else
// `DIR/<part>-latest.{json,md}`; DIR is `--results DIR` or bench/results. The JSON carries a
// top-level `targets` array (bench/targets.ts) that bench/run.ts gathers.
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { type BenchMode, EXIT_FAILED, log } from "./harness.ts";
import { markdownRow } from "./report.ts";
import { REPO } from "./servers.ts";
import type { TargetResult } from "./targets.ts";

export const DEFAULT_RESULTS_DIR = join(REPO, "bench/results");

/** The results directory given on the command line (relative to the working directory), or the default. */
export function resultsDir(option: string | undefined): string {
  return option === undefined ? DEFAULT_RESULTS_DIR : resolve(option);
}

/** Writes the JSON (`targets` first, then `details`) and the Markdown report; returns both paths. */
export function writeResultFiles(
  dir: string,
  part: string,
  mode: BenchMode,
  results: { targets: TargetResult[]; details: object; markdown: string },
): string[] {
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `${part}-${mode === "smoke" ? "smoke" : "latest"}`);
  writeFileSync(`${base}.json`, `${JSON.stringify({ targets: results.targets, ...results.details }, null, 2)}\n`);
  writeFileSync(`${base}.md`, results.markdown);
  return [`${base}.json`, `${base}.md`];
}

/**
 * The end of a part: writes its results, names every number missing and says how many runs
 * failed; the exit code is 1 unless every number is there and nothing failed.
 */
export function finishPart(
  dir: string,
  part: string,
  mode: BenchMode,
  results: { targets: TargetResult[]; details: object; markdown: string },
  problems: { missing: string[]; failures: number },
): number {
  for (const path of writeResultFiles(dir, part, mode, results)) log(`bench: wrote ${path}`);
  for (const what of problems.missing) log(`bench: no number for ${what}`);
  if (problems.failures > 0) log(`bench: ${problems.failures} run(s) failed; see the Failures section of the report`);
  return problems.failures > 0 || problems.missing.length > 0 ? EXIT_FAILED : 0;
}

/** A Markdown table: a header row, a rule, then one row per line. */
export function markdownTable(header: string[], rows: string[][]): string {
  return [markdownRow(header), markdownRow(header.map(() => "---")), ...rows.map(markdownRow)].join("\n");
}

/** The targets as a Markdown table. */
export function targetsTable(targets: TargetResult[]): string {
  return markdownTable(
    ["target", "measured", "goal", "met", "detail"],
    targets.map((t) => [
      t.label,
      `${formatMeasured(t.measured)} ${t.unit}`,
      `${t.goal.op} ${t.goal.value} ${t.unit}`,
      t.met ? "met" : "**missed**",
      t.detail ?? "",
    ]),
  );
}

/** Three significant digits, without exponent notation for the sizes these reports show. */
export function formatMeasured(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  if (magnitude >= 100) return value.toFixed(0);
  if (magnitude >= 10) return value.toFixed(1);
  return value.toFixed(magnitude >= 1 ? 2 : 3);
}
