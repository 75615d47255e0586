// Real NBD clients: nbdinfo, nbdcopy, qemu-img, and Python scripts over libnbd (the `nbd`
// module of the system's Python, the one nbdsh uses).
import { run } from "./processes.ts";

/** Debian's Python has the libnbd module; a Python earlier on PATH may not. */
export const SYSTEM_PATH = `/usr/bin:/bin:${process.env.PATH ?? ""}`;

export async function runWithSystemPath(command: string[], stdin?: Uint8Array) {
  const proc = Bun.spawn(command, {
    stdout: "pipe",
    stderr: "pipe",
    stdin: stdin ? new Blob([stdin]) : "ignore",
    env: { ...process.env, PATH: SYSTEM_PATH },
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Runs a Python script with `h` connected to `uri` (like nbdsh -c); fails on a non-zero exit. */
export async function nbdPython(uri: string, script: string): Promise<string> {
  const program = `import nbd, sys\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\n${script}\nh.shutdown()\n`;
  const result = await runWithSystemPath(["/usr/bin/python3", "-c", program]);
  if (result.code !== 0) throw new Error(`python/libnbd failed (${result.code}): ${result.stderr}`);
  return result.stdout;
}

export interface MapExtent {
  offset: number;
  length: number;
  type: number;
  description: string;
}

/** `nbdinfo --map --json`: the base:allocation extents of an export. */
export async function nbdMap(uri: string): Promise<MapExtent[]> {
  const result = await run(["nbdinfo", "--map", "--json", uri]);
  if (result.code !== 0) throw new Error(`nbdinfo --map failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}
