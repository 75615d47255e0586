// A running system for integration tests: `ctl up` on unix sockets in a temp dir.
import { join } from "node:path";
import { Child, ctl, spawnCtl, tempDir } from "./processes.ts";

export interface UpSystem {
  dir: string;
  data: string;
  control: string;
  nbdSocket: string;
  child: Child;
  uri(name: string): string;
  ctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Creates a disk and waits until `ctl up` has announced its URI. */
  createDisk(name: string, size: string, extra?: string[]): Promise<string>;
  /** Stops (with `signal`) and starts again, without the start's extra environment. */
  restart(signal?: NodeJS.Signals): Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export async function startUp(options: { lunSize?: string; dir?: string; env?: Record<string, string>; extraArgs?: string[] } = {}): Promise<UpSystem> {
  const dir = options.dir ?? tempDir("tabledisk").path;
  const data = join(dir, "data");
  const control = `unix:${join(dir, "control.sock")}`;
  const nbdSocket = join(dir, "nbd.sock");
  const args = ["--control", control, "up", "--data", data, "--nbd", `unix:${nbdSocket}`];
  if (options.lunSize) args.push("--lun-size", options.lunSize);
  if (options.extraArgs) args.push(...options.extraArgs);
  const system: UpSystem = {
    dir,
    data,
    control,
    nbdSocket,
    child: spawnCtl(args, "up", options.env),
    uri: (name) => `nbd+unix:///${name}?socket=${nbdSocket}`,
    ctl: (rest) => ctl(["--control", control, ...rest]),
    async createDisk(name, size, extra = []) {
      const seen = system.child.lines.length;
      const result = await system.ctl(["disk", "create", name, "--size", size, ...extra]);
      if (result.code !== 0) throw new Error(`disk create ${name} failed: ${result.stderr}`);
      await system.child.waitForLine(new RegExp(`^nbd\\+unix:///${name}\\?`), undefined, seen);
      return system.uri(name);
    },
    async restart(signal = "SIGTERM") {
      await system.child.kill(signal);
      system.child = spawnCtl(args, "up");
      await system.child.waitForLine(/^ready:/);
    },
    async stop(signal = "SIGTERM") {
      await system.child.kill(signal);
    },
  };
  await system.child.waitForLine(/^ready:/);
  return system;
}
