/**
 * Runners for real NBD clients in the NBD conformance tests: libnbd through Debian's
 * /usr/bin/python3 (`import nbd`, what nbdsh runs), nbdinfo, nbdcopy, qemu-img, qemu-io, fio.
 * Every run is bounded by a timeout.
 */

export const PYTHON = "/usr/bin/python3";

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Whether an external tool is installed (tests needing it are skipped otherwise). */
export function hasTool(name: string): boolean {
  return Bun.which(name) !== null;
}

/** Whether Debian's python3 has the libnbd bindings. */
export const hasLibnbdPython: boolean = (() => {
  try {
    return Bun.spawnSync([PYTHON, "-c", "import nbd"], { stdout: "ignore", stderr: "ignore" }).exitCode === 0;
  } catch {
    return false;
  }
})();

/** Debian's tools first: nbdsh starts `python3` from PATH, and only /usr/bin/python3 has `nbd`. */
const SYSTEM_FIRST_PATH = `/usr/bin:/bin:${process.env.PATH ?? ""}`;

/** Runs a command with a time limit; never throws for a non-zero exit. */
export async function run(
  cmd: string[],
  options: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<RunResult> {
  const child = Bun.spawn(cmd, {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, PATH: SYSTEM_FIRST_PATH, ...options.env },
    timeout: options.timeoutMs ?? 60_000,
    killSignal: "SIGKILL",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  return { code, stdout, stderr };
}

/** Runs a command and returns stdout; throws with stderr when it fails. */
export async function runOk(
  cmd: string[],
  options: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<string> {
  const r = await run(cmd, options);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/**
 * Runs a Python script with libnbd. The given variables are defined as globals (from JSON), and
 * the script must print one JSON document as its last line of output, which is returned parsed.
 */
export async function libnbd<T = unknown>(script: string, vars: Record<string, unknown>): Promise<T> {
  const prelude = [
    "import json, nbd, os, sys",
    ...Object.entries(vars).map(([k, v]) => `${k} = json.loads(${JSON.stringify(JSON.stringify(v))})`),
  ].join("\n");
  const out = await runOk([PYTHON, "-c", `${prelude}\n${dedent(script)}`], { timeoutMs: 60_000 });
  const lines = out.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as T;
}

function dedent(text: string): string {
  const lines = text.replace(/^\n/, "").split("\n");
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => l.match(/^ */)![0].length));
  return lines.map((l) => l.slice(indent)).join("\n");
}
