// The benchmark suite's smoke run (`bun bench/run.ts --smoke`) as a real child process: it must exit 0
// and its summary must hold a finite number for every target and case the suite expects. Its results
// go to a temp directory, never to bench/results.
import { afterAll, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { PARTS, type SuiteSummary, expectedCaseIds, expectedTargetIds } from "../bench/summary.ts";
import { reapAll, spawn, tempDir } from "./helpers/processes.ts";

/** Bound on the smoke run: when it is over, the run is stopped (it stops its own children). */
const SMOKE_RUN_MS = 240_000;
/** The test's own bound: the run's, plus time to stop it and read its files. */
const TEST_TIMEOUT_MS = SMOKE_RUN_MS + 30_000;
const OUTPUT_LINES_SHOWN = 60;

afterAll(reapAll);

/** JSON writes NaN as null: anything that is not a finite number fails. */
function isFiniteNumber(value: unknown): boolean {
  return typeof value === "number" && Number.isFinite(value);
}

test(
  "bench smoke run: every part runs, every target and case has a number",
  async () => {
    const results = tempDir("bench-smoke");
    try {
      const run = spawn([process.execPath, "bench/run.ts", "--smoke", "--results", results.path], "bench");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const overdue = new Promise<"overdue">((resolve) => {
        timer = setTimeout(() => resolve("overdue"), SMOKE_RUN_MS);
      });
      const outcome = await Promise.race([run.exited, overdue]).finally(() => clearTimeout(timer));
      if (outcome === "overdue") await run.kill("SIGTERM");
      const output = run.lines.slice(-OUTPUT_LINES_SHOWN).join("\n");
      expect(outcome, `smoke run still running after ${SMOKE_RUN_MS} ms:\n${output}`).not.toBe("overdue");
      expect(outcome, output).toBe(0);

      const summary = JSON.parse(readFileSync(join(results.path, "summary-smoke.json"), "utf8")) as SuiteSummary;
      expect(summary.missing).toEqual([]);
      expect(summary.parts.map((part) => part.id)).toEqual(PARTS.map((part) => part.id));
      for (const part of summary.parts) {
        expect(part.ok, `${part.id}: ${part.error}`).toBe(true);
        expect(part.targets, `${part.id} has no targets`).toBeGreaterThan(0);
      }
      const partIds = PARTS.map((part) => part.id);
      const targets = new Map(summary.targets.map((t) => [t.id, t]));
      for (const id of expectedTargetIds(partIds)) expect(targets.has(id), `target ${id}`).toBe(true);
      for (const t of summary.targets) expect(isFiniteNumber(t.measured), `target ${t.id}: ${t.measured}`).toBe(true);
      const cases = new Map(summary.cases.map((c) => [c.id, c]));
      for (const id of expectedCaseIds(partIds)) expect(isFiniteNumber(cases.get(id)?.median), `case ${id}`).toBe(true);
      for (const file of ["summary-smoke.md", "summary-smoke.svg", "readme-smoke.md"]) expect(existsSync(join(results.path, file)), file).toBe(true);
    } finally {
      results.remove();
    }
  },
  TEST_TIMEOUT_MS,
);
