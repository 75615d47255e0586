// Compiles wasm/assembly/tables.ts to wasm/build/tables.wasm with AssemblyScript.
// Plain Node (it is the npm postinstall and runs before `bun test`); works from any cwd.
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const wasmDir = dirname(fileURLToPath(import.meta.url));
const rootDir = dirname(wasmDir);
const source = join(wasmDir, "assembly", "tables.ts");
const outDir = join(wasmDir, "build");
const outFile = join(outDir, "tables.wasm");
const asc = join(rootDir, "node_modules", ".bin", "asc");

function fail(message) {
  console.error(`wasm build failed: ${message}`);
  process.exit(1);
}

/** A numeric constant of layout.ts, the one definition of the memory layout. */
function layoutConstant(name) {
  const text = readFileSync(join(wasmDir, "assembly", "layout.ts"), "utf8");
  const match = new RegExp(`export const ${name} = (\\d+);`).exec(text);
  if (!match) fail(`constant ${name} not found in layout.ts`);
  return match[1];
}

/** Section ids present in a wasm binary. */
function sectionIds(bytes) {
  const ids = [];
  let at = 8; // magic + version
  while (at < bytes.length) {
    const id = bytes[at++];
    let size = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[at++];
      size += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) break;
    }
    ids.push(id);
    at += size;
  }
  return ids;
}

/**
 * The module must import nothing but the memory (workers instantiate it with just that) and
 * carry no data segments: with a shared memory, every instantiation would write them again.
 */
function verify(bytes) {
  const module = new WebAssembly.Module(bytes);
  const imports = WebAssembly.Module.imports(module).map((i) => `${i.module}.${i.name}`);
  if (imports.join() !== "env.memory") fail(`unexpected imports: ${imports.join(", ")}`);
  const DATA_SECTION = 11;
  if (sectionIds(bytes).includes(DATA_SECTION)) fail("the module has a data section");
}

if (!statSync(asc, { throwIfNoEntry: false })) fail(`${asc} not found; run npm install`);
mkdirSync(outDir, { recursive: true });
const args = [
  source,
  "--outFile", outFile,
  "--importMemory", "--noExportMemory", "--sharedMemory",
  "--initialMemory", layoutConstant("MEMORY_INITIAL_PAGES"),
  "--maximumMemory", layoutConstant("MEMORY_MAXIMUM_PAGES"),
  "--memoryBase", layoutConstant("HEAP_BASE"),
  "--enable", "threads",
  "--runtime", "stub",
  // Release build: the module has no asserts of its own (checks return error codes), and this
  // drops the env.abort import that library asserts would need.
  "--noAssert",
  "-O3",
];
const result = spawnSync(asc, args, { cwd: rootDir, stdio: ["ignore", "inherit", "inherit"] });
if (result.error) fail(result.error.message);
if (result.status !== 0) fail(`asc exited with ${result.status}`);
const bytes = readFileSync(outFile);
verify(bytes);
console.log(`wasm: built ${relative(rootDir, outFile)} (${bytes.length} bytes)`);
