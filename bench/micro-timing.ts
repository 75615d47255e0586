// What the microbenchmark parts share: how long tinybench runs each task, and reading a task's mean
// time per operation when one task iteration does many operations (one alone is too short to time).
import { Bench } from "tinybench";

export interface MicroSettings {
  /** Time budget per task, ms. */
  timeMs: number;
  warmupMs: number;
}

export function newBench(settings: MicroSettings): Bench {
  // A task that throws fails the whole run instead of leaving a hole in the table.
  return new Bench({ time: settings.timeMs, warmupTime: settings.warmupMs, throws: true });
}

/** Mean ns per operation of the task `name`, which does `operationsPerIteration` operations per call. */
export function nsPerOperation(bench: Bench, name: string, operationsPerIteration: number): number {
  const result = bench.tasks.find((task) => task.name === name)?.result;
  if (!result || !("latency" in result)) throw new Error(`microbenchmark ${name}: no result`);
  return (result.latency.mean * 1e6) / operationsPerIteration;
}

/** How many iterations tinybench timed for the task `name`. */
export function samplesOf(bench: Bench, name: string): number {
  const result = bench.tasks.find((task) => task.name === name)?.result;
  return result && "latency" in result ? result.latency.samplesCount : 0;
}
