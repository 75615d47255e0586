// Worker for the concurrency test in wasm-tables.test.ts: resolves lookups continuously while the
// main thread rewrites entries, and reports whether it ever saw anything but whole words.
import { entryContainer, entryOffsetBytes } from "../wasm/entry.ts";
import { EXTENT_KIND_DATA, OP_READ, SharedTables, STATUS_FAULT, STATUS_OK, type TablesHandle } from "../wasm/tables.ts";

declare const self: Worker;

export interface StressJob {
  handle: TablesHandle;
  thread: number;
  slot: number;
  generation: number;
  segmentBytes: number;
  /** Segments flipped between wordsA[i] and wordsB[i]. */
  segments: number[];
  wordsA: number[];
  wordsB: number[];
  /** Leaves being materialised: entry growFirst + k * growStride is set to growWord (or Invalid). */
  growFirst: number;
  growStride: number;
  growCount: number;
  growWord: number;
  iterationsMin: number;
  iterationsMax: number;
  /** Int32Array: [0] workers started, [1] workers done. */
  control: SharedArrayBuffer;
}

export interface StressReport {
  iterations: number;
  seenA: number;
  seenB: number;
  grownSeen: number;
  grownFaults: number;
  errors: string[];
}

function matches(tables: SharedTables, word: number): boolean {
  return tables.extentContainer(0) === entryContainer(word) && tables.extentOffset(0) === entryOffsetBytes(word);
}

function run(job: StressJob): StressReport {
  const tables = SharedTables.attach(job.handle, job.thread);
  const report: StressReport = { iterations: 0, seenA: 0, seenB: 0, grownSeen: 0, grownFaults: 0, errors: [] };
  const control = new Int32Array(job.control);
  Atomics.add(control, 0, 1);
  const fail = (what: string) => {
    if (report.errors.length < 5) report.errors.push(what);
  };
  const enough = () =>
    report.iterations >= job.iterationsMin && report.seenA > 0 && report.seenB > 0 && report.grownSeen > 0 && report.grownFaults > 0;
  while (report.iterations < job.iterationsMax && !enough()) {
    report.iterations++;
    const i = report.iterations % job.segments.length;
    const segment = job.segments[i]!;
    const status = tables.resolve(job.slot, job.generation, segment * job.segmentBytes, job.segmentBytes, OP_READ);
    if (status !== STATUS_OK || tables.extentCount !== 1 || tables.extentKind(0) !== EXTENT_KIND_DATA) {
      fail(`segment ${segment}: status ${status}, ${tables.extentCount} extents`);
    } else if (matches(tables, job.wordsA[i]!)) report.seenA++;
    else if (matches(tables, job.wordsB[i]!)) report.seenB++;
    else fail(`segment ${segment}: container ${tables.extentContainer(0)} offset ${tables.extentOffset(0)}`);

    const grown = job.growFirst + ((report.iterations * 7) % job.growCount) * job.growStride;
    const growStatus = tables.resolve(job.slot, job.generation, grown * job.segmentBytes, job.segmentBytes, OP_READ);
    if (growStatus === STATUS_OK && tables.extentCount === 1 && matches(tables, job.growWord)) report.grownSeen++;
    else if (growStatus === STATUS_FAULT && tables.faultState === 0) report.grownFaults++;
    else fail(`grown segment ${grown}: status ${growStatus}`);
  }
  Atomics.add(control, 1, 1);
  return report;
}

self.onmessage = (event: MessageEvent<StressJob>) => {
  self.postMessage(run(event.data));
};
