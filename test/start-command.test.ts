// The README's start command: `bin/ctl up --data DIR` runs as the very process whose PID the user
// holds (the launcher execs the checkout's own Bun), so SIGTERM or SIGINT to that PID stops the
// controller and the agent, leaves no process behind and frees the TCP ports at once. `npx ctl up`
// (the slower way) stops on a signal to npx's PID too: the project's .npmrc makes npm run its
// command through bash, which execs it, so npm forwards the signal to Bun itself. And bin/ctl
// works through symlinks and from anywhere, or says in one line that `npm install` is missing.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { Child, REPO, reapAll, tempDir } from "./helpers/processes.ts";

const LAUNCHER = join(REPO, "bin/ctl");
const BUN = realpathSync(join(REPO, "node_modules/.bin/bun"));
const EXIT_WAIT_MS = 15_000;
const dirs: { path: string; remove(): void }[] = [];

afterAll(async () => {
  // Whatever a failed check left behind (e.g. an orphaned Bun still holding our pipes) goes first.
  for (const dir of dirs) {
    for (const line of processesMentioning(dir.path)) {
      try {
        process.kill(Number(line.slice(0, line.indexOf(":"))), "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
  }
  await reapAll();
  for (const dir of dirs) dir.remove();
});

function newTempDir(prefix: string): string {
  const dir = tempDir(prefix);
  dirs.push(dir);
  return dir.path;
}

/** The environment of a newcomer's shell: no test secret, so the controller makes DATA/control.secret. */
function plainEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env };
  delete env.CTL_SECRET_FILE;
  delete env.CTL_SECRET;
  delete env.CTL_CONTROL;
  return env;
}

function start(command: string[], cwd: string, label: string): Child {
  return new Child(Bun.spawn(command, { cwd, stdout: "pipe", stderr: "pipe", stdin: "ignore", env: plainEnv() }), label);
}

/** Runs a command to completion in `cwd` with `env` (default: the newcomer's). */
async function runIn(command: string[], cwd: string, env = plainEnv()): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn(command, { cwd, stdout: "pipe", stderr: "pipe", stdin: "ignore", env });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Every process whose command line mentions `text` (ours excepted), as "PID: command line". */
function processesMentioning(text: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.includes(text)) found.push(`${entry}: ${cmdline.replaceAll("\0", " ").trim()}`);
  }
  return found;
}

/** Whether a server could listen on 127.0.0.1:`port` right now (as `ctl up` would, started again). */
function canListen(port: number): boolean {
  try {
    Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }).stop(true);
    return true;
  } catch {
    return false;
  }
}

async function exitWithin(child: Child, ms: number): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${child.label} (pid ${child.proc.pid}) still running ${ms} ms after the signal; output:\n${child.lines.join("\n")}`)), ms);
  });
  try {
    return await Promise.race([child.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts `ctl up` on free TCP ports with data under a fresh temp dir (through `how`), signals the
 * PID the test holds the instant `ready:` appears (ctl/serve.ts installs its handlers before it
 * says ready), and checks that everything stopped.
 */
async function startAndStop(how: "bin/ctl" | "npx ctl", signal: NodeJS.Signals): Promise<void> {
  const dir = newTempDir("start-command");
  const args = ["--control", "127.0.0.1:0", "up", "--data", join(dir, "data"), "--nbd", "127.0.0.1:0", "--lun-size", "1G"];
  // npx finds the project's own bin only inside the checkout; bin/ctl runs from anywhere.
  const child = how === "bin/ctl" ? start([LAUNCHER, ...args], dir, how) : start(["npx", "ctl", ...args], REPO, how);
  const ready = await child.waitForLine(/^ready: /);
  const ports = [...ready.matchAll(/127\.0\.0\.1:(\d+)/g)].map((match) => Number(match[1]));
  expect(ports).toHaveLength(2);
  expect(ports.map(canListen)).toEqual([false, false]);
  if (how === "bin/ctl") {
    // exec: the PID the user holds is Bun's own, not a shell's.
    expect(readlinkSync(`/proc/${child.proc.pid}/exe`)).toBe(BUN);
  } else {
    // npm exec runs Bun through the script shell; bash (.npmrc) execs it, sh would stay between.
    expect(processesMentioning(dir)).toHaveLength(2);
  }

  child.proc.kill(signal);
  const code = await exitWithin(child, EXIT_WAIT_MS);
  expect({ code, signal: child.proc.signalCode }).toEqual({ code: 0, signal: null });
  expect(processesMentioning(dir)).toEqual([]);
  expect(ports.map(canListen)).toEqual([true, true]);
}

describe("the start command stops on a signal to the PID the user holds", () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`bin/ctl up, ${signal}`, () => startAndStop("bin/ctl", signal), 30_000);
  }
  test("npx ctl up, SIGTERM to npx", () => startAndStop("npx ctl", "SIGTERM"), 30_000);
  test("npx ctl up, SIGINT to npx", () => startAndStop("npx ctl", "SIGINT"), 30_000);
});

describe("bin/ctl", () => {
  test("is executable", () => {
    expect(statSync(LAUNCHER).mode & 0o777).toBe(0o755);
  });

  test("works through symlinks, from another working directory and through PATH", async () => {
    const dir = newTempDir("start-command-links");
    mkdirSync(join(dir, "bin/deeper"), { recursive: true });
    mkdirSync(join(dir, "elsewhere"));
    symlinkSync(LAUNCHER, join(dir, "bin/deeper/ctl-absolute"));
    symlinkSync("deeper/ctl-absolute", join(dir, "bin/ctl")); // a relative link to a link
    for (const command of [[join(dir, "bin/ctl"), "--help"], ["../bin/ctl", "--help"], [LAUNCHER, "help", "status"]]) {
      const result = await runIn(command, join(dir, "elsewhere"));
      expect({ command, code: result.code, stderr: result.stderr }).toEqual({ command, code: 0, stderr: "" });
      expect(result.stdout).toStartWith("Usage: ctl");
    }
    const onPath = await runIn(["sh", "-c", "ctl --help"], join(dir, "elsewhere"), { ...plainEnv(), PATH: `${join(dir, "bin")}:${process.env.PATH}` });
    expect(onPath.code).toBe(0);
    expect(onPath.stdout).toStartWith("Usage: ctl");
  });

  test("says in one line to run npm install when the checkout's Bun is missing", async () => {
    const tree = newTempDir("start-command-bare");
    mkdirSync(join(tree, "bin"));
    copyFileSync(LAUNCHER, join(tree, "bin/ctl"));
    chmodSync(join(tree, "bin/ctl"), 0o755);
    const result = await runIn([join(tree, "bin/ctl"), "status"], tree);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr.trimEnd().split("\n")).toEqual([`ctl: ${realpathSync(tree)}/node_modules/.bin/bun is missing: run npm install in ${realpathSync(tree)}`]);
  });
});
