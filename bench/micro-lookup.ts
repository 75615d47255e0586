// Microbenchmark part: ns per table lookup (resolve + reading the first extent), WebAssembly tables
// vs the plain TypeScript reference, for a one-segment request and a request spanning 16 segments.
import { mappedWord } from "../wasm/entry.ts";
import { ReferenceTables } from "../wasm/reference-tables.ts";
import { OP_READ, SharedTables, STATUS_OK, type TableStore } from "../wasm/tables.ts";
import { type MicroSettings, newBench, nsPerOperation, samplesOf } from "./micro-timing.ts";

const SHIFT = 16; // 64 KiB segments
const SEGMENT = 2 ** SHIFT;
const RUN = 4; // entries are mapped in contiguous runs of 4, so 16 segments give 4-5 extents
const LOOKUPS = 1000; // per benchmark iteration: one call is too short to time alone

export interface LookupCase {
  request: string;
  /** Segments the request touches. */
  segments: number;
  wasmNs: number;
  tsNs: number;
  wasmSamples: number;
  tsSamples: number;
}

/** A fully mapped table of `entries`: runs of RUN contiguous segments, runs scattered over two containers. */
function fill(tables: TableStore, entries: number): number {
  const generation = tables.createTable(0, entries, SHIFT);
  for (let i = 0; i < entries; i++) {
    const run = Math.floor(i / RUN);
    const scattered = ((run * 7919) % (entries / RUN)) * RUN + (i % RUN);
    tables.setEntry(0, i, mappedWord(1 + (run % 2), scattered * SEGMENT));
  }
  return generation;
}

/** Request offsets spread over the disk (a fixed pseudo-random sequence). */
function offsets(entries: number, spanSegments: number): Float64Array {
  const result = new Float64Array(LOOKUPS);
  let x = 12345;
  for (let i = 0; i < LOOKUPS; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    result[i] = (x % (entries - spanSegments)) * SEGMENT + 4096;
  }
  return result;
}

/**
 * One benchmark iteration: LOOKUPS resolves, each reading its first extent. The loop is written
 * once per implementation so each call site stays monomorphic (one shared loop would make both
 * implementations pay for a polymorphic call).
 */
function wasmLookups(tables: SharedTables, generation: number, at: Float64Array, length: number): () => void {
  return () => {
    let sum = 0;
    for (let i = 0; i < LOOKUPS; i++) {
      if (tables.resolve(0, generation, at[i]!, length, OP_READ) !== STATUS_OK) throw new Error("lookup failed");
      sum += tables.extentCount + tables.extentOffset(0);
    }
    if (sum < 0) throw new Error("unreachable"); // keeps the reads alive
  };
}

function tsLookups(tables: ReferenceTables, generation: number, at: Float64Array, length: number): () => void {
  return () => {
    let sum = 0;
    for (let i = 0; i < LOOKUPS; i++) {
      if (tables.resolve(0, generation, at[i]!, length, OP_READ) !== STATUS_OK) throw new Error("lookup failed");
      sum += tables.extentCount + tables.extentOffset(0);
    }
    if (sum < 0) throw new Error("unreachable");
  };
}

/** Both implementations on the same fully mapped table of `entries` 64 KiB segments. */
export async function measureLookups(settings: MicroSettings, entries: number): Promise<LookupCase[]> {
  const wasm = await SharedTables.create();
  const reference = new ReferenceTables();
  const wasmGeneration = fill(wasm, entries);
  const referenceGeneration = fill(reference, entries);
  const cases = [
    { request: "1 segment", segments: 1, at: offsets(entries, 1), length: 8192 },
    { request: "16 segments", segments: 16, at: offsets(entries, 17), length: 16 * SEGMENT },
  ];
  const bench = newBench(settings);
  for (const c of cases) {
    bench.add(`wasm ${c.request}`, wasmLookups(wasm, wasmGeneration, c.at, c.length));
    bench.add(`ts ${c.request}`, tsLookups(reference, referenceGeneration, c.at, c.length));
  }
  await bench.run();
  return cases.map(({ request, segments }) => ({
    request,
    segments,
    wasmNs: nsPerOperation(bench, `wasm ${request}`, LOOKUPS),
    tsNs: nsPerOperation(bench, `ts ${request}`, LOOKUPS),
    wasmSamples: samplesOf(bench, `wasm ${request}`),
    tsSamples: samplesOf(bench, `ts ${request}`),
  }));
}
