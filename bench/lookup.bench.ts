// Microbenchmark: ns per table lookup (resolve + reading the first extent), WebAssembly tables vs
// the plain TypeScript reference, for a one-segment request and a request spanning 16 segments.
// Run: node_modules/.bin/bun bench/lookup.bench.ts
import { Bench } from "tinybench";
import { mappedWord } from "../wasm/entry.ts";
import { ReferenceTables } from "../wasm/reference-tables.ts";
import { OP_READ, SharedTables, STATUS_OK, type TableStore } from "../wasm/tables.ts";

const SHIFT = 16; // 64 KiB segments
const SEGMENT = 2 ** SHIFT;
const ENTRIES = 2 ** 20; // a 64 GiB disk
const RUN = 4; // entries are mapped in contiguous runs of 4, so 16 segments give 4-5 extents
const LOOKUPS = 1000; // per benchmark iteration: one call is too short to time alone
const TARGET_NS = 50;

/** A fully mapped table: runs of RUN contiguous segments, runs scattered over two containers. */
function fill(tables: TableStore): number {
  const generation = tables.createTable(0, ENTRIES, SHIFT);
  for (let i = 0; i < ENTRIES; i++) {
    const run = Math.floor(i / RUN);
    const scattered = ((run * 7919) % (ENTRIES / RUN)) * RUN + (i % RUN);
    tables.setEntry(0, i, mappedWord(1 + (run % 2), scattered * SEGMENT));
  }
  return generation;
}

/** Request offsets spread over the disk (a fixed pseudo-random sequence). */
function offsets(spanSegments: number): Float64Array {
  const result = new Float64Array(LOOKUPS);
  let x = 12345;
  for (let i = 0; i < LOOKUPS; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    result[i] = (x % (ENTRIES - spanSegments)) * SEGMENT + 4096;
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

const wasm = await SharedTables.create();
const reference = new ReferenceTables();
const wasmGeneration = fill(wasm);
const referenceGeneration = fill(reference);
const cases = [
  { name: "1 segment", at: offsets(1), length: 8192 },
  { name: "16 segments", at: offsets(17), length: 16 * SEGMENT },
];

const bench = new Bench({ time: 1000, warmupTime: 200 });
for (const c of cases) {
  bench.add(`wasm ${c.name}`, wasmLookups(wasm, wasmGeneration, c.at, c.length));
  bench.add(`ts ${c.name}`, tsLookups(reference, referenceGeneration, c.at, c.length));
}
await bench.run();

function nsPerLookup(name: string): number {
  const task = bench.tasks.find((t) => t.name === name);
  const result = task?.result;
  if (!result || !("latency" in result)) throw new Error(`no result for ${name}`);
  return (result.latency.mean * 1e6) / LOOKUPS;
}

const rows = cases.map((c) => {
  const wasmNs = nsPerLookup(`wasm ${c.name}`);
  const tsNs = nsPerLookup(`ts ${c.name}`);
  return { request: c.name, "wasm ns": wasmNs.toFixed(1), "ts ns": tsNs.toFixed(1), "ts / wasm": (tsNs / wasmNs).toFixed(2) };
});
console.table(rows);
const single = cases[0]!.name;
const wasmSingle = nsPerLookup(`wasm ${single}`);
const met = wasmSingle <= TARGET_NS && wasmSingle <= nsPerLookup(`ts ${single}`);
console.log(`target (wasm <= ${TARGET_NS} ns and <= ts for one segment): ${met ? "met" : "NOT met"}`);
